"""Test set-up (runs before jax is imported):

- 8 fake CPU devices for the mesh tests;
- a persistent compilation cache in ``.jax_cache/`` (git-ignored; shared by the xdist workers and
  the launcher subprocesses the training tests start, which compile the same programs);
- XLA's optimisation passes off (``jax_disable_most_optimizations``): compiling dominates the
  suite's time on 2 cores and the tests check numerics against tolerances, not speed. Set
  ``MIRAS_TEST_OPTIMIZED=1`` to run the suite on fully optimised programs (``make test-slow`` does).
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ.get("MIRAS_TEST_OPTIMIZED") != "1":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
