"""The residual blocks the models stack; each has ``init_cache(batch)`` and
``__call__(x, cache) -> (x, cache)`` (``cache=None``: a fresh sequence; the returned cache continues
it exactly, so decoding token by token and prefill + continue give the logits of one call).

- ``Block``: pre-norm residual, ``x += Memory(norm x)``, ``x += Attention(norm x)``,
  ``x += SwiGLU(norm x)`` with either mixer optional (miras_lm, hybrid_lm, titans_mal, transformer).

Every block's MLP is the SwiGLU, or the Continuum Memory System when the config says ``cms=True``
(Nested Learning §7: "usable in place of the MLP block of any model"); its state joins the cache.
- ``GatedBlock``: Titans MAG (Eq 26–28), memory and sliding-window attention in parallel.
- ``MACBlock``: Titans MAC (Eq 21–25), the memory as context of a segment-wise attention.
- ``NestedBlock``: Hope / Hope-Attention (Nested Learning Eq 94–97), ``x += Mixer(norm x)``, then
  ``x += CMS(norm x)`` (or the SwiGLU when the config turns the CMS off).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
    self.attention = Attention(
      c.dim,
      c.heads,
      c.head_dim,
      window=c.window,
      n_persistent=c.persistent,
      rope_base=c.rope_base,
      rngs=rngs,
    )
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


class MACCache(NamedTuple):
  memory: NeuralMemoryState  # the memory, written with y (Eq 24), or z when writes='tokens'
  snapshot: Any  # the memory state at the start of the current segment: M*_{t−1} of Eq 21
  read_conv: jax.Array  # short-conv buffer of the retrieval queries [B, K−1, H·D]
  keys: jax.Array  # [B, 2C, H, D]: slot i holds h_i, slot C + i the segment token i
  values: jax.Array  # [B, 2C, H, D]
  length: jax.Array  # tokens seen
  mlp: Any = None  # the CMS state when the MLP block is a CMS


class MACBlock(nnx.Module):
  """Titans MAC (Eq 21–25) with the paper's data flow, per segment S of C tokens:

      z = RMSNorm(x_S)
      h = M*_{t−1}(q(z))                       retrieval from the memory at the segment start (21)
      y = Attn([p ‖ h ‖ z]) at z's positions   persistent tokens p, then h, then the segment (22–23)
      M_t = write(M_{t−1}; y)                  the memory learns the attention output (24)
      o = y ⊙ σ(M*_t(y))                       gated by the memory's read of y (25)
      x += o;  x += SwiGLU(RMSNorm x)

  Where the paper is silent (each needed for a causal LM): token i of the segment sees p, h_j
  and z_j for j ≤ i only (h_j depends on z_j, so seeing h_{j>i} would leak the future); RoPE
  positions put h_j at j and z_j at C + j, p has none; M*_t(y) at token i reads the memory after
  writing y_1..y_i (reading M_t after the whole segment would leak the segment's later tokens);
  ⊗ is y ⊙ σ(·) on the memory block's normalised, gated output. The memory state is carried
  across segments; attention never looks outside the current segment.

  ``c.writes`` chooses what the memory learns: "attention" is the paper's y (Eq 24); "tokens", the
  default, writes the segment's normalised inputs z instead (then ``o = y ⊙ σ(M*_t(z))``), as
  titans-pytorch does. On MQAR-64 the paper's form stays near chance where the default learns
  (docs/models.md).

  A call without a cache runs the whole segments with ``lax.scan`` over segments and a remainder
  token by token; a call with a cache runs token by token (the segment buffer is the cache).
  """

  def __init__(self, c, *, rngs):
    self.segment = c.segment
    self.write_tokens = c.writes == "tokens"
    self.norm = RMSNorm(c.dim, rngs=rngs)
    self.memory = neural_memory(c, rngs)
    self.attention = Attention(
      c.dim, c.heads, c.head_dim, n_persistent=c.persistent, rope_base=c.rope_base, rngs=rngs
    )
    self.norm_mlp = RMSNorm(c.dim, rngs=rngs)
    self.mlp = mlp_block(c, rngs)
    self.heads, self.head_dim = c.heads, c.head_dim

  def init_cache(self, batch: int) -> MACCache:
    state = self.memory.init_state(batch)
    kv = jnp.zeros((batch, 2 * self.segment, self.heads, self.head_dim))
    length = jnp.zeros((), jnp.int32)
    return MACCache(state, state.memory, state.conv_q, kv, kv, length, mlp_init(self.mlp, batch))

  def _segment(self, carry, z):
    """One whole segment ``z: [B, C, E]`` (Eq 21–25)."""
    state, read_conv = carry
    h, read_conv = self.memory.read(z, state.memory, read_conv)
    c = z.shape[1]
    pos = jnp.arange(c)
    q, k_z, v_z = self.attention.project(z, c + pos)
    _, k_h, v_h = self.attention.project(h, pos)
    causal = pos[None, :] <= pos[:, None]
    y = self.attention.attend(
      q,
      jnp.concatenate([k_h, k_z], 1),
      jnp.concatenate([v_h, v_z], 1),
      jnp.concatenate([causal, causal], 1),
    )
    m, state = self.memory(z if self.write_tokens else y, state)
    return (state, read_conv), y * jax.nn.sigmoid(m)

  def _token(self, cache: MACCache, z):
    """One token ``z: [B, 1, E]`` at position ``cache.length``."""
    c = self.segment
    j = jnp.mod(cache.length, c)
    snapshot = jax.tree.map(
      lambda now, then: jnp.where(j == 0, now, then), cache.memory.memory, cache.snapshot
    )
    h, read_conv = self.memory.read(z, snapshot, cache.read_conv)
    q, k_z, v_z = self.attention.project(z, (c + j)[None])
    _, k_h, v_h = self.attention.project(h, j[None])
    keys = cache.keys.at[:, j].set(k_h[:, 0]).at[:, c + j].set(k_z[:, 0])
    values = cache.values.at[:, j].set(v_h[:, 0]).at[:, c + j].set(v_z[:, 0])
    seen = jnp.arange(c) <= j
    y = self.attention.attend(q, keys, values, jnp.concatenate([seen, seen])[None, :])
    m, state = self.memory(z if self.write_tokens else y, cache.memory)
    new = cache._replace(
      memory=state, snapshot=snapshot, read_conv=read_conv, keys=keys, values=values,
      length=cache.length + 1,
    )  # fmt: skip
    return new, y * jax.nn.sigmoid(m)

  def __call__(self, x, cache: MACCache | None = None):
    b, t, e = x.shape
    z = self.norm(x)
    outs = []
    fresh = cache is None
    if fresh:
      cache = self.init_cache(b)
      n = t // self.segment
      if n:
        segments = z[:, : n * self.segment].reshape(b, n, self.segment, e).swapaxes(0, 1)
        (state, read_conv), o = jax.lax.scan(
          self._segment, (cache.memory, cache.read_conv), segments
        )
        outs.append(o.swapaxes(0, 1).reshape(b, n * self.segment, e))
        length = jnp.asarray(n * self.segment, jnp.int32)
        cache = cache._replace(memory=state, read_conv=read_conv, length=length)
      z = z[:, n * self.segment :]
    if z.shape[1]:
      cache, o = jax.lax.scan(self._token, cache, z.swapaxes(0, 1)[:, :, None])
      outs.append(o[:, :, 0].swapaxes(0, 1))
    x = x + jnp.concatenate(outs, 1)
    y, mlp_state = mlp_apply(self.mlp, self.norm_mlp(x), None if fresh else cache.mlp)
    return x + y, cache._replace(mlp=mlp_state)


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
