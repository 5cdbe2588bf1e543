"""Shared check for modules that decode: token by token and prefill + continue equal one call."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


def assert_streams_like_forward(module, x, initial, split: int, tol: float = 1e-4):
  """``module(x, state) -> (y, state)``; ``initial`` is its empty state. Returns the full output."""
  call = nnx.jit(lambda m, x, s: m(x, s))
  full, _ = call(module, x, None)
  state, outs = initial, []
  for t in range(x.shape[1]):
    y, state = call(module, x[:, t : t + 1], state)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=tol, atol=tol)
  y1, state = call(module, x[:, :split], None)
  y2, _ = call(module, x[:, split:], state)
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=tol, atol=tol)
  return full
