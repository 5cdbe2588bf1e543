"""``titans_mag``: Titans memory as gating (Titans Eq 26–28): the gated block and the model."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
from flax import nnx

from miras_jax.models.base import HYBRID_LAYERS, LM, paper_sizes
from miras_jax.models.blocks import (
  Block,
  BlockCache,
  mlp_apply,
  mlp_block,
  mlp_init,
  neural_memory,
  swa,
)
from miras_jax.models.hybrid_lm import HybridLMConfig
from miras_jax.models.registry import register
from miras_jax.nn.layers import RMSNorm


@dataclasses.dataclass(frozen=True)
class TitansMAGConfig(HybridLMConfig):
  """``titans_mag`` (Titans Eq 26–28): sliding-window attention with persistent tokens and the
  memory in parallel, combined by a gate, then the MLP."""

  window: int = 16  # sliding window w of the attention
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1920, 2304, 4032, 5376), HYBRID_LAYERS, window=2048, persistent=32, attention_chunk=512
  )


class GatedBlock(nnx.Module):
  """Titans MAG (Eq 26–28): ``o = RMSNorm(y) ⊙ σ(RMSNorm(m))`` with ``y`` the sliding-window
  attention with persistent tokens and ``m`` the memory branch, both on ``RMSNorm(x)``;
  ``x += o``, then ``x += SwiGLU(RMSNorm x)``.

  Where the paper is silent: ⊗ is the normalised sigmoid gate of the paper's §4.2 description
  (learned RMSNorm scales on both branches); the persistent tokens are the attention's always
  visible prefix (SW-Attn*), and the memory starts from its learned initial state rather than
  reading the persistent tokens (a data-independent prefix through the memory only changes that
  initial state).
  """

  def __init__(self, c, *, rngs):
    self.norm = RMSNorm(c.dim, rngs=rngs)
    self.memory = neural_memory(c, rngs)
    self.attention = swa(c, rngs, c.persistent)
    self.norm_y = RMSNorm(c.dim, rngs=rngs)
    self.norm_m = RMSNorm(c.dim, rngs=rngs)
    self.norm_mlp = RMSNorm(c.dim, rngs=rngs)
    self.mlp = mlp_block(c, rngs)

  def init_cache(self, batch: int) -> BlockCache:
    return BlockCache(
      self.memory.init_state(batch), self.attention.init_cache(batch), mlp_init(self.mlp, batch)
    )

  def __call__(self, x, cache: BlockCache | None = None):
    memory_state, kv, mlp_state = cache if cache is not None else (None, None, None)
    z = self.norm(x)
    y, kv = self.attention(z, kv)
    m, memory_state = self.memory(z, memory_state)
    x = x + self.norm_y(y) * jax.nn.sigmoid(self.norm_m(m))
    y, mlp_state = mlp_apply(self.mlp, self.norm_mlp(x), mlp_state)
    return x + y, BlockCache(memory_state, kv, mlp_state)


@register("titans_mag")
class TitansMAG(LM):
  """Titans MAG (Eq 26–28): attention and memory in parallel, gated (``GatedBlock``); layers
  outside ``memory_layers`` are sliding-window attention + MLP."""

  config_class = TitansMAGConfig

  def _block(self, c, layer, rngs):
    if c.has_memory(layer):
      return GatedBlock(c, rngs=rngs)
    return Block(c, None, swa(c, rngs, c.persistent), rngs=rngs)
