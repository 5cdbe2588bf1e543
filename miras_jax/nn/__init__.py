"""Flax NNX modules built on the functional core: layers and the NeuralMemory block."""

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
from miras_jax.nn.memory import NeuralMemory, NeuralMemoryState

__all__ = [
  "Attention",
  "KVCache",
  "Linear",
  "NeuralMemory",
  "NeuralMemoryState",
  "LowRankGate",
  "RMSNorm",
  "ShortConv",
  "SwiGLU",
  "l2_normalize",
  "param",
  "rope",
]
