"""miras_jax: neural test-time memory (Titans, MIRAS, Nested Learning) in JAX.

Example::

  import miras_jax as mj
  rule = mj.presets.get("gated_delta_net")
  state = rule.init_state(w0)                                   # w0: [d_v, d_k]
  ys, state = mj.recurrent(rule, state, q, k, v, gates)         # q, k: [T, d_k]; v: [T, d_v]
  ys, state = mj.chunked(rule, state, q, k, v, gates, chunk_size=64)   # the parallel form
"""

from miras_jax import core
from miras_jax.core import *  # noqa: F403  (the core's public names: Gates, presets, recurrent, …)

__version__ = "0.1.0"

__all__ = ["core", *core.__all__]
