"""Flax NNX building blocks shared by the memory layers and models.

Every parameter carries logical axis names (``out_sharding`` metadata, created without eager
sharding) that a rules table maps to mesh axes in the training stack: ``embed`` (model dim E),
``mlp`` (hidden F), ``heads``, ``head_dim``, ``conv`` (kernel taps), ``rank`` (low-rank gates).
Shapes: B batch, T time, E model dim, H heads, D head dim.

Precision: parameters are float32; a layer computes in its input's dtype (a bfloat16 input casts
the weights to bfloat16 for the matmul), except ``RMSNorm``, which normalises in float32 and
returns the input's dtype, and the softmax of ``Attention``, which XLA and cuDNN take in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from miras_jax.core.attention import KVCache, ring_slots, ring_write


def param(rngs: nnx.Rngs, init, shape, axes, dtype=jnp.float32) -> nnx.Param:
  """An ``nnx.Param`` initialised by ``init(key, shape, dtype)`` with logical axis names ``axes``."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} must name every dimension of shape {shape}")
  return nnx.Param(
    init(rngs.params(), shape, dtype), out_sharding=tuple(axes), eager_sharding=False
  )


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / ‖x‖₂ over the last axis (q/k normalisation of the memory layers)."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class Linear(nnx.Module):
  """y = x W (+ b), ``W: [in, out]`` with logical axes ``axes``."""

  def __init__(self, d_in: int, d_out: int, axes=("embed", "mlp"), *, use_bias=False, rngs):
    self.kernel = param(rngs, nnx.initializers.lecun_normal(), (d_in, d_out), axes)
    self.bias = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:]) if use_bias else None

  def __call__(self, x):
    y = x @ self.kernel[...].astype(x.dtype)
    return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class RMSNorm(nnx.Module):
  """x / √(mean(x²) + ε) · g over the last axis (Llama); ``g`` starts at 1."""

  def __init__(self, dim: int, axes=("embed",), *, eps: float = 1e-6, rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes)
    self.eps = eps

  def __call__(self, x):
    h = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # the statistics in float32 at least
    y = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps) * self.scale[...]
    return y.astype(x.dtype)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) ⊙ up(x)): the Llama MLP, ``E → F → E``."""

  def __init__(self, dim: int, hidden: int, *, rngs):
    self.gate = Linear(dim, hidden, ("embed", "mlp"), rngs=rngs)
    self.up = Linear(dim, hidden, ("embed", "mlp"), rngs=rngs)
    self.down = Linear(hidden, dim, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (rotate-half form). ``x: [..., T, H, D]``, ``positions: [T]``."""
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f"rope needs an even head dim; got {d}")
  freq = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2.0 / d)  # [D/2]
  angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [T, D/2]
  cos, sin = jnp.cos(angle)[:, None, :], jnp.sin(angle)[:, None, :]  # [T, 1, D/2]
  x1, x2 = x[..., : d // 2], x[..., d // 2 :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class ShortConv(nnx.Module):
  """Depthwise causal convolution over time, kernel K (4), with a streaming state.

  ``y_t = Σ_{j<K} w_j ⊙ x_{t−j}``. The state holds the last K − 1 inputs ``[B, K−1, C]`` (zeros at the
  start), so that calling on a sequence in pieces equals one call on the whole.
  """

  def __init__(self, channels: int, kernel: int = 4, axes=("conv", "embed"), *, rngs):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=1)
    self.weight = param(rngs, init, (kernel, channels), axes)  # weight[j] multiplies x_{t−j}
    self.kernel = kernel

  def init_state(self, batch: int, channels: int, dtype=jnp.float32) -> jax.Array:
    return jnp.zeros((batch, self.kernel - 1, channels), dtype)

  def __call__(self, x, state=None):
    """``x: [B, T, C]`` → ``(y [B, T, C], state [B, K−1, C])``."""
    b, t, c = x.shape
    if state is None:
      state = self.init_state(b, c, x.dtype)
    padded = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, K−1+T, C]
    w = self.weight[...].astype(x.dtype)
    k = self.kernel
    y = sum(w[j] * padded[:, k - 1 - j : k - 1 - j + t] for j in range(k))
    return y, padded[:, t:].astype(state.dtype)


class LowRankGate(nnx.Module):
  """x → R^r → R^out (+ bias): the low-rank data-dependent gate projection (MIRAS §5.4, r = 32/64).

  Returns pre-activations; the caller applies sigmoid / softplus and scales.
  """

  def __init__(self, dim: int, out: int, rank: int = 32, *, bias_init: float = 0.0, rngs):
    self.down = Linear(dim, rank, ("embed", "rank"), rngs=rngs)
    self.up = Linear(rank, out, ("rank", "heads"), rngs=rngs)
    self.bias = param(rngs, nnx.initializers.constant(bias_init), (out,), ("heads",))

  def __call__(self, x):
    return self.up(self.down(x)) + self.bias[...].astype(x.dtype)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "reference")  # Attention(implementation=)


class Attention(nnx.Module):
  """Causal multi-head softmax attention with RoPE, an optional sliding window and persistent tokens.

  Persistent tokens (Titans §4, Eq 19) are ``n_persistent`` learned vectors in model space that are
  prepended to every sequence as keys/values (projected like the input, no RoPE) and are visible to
  every query. A window w lets token t see tokens t − w < j ≤ t. ``__call__`` takes a cache to
  decode or prefill and returns the cache after the call; the cache keeps the last ``capacity``
  tokens (the window unless given; full attention needs ``capacity``, the longest sequence, or
  returns no cache when called without one).

  ``implementation``: "auto" (default) computes softmax(q kᵀ/√D) v with
  ``jax.nn.dot_product_attention``, which picks a fused kernel where the platform has one (cuDNN
  on GPU) and XLA otherwise; "xla" or "cudnn" ask for one; "reference" is the einsum form written
  out here, the one the others are tested against.

  ``query_chunk`` c > 0 attends c queries at a time (a ``lax.scan`` over query blocks, each block
  recomputed in the backward pass), so that the scores held at once are c × S instead of T × S:
  the activation memory of long sequences on a platform without a fused kernel. 0 (default): all
  queries at once. Same result (tested against the one-shot form).

  ``conv_kernel`` K > 0 adds the memory blocks' short causal convolution (K taps, depthwise, then
  SiLU) on q, k and v before RoPE (the persistent tokens are projected only); its last K − 1
  inputs travel in the cache (``KVCache.conv``).
  """

  def __init__(
    self,
    dim,
    heads,
    head_dim,
    *,
    window=None,
    n_persistent=0,
    capacity=None,
    rope_base=10000.0,
    implementation="auto",
    conv_kernel=0,
    query_chunk=0,
    rngs,
  ):
    if implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
        f"implementation must be one of {ATTENTION_IMPLEMENTATIONS}; got {implementation!r}"
      )
    self.implementation = implementation
    if window is not None and window < 1:
      raise ValueError(f"window must be >= 1 or None; got {window}")
    if capacity is not None and capacity < 1:
      raise ValueError(f"capacity must be >= 1 or None; got {capacity}")
    if not isinstance(query_chunk, int) or query_chunk < 0:
      raise ValueError(f"query_chunk must be an int >= 0 (0: all queries); got {query_chunk!r}")
    self.query_chunk = query_chunk
    if not isinstance(conv_kernel, int) or conv_kernel < 0:
      raise ValueError(f"conv_kernel must be an int >= 0 (0: no convolution); got {conv_kernel!r}")
    self.heads, self.head_dim, self.window, self.rope_base = heads, head_dim, window, rope_base
    self.capacity = capacity or window
    inner = heads * head_dim
    self.q = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.k = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.v = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.o = Linear(inner, dim, ("heads", "embed"), rngs=rngs)
    self.conv = (
      ShortConv(3 * inner, conv_kernel, ("conv", "heads"), rngs=rngs) if conv_kernel else None
    )
    self.persistent = (
      param(rngs, nnx.initializers.normal(1.0), (n_persistent, dim), ("persistent", "embed"))
      if n_persistent
      else None
    )

  def init_cache(self, batch: int, dtype=jnp.float32) -> KVCache:
    if self.capacity is None:
      raise ValueError("full attention needs capacity= (the longest sequence to decode)")
    shape = (batch, self.capacity, self.heads, self.head_dim)
    conv = (
      None if self.conv is None else self.conv.init_state(batch, 3 * self.heads * self.head_dim)
    )
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32), conv)

  def _split(self, y):
    return y.reshape(*y.shape[:-1], self.heads, self.head_dim)

  def project(self, x, positions, conv=None):
    """``x: [B, T, E]`` → q, k, v ``[B, T, H, D]`` (RoPE on q and k at ``positions: [T]``) and the
    convolution's buffer after ``x`` (None without a convolution; ``conv`` continues one)."""
    q, k, v = self.q(x), self.k(x), self.v(x)
    if self.conv is not None:
      qkv, conv = self.conv(jnp.concatenate([q, k, v], axis=-1), conv)
      q, k, v = jnp.split(jax.nn.silu(qkv), 3, axis=-1)
    q = rope(self._split(q), positions, self.rope_base)
    k = rope(self._split(k), positions, self.rope_base)
    return q, k, self._split(v), conv

  def attend(self, q, keys, vals, mask):
    """softmax(q kᵀ/√D) v over ``keys, vals: [B, S, H, D]`` where ``mask: [T, S]`` allows, with
    the persistent tokens visible to every query; output projected to ``[B, T, E]``."""
    b, t = q.shape[:2]
    keys, vals = keys.astype(q.dtype), vals.astype(q.dtype)  # a float32 cache under bf16 compute
    if self.persistent is not None:
      p = self.persistent[...].astype(q.dtype)  # [P, E]
      pk, pv = (
        jnp.broadcast_to(self._split(f(p)), (b, p.shape[0], self.heads, self.head_dim))
        for f in (self.k, self.v)
      )
      keys, vals = jnp.concatenate([pk, keys], 1), jnp.concatenate([pv, vals], 1)
      mask = jnp.concatenate([jnp.ones((t, p.shape[0]), bool), mask], axis=1)
    if self.query_chunk and t > self.query_chunk:
      y = self._by_query_blocks(q, keys, vals, mask)
    else:
      y = self._softmax(q, keys, vals, mask)
    return self.o(y.reshape(b, t, -1))

  def _softmax(self, q, keys, vals, mask):
    """softmax(q kᵀ/√D) v, ``q: [B, T, H, D]``, ``keys, vals: [B, S, H, D]``, ``mask: [T, S]``."""
    if self.implementation == "reference":
      scores = jnp.einsum("bthd,bshd->bhts", q, keys) / jnp.sqrt(self.head_dim).astype(q.dtype)
      scores = jnp.where(mask[None, None], scores, -jnp.inf)
      return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), vals)
    return jax.nn.dot_product_attention(
      q,
      keys,
      vals,
      mask=mask[None, None],
      scale=1.0 / float(np.sqrt(self.head_dim)),
      implementation=None if self.implementation == "auto" else self.implementation,
    )

  def _by_query_blocks(self, q, keys, vals, mask):
    """``_softmax`` over blocks of ``query_chunk`` queries (padded queries see every key and are
    dropped), each block under ``jax.checkpoint``."""
    b, t, h, d = q.shape
    c = self.query_chunk
    n = -(-t // c)
    q = jnp.pad(q, ((0, 0), (0, n * c - t), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, n * c - t), (0, 0)), constant_values=True)
    blocks = (q.reshape(b, n, c, h, d).swapaxes(0, 1), mask.reshape(n, c, -1))

    @jax.checkpoint
    def block(carry, xs):
      return carry, self._softmax(xs[0], keys, vals, xs[1])

    _, ys = jax.lax.scan(block, None, blocks)  # [n, B, c, H, D]
    return ys.swapaxes(0, 1).reshape(b, n * c, h, d)[:, :t]

  def __call__(self, x, cache: KVCache | None = None):
    """``x: [B, T, E]`` → ``(y [B, T, E], cache)``; without a cache the tokens start at position 0."""
    b, t, _ = x.shape
    start = jnp.zeros((), jnp.int32) if cache is None else cache.length
    pos_q = start + jnp.arange(t)
    q, k, v, conv = self.project(x, pos_q, None if cache is None else cache.conv)
    keys, vals, pos_k, valid = k, v, pos_q, jnp.ones((t,), bool)
    if cache is not None:
      held, held_valid = ring_slots(start, cache.keys.shape[1])
      keys = jnp.concatenate([cache.keys, k], axis=1)
      vals = jnp.concatenate([cache.values, v], axis=1)
      pos_k = jnp.concatenate([held, pos_q])
      valid = jnp.concatenate([held_valid, valid])
    mask = valid[None, :] & (pos_k[None, :] <= pos_q[:, None])  # [T, S]
    if self.window is not None:
      mask &= pos_k[None, :] > pos_q[:, None] - self.window
    out = self.attend(q, keys, vals, mask)
    if cache is None:
      if self.capacity is None:
        return out, None
      cache = self.init_cache(b, k.dtype)
    idx, keep = ring_write(start, t, cache.keys.shape[1])  # the last `capacity` tokens survive
    new = KVCache(
      cache.keys.at[:, idx].set(k[:, t - keep :]),
      cache.values.at[:, idx].set(v[:, t - keep :]),
      start + t,
      conv,
    )
    return out, new
