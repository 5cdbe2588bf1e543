"""``miras_lm``: the Llama macro-architecture with the MIRAS block in place of attention (MIRAS §5.4).

    h = x + NeuralMemory(RMSNorm(x));  x' = h + SwiGLU(RMSNorm(h))      (per layer)
    logits = RMSNorm(x_L) W_out                                         (tied to the embedding: no)

Decoding carries one ``NeuralMemoryState`` per layer; a sequence fed token by token (or prefilled,
then continued) gives the logits of the full forward pass.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from miras_jax.nn.layers import Linear, RMSNorm, SwiGLU, param
from miras_jax.nn.memory import NeuralMemory


@dataclasses.dataclass(frozen=True)
class MirasLMConfig:
  vocab: int = 256  # vocabulary size
  dim: int = 64  # model dim E
  layers: int = 2  # number of blocks
  heads: int = 2  # memory heads H
  head_dim: int = 32  # memory head dim D
  mlp_hidden: int = 172  # SwiGLU hidden width F
  preset: str = "titans_lmm"  # memory rule (miras_jax.presets)
  preset_options: tuple = ()  # (name, value) pairs for presets.get
  chunk_size: int = 64  # chunk size of the memory's training form
  gate_rank: int = 32  # rank of the low-rank gate projections


class MirasLM(nnx.Module):
  """Language model: embedding → ``layers`` × (memory block, SwiGLU) → norm → logits."""

  def __init__(self, config: MirasLMConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embed = param(rngs, nnx.initializers.normal(1.0), (c.vocab, c.dim), ("vocab", "embed"))
    self.blocks = nnx.List(
      [
        nnx.Dict(
          norm1=RMSNorm(c.dim, rngs=rngs),
          memory=NeuralMemory(
            c.dim,
            c.heads,
            c.head_dim,
            preset=c.preset,
            preset_options=dict(c.preset_options),
            chunk_size=c.chunk_size,
            gate_rank=c.gate_rank,
            rngs=rngs,
          ),  # fmt: skip
          norm2=RMSNorm(c.dim, rngs=rngs),
          mlp=SwiGLU(c.dim, c.mlp_hidden, rngs=rngs),
        )
        for _ in range(c.layers)
      ]
    )
    self.norm = RMSNorm(c.dim, rngs=rngs)
    self.head = Linear(c.dim, c.vocab, ("embed", "vocab"), rngs=rngs)

  def init_cache(self, batch: int):
    return [block["memory"].init_state(batch) for block in self.blocks]

  def __call__(self, tokens, cache=None):
    """``tokens: [B, T]`` int → ``(logits [B, T, vocab], cache)``."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array [B, T]; got {tokens.dtype} {tokens.shape}")
    x = self.embed[...][tokens]  # [B, T, E]
    cache = cache if cache is not None else [None] * len(self.blocks)
    new_cache = []
    for block, state in zip(self.blocks, cache, strict=True):
      y, state = block["memory"](block["norm1"](x), state)
      x = x + y
      x = x + block["mlp"](block["norm2"](x))
      new_cache.append(state)
    return self.head(self.norm(x)), new_cache

  def decode(self, tokens, cache):
    """Continue from ``cache`` with ``tokens: [B, T]`` (T = 1 for step-by-step generation)."""
    return self(tokens, cache)
