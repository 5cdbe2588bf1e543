"""``titans_mac``: Titans memory as context (Titans Eq 21–25): the segment block and the model."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from miras_jax.models.base import HYBRID_LAYERS, LM, MemoryFields, paper_sizes
from miras_jax.models.blocks import mlp_apply, mlp_block, mlp_init, neural_memory
from miras_jax.models.registry import register
from miras_jax.nn.layers import Attention, RMSNorm
from miras_jax.nn.memory import NeuralMemoryState

MAC_WRITES = ("attention", "tokens")  # TitansMACConfig.writes


@dataclasses.dataclass(frozen=True)
class TitansMACConfig(MemoryFields):
  """``titans_mac`` (Titans Eq 21–25): memory as context of a segment-wise attention."""

  segment: int = 8  # segment length C (attention runs within a segment)
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)
  # what the memory learns: "tokens" the segment's normalised inputs z (the default, measured on
  # MQAR: docs/models.md), "attention" the attention outputs y (the paper's Eq 24)
  writes: str = "tokens"
  segment_remat: bool = True  # checkpoint each segment (the backward keeps the carried state)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1920, 2304, 4032, 5376), HYBRID_LAYERS, segment=1024, persistent=32
  )

  def _check(self):
    super()._check()
    if self.writes not in MAC_WRITES:
      raise ValueError(f"TitansMACConfig.writes must be one of {MAC_WRITES}; got {self.writes!r}")
    if self.segment < 1:
      raise ValueError(f"TitansMACConfig.segment must be >= 1; got {self.segment}")
    if self.persistent < 0:
      raise ValueError(f"TitansMACConfig.persistent must be >= 0; got {self.persistent}")


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

  A call without a cache runs the whole segments with ``lax.scan`` over segments (each under
  ``jax.checkpoint`` with ``c.segment_remat``: the backward pass keeps the carried memory state per
  segment and recomputes the segment) and a remainder token by token; a call with a cache runs
  token by token (the segment buffer is the cache).
  """

  def __init__(self, c, *, rngs):
    self.segment, self.segment_remat = c.segment, c.segment_remat
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
    q, k_z, v_z, _ = self.attention.project(z, c + pos)
    _, k_h, v_h, _ = self.attention.project(h, pos)
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
    q, k_z, v_z, _ = self.attention.project(z, (c + j)[None])
    _, k_h, v_h, _ = self.attention.project(h, j[None])
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
        body = jax.checkpoint(self._segment) if self.segment_remat else self._segment
        (state, read_conv), o = jax.lax.scan(body, (cache.memory, cache.read_conv), segments)
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


@register("titans_mac")
class TitansMAC(LM):
  """Titans MAC (Eq 21–25): every layer a ``MACBlock``."""

  config_class = TitansMACConfig

  def _block(self, c, layer, rngs):
    return MACBlock(c, rngs=rngs)
