"""Flax NNX modules built on the functional core (layers here; the memory block and models follow)."""

from miras_jax.nn.layers import (
  Attention,
  KVCache,
  Linear,
  LowRankGate,
  RMSNorm,
  ShortConv,
  SwiGLU,
  l2_normalize,
  param,
  rope,
)

__all__ = [
  "Attention",
  "KVCache",
  "Linear",
  "LowRankGate",
  "RMSNorm",
  "ShortConv",
  "SwiGLU",
  "l2_normalize",
  "param",
  "rope",
]
