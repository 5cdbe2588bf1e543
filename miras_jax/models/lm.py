"""The language models: embedding → L blocks → RMSNorm → output head (untied), one class each.

    miras_lm     Llama macro-architecture with the MIRAS block in place of attention (MIRAS §5.4)
    hybrid_lm    Samba-style memory block → sliding-window attention → MLP (MIRAS Fig 2, "-H")
    titans_mac   memory as context (Titans Eq 21–25)
    titans_mag   memory as gating (Titans Eq 26–28)
    titans_mal   memory as a layer (Titans Eq 29–31)
    transformer  Transformer++ (Llama) baseline
    hope         self-modifying Titans + Continuum Memory System (Nested Learning Eq 94–97)
    hope_attention  softmax attention + Continuum Memory System (Nested Learning §8.3)

Every model: ``model(tokens [B, T], cache=None) -> (logits [B, T, V], cache)``; ``init_cache(batch)``
gives the empty cache (memory states, attention ring buffers, MAC's segment buffer) and
``decode(tokens, cache)`` continues it; a sequence fed token by token, or prefilled in one call
and continued, gives the logits of the full forward pass.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from miras_jax.core.selfmod import SelfModTitans
from miras_jax.models import config as cfg
from miras_jax.models.blocks import Block, GatedBlock, MACBlock, NestedBlock, neural_memory
from miras_jax.nn.layers import Attention, Linear, RMSNorm, param
from miras_jax.nn.nested import SelfModifyingTitans


class LM(nnx.Module):
  """Shared trunk; subclasses say which block each layer is (``_block``)."""

  config_class = cfg.LMConfig

  def __init__(self, config, *, rngs: nnx.Rngs):
    if not isinstance(config, self.config_class):
      raise ValueError(
        f"{type(self).__name__} needs a {self.config_class.__name__}; got {type(config).__name__}"
      )
    c = self.config = config
    self.embed = param(rngs, nnx.initializers.normal(1.0), (c.vocab, c.dim), ("vocab", "embed"))
    self.blocks = nnx.List([self._block(c, i, rngs) for i in range(c.layers)])
    self.norm = RMSNorm(c.dim, rngs=rngs)
    self.head = Linear(c.dim, c.vocab, ("embed", "vocab"), rngs=rngs)

  def _block(self, c, layer: int, rngs):
    raise NotImplementedError

  def init_cache(self, batch: int) -> list:
    """The empty decode cache: one entry per block."""
    return [block.init_cache(batch) for block in self.blocks]

  def __call__(self, tokens, cache=None):
    """``tokens: [B, T]`` int → ``(logits [B, T, V], cache)``; ``cache`` continues a sequence."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array [B, T]; got {tokens.dtype} {tokens.shape}")
    if cache is not None and len(cache) != len(self.blocks):
      raise ValueError(
        f"cache must hold one entry per block ({len(self.blocks)}); got {len(cache)}"
      )
    x = self.embed[...][tokens]  # [B, T, E]
    new_cache = []
    run = nnx.remat(lambda block, x, state: block(x, state)) if self.config.remat else None
    for block, state in zip(self.blocks, cache or [None] * len(self.blocks), strict=True):
      x, state = run(block, x, state) if run is not None else block(x, state)
      new_cache.append(state)
    return self.head(self.norm(x)), new_cache

  def decode(self, tokens, cache):
    """Continue ``cache`` with ``tokens: [B, T]`` (T = 1 for step-by-step generation)."""
    return self(tokens, cache)


def _swa(c, rngs, persistent: int):
  return Attention(
    c.dim,
    c.heads,
    c.head_dim,
    window=c.window,
    n_persistent=persistent,
    rope_base=c.rope_base,
    rngs=rngs,
  )


def _decoding_attention(c, rngs):
  """Full (or windowed) causal attention whose decode cache keeps ``window or max_len`` tokens."""
  return Attention(
    c.dim,
    c.heads,
    c.head_dim,
    window=c.window,
    capacity=c.window or c.max_len,
    rope_base=c.rope_base,
    rngs=rngs,
  )


class MirasLM(LM):
  """``x += MIRAS(RMSNorm x); x += SwiGLU(RMSNorm x)`` per layer (MIRAS §5.4)."""

  config_class = cfg.MirasLMConfig

  def _block(self, c, layer, rngs):
    return Block(c, neural_memory(c, rngs), None, rngs=rngs)


class HybridLM(LM):
  """Samba-style: memory block → sliding-window attention → MLP per layer; layers outside
  ``memory_layers`` have the attention and the MLP only."""

  config_class = cfg.HybridLMConfig

  def _block(self, c, layer, rngs):
    memory = neural_memory(c, rngs) if c.has_memory(layer) else None
    return Block(c, memory, _swa(c, rngs, c.persistent), rngs=rngs)


class TitansMAL(HybridLM):
  """Titans MAL (Eq 29–31): the memory layer, then sliding-window attention whose persistent
  tokens are always visible, then the MLP. Where the paper is silent: Eq 29 prepends the
  persistent tokens to the memory's input too; we give the memory a learned initial state instead
  (a data-independent prefix through the memory only sets that state) and keep the tokens as the
  attention's prefix, where they stay visible beyond the window."""

  config_class = cfg.TitansMALConfig


class TitansMAG(LM):
  """Titans MAG (Eq 26–28): attention and memory in parallel, gated (``GatedBlock``); layers
  outside ``memory_layers`` are sliding-window attention + MLP."""

  config_class = cfg.TitansMAGConfig

  def _block(self, c, layer, rngs):
    if c.has_memory(layer):
      return GatedBlock(c, rngs=rngs)
    return Block(c, None, _swa(c, rngs, c.persistent), rngs=rngs)


class TitansMAC(LM):
  """Titans MAC (Eq 21–25): every layer a ``MACBlock``."""

  config_class = cfg.TitansMACConfig

  def _block(self, c, layer, rngs):
    return MACBlock(c, rngs=rngs)


class Transformer(LM):
  """Transformer++: ``x += Attention(RMSNorm x); x += SwiGLU(RMSNorm x)`` with RoPE. Decoding
  keeps the last ``max_len`` tokens (full attention) or the window; a sequence longer than
  ``max_len`` decodes as if the attention had a window of ``max_len``."""

  config_class = cfg.TransformerConfig

  def _block(self, c, layer, rngs):
    return Block(c, None, _decoding_attention(c, rngs), rngs=rngs)


class Hope(LM):
  """Hope (Nested Learning [ARX] Eq 94–97): per layer, self-modifying Titans (every projection but
  q an in-context memory trained by DGD) then the Continuum Memory System in place of the MLP."""

  config_class = cfg.HopeConfig

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


class HopeAttention(LM):
  """Hope-Attention (Nested Learning §8.3): per layer, softmax attention (RoPE; full or windowed,
  decoding as ``Transformer``) then the Continuum Memory System in place of the MLP."""

  config_class = cfg.HopeAttentionConfig

  def _block(self, c, layer, rngs):
    return NestedBlock(c, _decoding_attention(c, rngs), rngs=rngs)
