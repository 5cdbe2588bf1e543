"""Causal softmax attention: the non-parametric memory of MIRAS (Eq 2, Table 1 "Transformer").

    y_t = Σ_{j ∈ J_t} exp(q_t·k_j / √d_k) v_j / Σ_{l ∈ J_t} exp(q_t·k_l / √d_k),

with ``J_t = {j ≤ t}`` or, with a window w, ``J_t = {t − w < j ≤ t}`` (w tokens, the current one
included). ``softmax_attention`` is the parallel (masked matmul) form; ``SoftmaxAttention`` is the
same memory as a token-serial rule for ``recurrent``: its state is a ring-buffer KV cache
``M_t = M_{t−1} ∪ {(k_t, v_t)}`` of fixed capacity (static shapes), read after the write.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from miras_jax.core.blocks import scan_chunks, split_chunks
from miras_jax.core.gates import Gates


def _scale(d_k: int, scale: float | None) -> float:
  return 1.0 / math.sqrt(d_k) if scale is None else scale


def softmax_attention(q, k, v, *, window: int | None = None, scale: float | None = None):
  """Parallel causal softmax attention. ``q, k: [T, d_k]``, ``v: [T, d_v]`` → ``[T, d_v]``, in the
  inputs' (promoted) floating dtype."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if getattr(x, "ndim", None) != 2:
      raise ValueError(
        f"{name} must be a [T, d] array; got {getattr(x, 'shape', type(x).__name__)}"
      )
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be a floating array; got dtype {x.dtype}")
  if k.shape != q.shape or v.shape[0] != q.shape[0]:
    raise ValueError(
      f"q, k must be [T, d_k] and v [T, d_v] with one T; got {q.shape}, {k.shape}, {v.shape}"
    )
  if window is not None and window < 1:
    raise ValueError(f"window must be >= 1 or None; got {window}")
  t = q.shape[0]
  i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
  mask = j <= i
  if window is not None:
    mask &= j > i - window
  return attend(q, k, v, mask, _scale(q.shape[1], scale))


def attend(q, k, v, mask, scale):
  """``softmax(q kᵀ · scale)`` over the keys where ``mask: [T_q, T_k]`` holds, times ``v``.

  A key whose key or value row is not finite takes no part in the matmuls (0 · NaN = NaN would
  reach every query, also those the mask hides it from); the queries that attend to it get NaN
  (``recurrent`` gives NaN or inf there too, possibly in fewer channels)."""
  ok = jnp.isfinite(k).all(axis=-1) & jnp.isfinite(v).all(axis=-1)
  k, v = jnp.where(ok[:, None], k, 0), jnp.where(ok[:, None], v, 0)
  ys = jax.nn.softmax(jnp.where(mask, (q @ k.T) * scale, -jnp.inf), axis=-1) @ v
  return jnp.where(jnp.any(mask & ~ok[None, :], axis=-1, keepdims=True), jnp.nan, ys)


def ring_slots(length: jax.Array, capacity: int):
  """Ring buffer after ``length`` writes: the position each slot holds ``[C]`` and whether it is valid."""
  slots = jnp.arange(capacity)
  held = length - 1 - jnp.mod(length - 1 - slots, capacity)
  return held, (slots < jnp.minimum(length, capacity)) & (held >= 0)


def ring_write(length: jax.Array, n: int, capacity: int):
  """Where ``n`` new entries go: (slot indices of the last ``keep`` of them, ``keep`` = min(n, C))."""
  keep = min(n, capacity)
  return jnp.mod(length + n - keep + jnp.arange(keep), capacity), keep


class KVCache(NamedTuple):
  """Ring-buffer state of causal attention: ``keys``, ``values`` with C slots and the number of
  tokens written so far ``length`` (int32 scalar). ``SoftmaxAttention`` (one sequence, one head)
  holds ``keys: [C, d_k]``, ``values: [C, d_v]``; the NNX ``Attention`` layer the batched
  ``[B, C, H, D]``, and with a short convolution on q, k, v its buffer ``conv: [B, K−1, 3·H·D]``
  (None without one)."""

  keys: jax.Array
  values: jax.Array
  length: jax.Array
  conv: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class SoftmaxAttention:
  """Causal (optionally windowed) softmax attention as a token-serial memory rule.

  The cache holds the last ``capacity`` tokens. With a window, ``capacity`` defaults to the window
  and attention covers exactly the last ``window`` tokens; without one, choose ``capacity`` at least
  the total length to be processed (beyond it the oldest tokens are overwritten, i.e. the rule acts
  as a window of ``capacity``).
  """

  window: int | None = None  # attend to the last `window` tokens (current one included); None: all
  scale: float | None = None  # score scale; None means 1/√d_k

  def __post_init__(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"window must be >= 1 or None; got {self.window}")

  name = "softmax_attention"
  required_gates = ()
  used_gates = ()

  def init_state(self, d_k: int, d_v: int, capacity: int | None = None) -> KVCache:
    """Empty cache of ``capacity`` slots (default: the window)."""
    capacity = capacity or self.window
    if capacity is None or capacity < 1:
      raise ValueError("capacity must be a positive int (needed when window is None)")
    if self.window is not None and capacity != self.window:
      raise ValueError(
        f"capacity must equal window={self.window} for windowed attention; got {capacity}"
      )
    return KVCache(
      keys=jnp.zeros((capacity, d_k), jnp.float32),
      values=jnp.zeros((capacity, d_v), jnp.float32),
      length=jnp.zeros((), jnp.int32),
    )

  def write(self, state: KVCache, k, v, g=None) -> KVCache:
    slot = state.length % state.keys.shape[0]
    return KVCache(state.keys.at[slot].set(k), state.values.at[slot].set(v), state.length + 1)

  def read(self, state: KVCache, q) -> jax.Array:
    capacity = state.keys.shape[0]
    scores = state.keys @ q * _scale(q.shape[0], self.scale)  # [C]
    valid = jnp.arange(capacity) < jnp.minimum(state.length, capacity)
    return jax.nn.softmax(jnp.where(valid, scores, -jnp.inf)) @ state.values

  def check(self, state, q, k, v, gates) -> None:
    if not isinstance(state, KVCache):
      raise ValueError(f"state must be a KVCache (from init_state); got {type(state).__name__}")
    if not isinstance(gates, Gates):
      raise ValueError(f"gates must be a miras_jax.Gates; got {type(gates).__name__}")
    for name in ("keys", "values"):
      x = getattr(state, name)
      dtype = getattr(x, "dtype", None)
      if getattr(x, "ndim", None) != 2 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"state.{name} must be a floating [C, d] array; got {x!r}")
      if jnp.finfo(dtype).bits < 32 or x.shape[0] != state.keys.shape[0]:
        raise ValueError(
          f"state.{name} must be float32 or float64 with C={state.keys.shape[0]} rows like "
          f"state.keys; got {dtype} {x.shape}"
        )
    if jnp.ndim(state.length) != 0 or not jnp.issubdtype(
      jnp.result_type(state.length), jnp.integer
    ):
      raise ValueError(f"state.length must be an int scalar; got {state.length!r}")
    d_k, d_v = state.keys.shape[1], state.values.shape[1]
    if getattr(q, "ndim", None) != 2:
      raise ValueError(f"q must have shape [T, {d_k}]; got {getattr(q, 'shape', type(q).__name__)}")
    for name, x, d in (("q", q, d_k), ("k", k, d_k), ("v", v, d_v)):
      if getattr(x, "ndim", None) != 2 or x.shape[1] != d or x.shape[0] != q.shape[0]:
        raise ValueError(
          f"{name} must have shape [T={q.shape[0]}, {d}] (T from q, d from the state); got "
          f"{getattr(x, 'shape', type(x).__name__)}"
        )
      if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating array; got dtype {x.dtype}")


def chunked_attention(rule: SoftmaxAttention, state: KVCache, q, k, v, b: int, remat: bool):
  """Blockwise causal attention: each chunk attends to the cache and to itself, then is cached."""
  cap, d_k = state.keys.shape
  scale = (1.0 / jnp.sqrt(d_k)) if rule.scale is None else rule.scale
  window = rule.window

  def body(cache: KVCache, c):
    qc, kc, vc = c["q"], c["k"], c["v"]
    n = qc.shape[0]
    length = cache.length
    pos_q = length + jnp.arange(n)
    pos_cache, valid_cache = ring_slots(length, cap)
    keys = jnp.concatenate([cache.keys, kc])
    vals = jnp.concatenate([cache.values, vc])
    pos_k = jnp.concatenate([pos_cache, pos_q])
    valid = jnp.concatenate([valid_cache, jnp.ones((n,), bool)])
    mask = valid[None, :] & (pos_k[None, :] <= pos_q[:, None])
    if window is not None:
      mask &= pos_k[None, :] > pos_q[:, None] - window
    ys = attend(qc, keys, vals, mask, scale)
    idx, keep = ring_write(length, n, cap)  # only the last `cap` tokens survive in the ring
    new = KVCache(
      cache.keys.at[idx].set(kc[n - keep :]), cache.values.at[idx].set(vc[n - keep :]), length + n
    )
    return new, ys

  full, rest = split_chunks({"q": q, "k": k, "v": v}, b, q.shape[0])
  return scan_chunks(body, state, full, rest, remat, v[:0])
