"""Test set-up (runs before jax is imported):

- 8 fake CPU devices for the mesh tests;
- XLA's optimisation passes off (``jax_disable_most_optimizations``): compiling dominates the
  suite's time on 2 cores and the tests check numerics against tolerances, not speed. Set
  ``MIRAS_TEST_OPTIMIZED=1`` to run the suite on fully optimised programs (``make test-slow`` does).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ.get("MIRAS_TEST_OPTIMIZED") != "1":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
