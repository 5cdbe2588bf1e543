"""The residual blocks the models stack; each has ``init_cache(batch)`` and
``__call__(x, cache) -> (x, cache)`` (``cache=None``: a fresh sequence; the returned cache continues
it exactly, so decoding token by token and prefill + continue give the logits of one call).

- ``Block``: pre-norm residual, ``x += Memory(norm x)``, ``x += Attention(norm x)``,
  ``x += SwiGLU(norm x)`` with either mixer optional (miras_lm, hybrid_lm, titans_mal, transformer).

Every block's MLP is the SwiGLU, or the Continuum Memory System when the config says ``cms=True``
(Nested Learning §7: "usable in place of the MLP block of any model"); its state joins the cache.

The blocks of one model family (MAG's gated block, MAC's segment block, Hope's nested block)
live in that family's module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flax import nnx

from miras_jax.nn.layers import Attention, KVCache, RMSNorm, SwiGLU
from miras_jax.nn.memory import NeuralMemory, NeuralMemoryState
from miras_jax.nn.nested import CMSLayer


def neural_memory(c, rngs: nnx.Rngs) -> NeuralMemory:
  """The memory block a config with memory fields describes."""
  return NeuralMemory(
    c.dim,
    c.heads,
    c.head_dim,
    preset=c.preset,
    preset_options=dict(c.preset_options),
    chunk_size=c.chunk_size,
    conv_kernel=c.conv_kernel,
    gate_rank=c.gate_rank,
    max_lr=c.max_lr or None,
    channel_gates=tuple(c.channel_gates),
    init_scale=c.init_scale or None,
    delta_init=c.delta_init or None,
    gate_init=dict(c.gate_init),
    chunk_remat=c.chunk_remat,
    rngs=rngs,
  )


def mlp_block(c, rngs: nnx.Rngs):
  """The MLP block of a config: the SwiGLU, or the Continuum Memory System when ``c.cms``."""
  if c.cms:
    return CMSLayer(
      c.dim,
      c.mlp_hidden,
      chunk_sizes=c.cms_chunk_sizes,
      lrs=c.cms_lrs,
      variant=c.cms_variant,
      rngs=rngs,
    )
  return SwiGLU(c.dim, c.mlp_hidden, rngs=rngs)


def mlp_init(mlp, batch: int):
  """The MLP block's per-sequence state (None for the stateless SwiGLU)."""
  return mlp.init_state(batch) if isinstance(mlp, CMSLayer) else None


def mlp_apply(mlp, x, state):
  """``(y, state)`` of the MLP block on ``x`` (the CMS continues ``state``)."""
  if isinstance(mlp, CMSLayer):
    return mlp(x, state)
  return mlp(x), None


class BlockCache(NamedTuple):
  memory: NeuralMemoryState | None  # the memory block's state (None without one)
  attention: KVCache | None  # the attention's ring buffer (None without attention)
  mlp: Any = None  # the CMS state when the MLP block is a CMS (None for the SwiGLU)


class Block(nnx.Module):
  """``x += Memory(RMSNorm x)``; ``x += Attention(RMSNorm x)``; ``x += SwiGLU(RMSNorm x)``.

  ``memory``: a ``NeuralMemory`` or None; ``attention``: an ``Attention`` or None.
  """

  def __init__(self, c, memory: NeuralMemory | None, attention: Attention | None, *, rngs):
    self.memory, self.attention = memory, attention
    self.norm_memory = RMSNorm(c.dim, rngs=rngs) if memory is not None else None
    self.norm_attention = RMSNorm(c.dim, rngs=rngs) if attention is not None else None
    self.norm_mlp = RMSNorm(c.dim, rngs=rngs)
    self.mlp = mlp_block(c, rngs)

  def init_cache(self, batch: int) -> BlockCache:
    return BlockCache(
      self.memory.init_state(batch) if self.memory is not None else None,
      self.attention.init_cache(batch) if self.attention is not None else None,
      mlp_init(self.mlp, batch),
    )

  def __call__(self, x, cache: BlockCache | None = None):
    cache = cache if cache is not None else BlockCache(None, None)
    memory_state, kv, mlp_state = cache
    if self.memory is not None:
      y, memory_state = self.memory(self.norm_memory(x), memory_state)
      x = x + y
    if self.attention is not None:
      y, kv = self.attention(self.norm_attention(x), kv)
      x = x + y
    y, mlp_state = mlp_apply(self.mlp, self.norm_mlp(x), mlp_state)
    return x + y, BlockCache(memory_state, kv, mlp_state)


def _attention(c, rngs, **options):
  """Softmax attention of config ``c`` (heads, window, RoPE, and ``attention_conv`` and
  ``attention_chunk`` where the config has those fields) with ``options`` of ``Attention``."""
  return Attention(
    c.dim,
    c.heads,
    c.head_dim,
    window=c.window,
    rope_base=c.rope_base,
    conv_kernel=getattr(c, "attention_conv", 0),
    query_chunk=getattr(c, "attention_chunk", 0),
    rngs=rngs,
    **options,
  )


def swa(c, rngs, persistent: int):
  """Sliding-window attention of config ``c`` with ``persistent`` tokens (``_attention``)."""
  return _attention(c, rngs, n_persistent=persistent)


def decoding_attention(c, rngs):
  """Full (or windowed) causal attention whose decode cache keeps ``window or max_len`` tokens."""
  return _attention(c, rngs, capacity=c.window or c.max_len)
