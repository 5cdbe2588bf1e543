"""``hope`` and ``hope_attention`` (Nested Learning Eq 94–97, §8.3): a sequence mixer (self-modifying
Titans, or softmax attention) then the Continuum Memory System, per block.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

from flax import nnx

from miras_jax.core.selfmod import MEMORIES as SELFMOD_MEMORIES
from miras_jax.core.selfmod import SelfModTitans
from miras_jax.models.base import LM, LMConfig, check_max_lr, paper_sizes
from miras_jax.models.blocks import decoding_attention, mlp_apply, mlp_block, mlp_init
from miras_jax.models.registry import register
from miras_jax.nn.layers import Attention, RMSNorm
from miras_jax.nn.nested import SelfModifyingTitans


@dataclasses.dataclass(frozen=True)
class HopeConfig(LMConfig):
  """``hope`` (Nested Learning Eq 94–97): self-modifying Titans, then the CMS, per block."""

  cms: bool = True  # the CMS in place of the SwiGLU (False: Table 6 "w/o CMS")

  chunk_size: int = 8  # C of M_k, M_v, M_eta, M_alpha (their reads use the last chunk's state)
  memory_chunk_size: int = 8  # C of M_memory
  memory_expansion: int = 2  # hidden width of each memory = memory_expansion · head_dim
  max_lr: float = 0.1  # η = max_lr · σ(·)
  dgd: bool = True  # DGD's rank-1 decay in the inner update (False: GD; Table 6 "w/o DGD")
  retention: bool = True  # the α (weight decay) gate (False: α = 1; "w/o weight decay")
  momentum: bool = True  # inner momentum over the DGD steps ("w/o momentum")
  adaptive: tuple = SELFMOD_MEMORIES  # memories learning in context ("w/o inner-proj k/v")
  conv_kernel: int = 4  # taps of the short causal convolution on x

  # Paper sizes: CMS level widths fitted to the nominal count; level chunks 16/128/1024 tokens
  # (the paper gives none for its LM runs; [KM] uses periods 1/4/32/128) and the self-modifying
  # memories' chunks 8 (k, v, η, α) and 64 (memory), [KM]'s choice (§8.2 gives none).
  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1280, 640, 1152, 1472),
    cms_chunk_sizes=(16, 128, 1024),
    cms_lrs=(1e-3, 1e-3, 1e-3),
    memory_chunk_size=64,
  )

  def _check(self):
    for name in ("chunk_size", "memory_chunk_size", "memory_expansion", "conv_kernel"):
      if getattr(self, name) < 1:
        raise ValueError(f"HopeConfig.{name} must be >= 1; got {getattr(self, name)}")
    check_max_lr(self, allow_default=False)
    unknown = set(self.adaptive) - set(SELFMOD_MEMORIES)
    if unknown:
      raise ValueError(f"adaptive: unknown memories {sorted(unknown)}; known {SELFMOD_MEMORIES}")


@dataclasses.dataclass(frozen=True)
class HopeAttentionConfig(LMConfig):
  """``hope_attention`` (Nested Learning §8.3): softmax attention, then the CMS, per block."""

  cms: bool = True  # the CMS in place of the SwiGLU

  window: int | None = None  # sliding window (None: full causal attention)
  max_len: int = 512  # decode cache length for full attention (the longest sequence decoded)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1280, 640, 1216, 1600),
    cms_chunk_sizes=(16, 128, 1024),
    cms_lrs=(1e-3, 1e-3, 1e-3),
    max_len=4096,
  )

  def _check(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"HopeAttentionConfig.window must be >= 1 or None; got {self.window}")
    if self.max_len < 1:
      raise ValueError(f"HopeAttentionConfig.max_len must be >= 1; got {self.max_len}")


class NestedCache(NamedTuple):
  mixer: Any  # the sequence mixer's state (self-modifying Titans state or attention KVCache)
  cms: Any  # the CMS state (None when the block has a SwiGLU)


class NestedBlock(nnx.Module):
  """``x += mixer(RMSNorm x)``; ``x += CMS(RMSNorm x)``: Hope (mixer = self-modifying Titans) and
  Hope-Attention (mixer = softmax attention). Pre-norm residual placement, as in the other models
  (the paper's Fig 5 is not available as text; notes §9.9)."""

  def __init__(self, c, mixer, *, rngs):
    self.mixer = mixer
    self.norm_mixer = RMSNorm(c.dim, rngs=rngs)
    self.norm_mlp = RMSNorm(c.dim, rngs=rngs)
    self.mlp = mlp_block(c, rngs)

  def init_cache(self, batch: int) -> NestedCache:
    if isinstance(self.mixer, Attention):
      mixer = self.mixer.init_cache(batch)
    else:
      mixer = self.mixer.init_state(batch)
    return NestedCache(mixer, mlp_init(self.mlp, batch))

  def __call__(self, x, cache: NestedCache | None = None):
    mixer_state, cms_state = cache if cache is not None else (None, None)
    y, mixer_state = self.mixer(self.norm_mixer(x), mixer_state)
    x = x + y
    y, cms_state = mlp_apply(self.mlp, self.norm_mlp(x), cms_state)
    return x + y, NestedCache(mixer_state, cms_state)


@register("hope")
class Hope(LM):
  """Hope (Nested Learning [ARX] Eq 94–97): per layer, self-modifying Titans (every projection but
  q an in-context memory trained by DGD) then the Continuum Memory System in place of the MLP."""

  config_class = HopeConfig

  def _block(self, c, layer, rngs):
    rule = SelfModTitans(
      chunk_size=c.chunk_size,
      memory_chunk_size=c.memory_chunk_size,
      max_lr=c.max_lr,
      dgd=c.dgd,
      retention=c.retention,
      momentum=c.momentum,
      adaptive=tuple(c.adaptive),
    )
    mixer = SelfModifyingTitans(
      c.dim,
      c.heads,
      c.head_dim,
      rule=rule,
      expansion=c.memory_expansion,
      conv_kernel=c.conv_kernel,
      rngs=rngs,
    )
    return NestedBlock(c, mixer, rngs=rngs)


@register("hope_attention")
class HopeAttention(LM):
  """Hope-Attention (Nested Learning §8.3): per layer, softmax attention (RoPE; full or windowed,
  decoding as ``Transformer``) then the Continuum Memory System in place of the MLP."""

  config_class = HopeAttentionConfig

  def _block(self, c, layer, rngs):
    return NestedBlock(c, decoding_attention(c, rngs), rngs=rngs)
