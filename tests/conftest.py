"""Test set-up (runs before jax is imported):

- 8 fake CPU devices for the mesh tests;
- a persistent compilation cache in ``.jax_cache/`` (git-ignored; shared by the xdist workers and
  the launcher subprocesses the training tests start, which compile the same programs);
- XLA's optimisation passes off (``jax_disable_most_optimizations``) and its CPU fusion emitters
  off (``--xla_cpu_use_fusion_emitters=false``: the older elemental emitter compiles the core's
  many small fusions faster; measured on a cold cache, tests/core/test_edge_inputs.py and
  test_recurrent.py compile in 108 s instead of 193 s): compiling dominates the suite's time on 2
  cores (58 % of it) and the tests check numerics against tolerances, not speed. Set
  ``MIRAS_TEST_OPTIMIZED=1`` to run the suite on fully optimised programs (``make test-slow`` does).
"""

import os
from pathlib import Path

_XLA_FLAGS = "--xla_force_host_platform_device_count=8"
if os.environ.get("MIRAS_TEST_OPTIMIZED") != "1":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  _XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", _XLA_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
