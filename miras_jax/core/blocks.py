"""Fixed-size token blocks: the chunk grid and the chunk driver shared by every chunked form.

``to_blocks``/``from_blocks`` place a call's tokens on an absolute position grid (the mini-batch
memory forms and the chunked Nested Learning forms); ``split_chunks``/``scan_chunks`` run a body over
the full chunks of a call and its remainder (the exact forms and blockwise attention);
``isolate_nonfinite``/``poison_after`` keep a non-finite token out of a chunk's matmuls.

A call continues a sequence at absolute position ``pos`` (a traced int). Its T tokens are placed at
``[phase, phase + T)`` of a zero buffer of ``n · c`` slots, ``phase = pos mod c``, so that block
``i`` covers the absolute positions ``[pos − phase + i·c, pos − phase + (i+1)·c)`` and every chunk
boundary of a size that is a multiple of ``c`` falls on a block end. ``mask`` marks the real tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def to_blocks(xs, pos: jax.Array, c: int, *, aligned: bool = False):
  """``xs``: a pytree of ``[T, …]`` arrays → ``(blocks, mask, ends, phase)``.

  ``blocks``: the pytree as ``[n, c, …]``; ``mask: [n, c]`` (1 on real tokens); ``ends: [n]`` the
  absolute position after each block; ``aligned=True`` promises ``pos mod c = 0`` (one block fewer
  when T is a multiple of c).
  """
  t = jax.tree.leaves(xs)[0].shape[0]
  pos = jnp.asarray(pos, jnp.int32)
  phase = jnp.zeros((), jnp.int32) if aligned else pos % c
  n = -(-t // c) if aligned else -(-(t + c - 1) // c)

  def place(x):
    buf = jnp.zeros((n * c, *x.shape[1:]), x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, phase, axis=0).reshape(n, c, *x.shape[1:])

  blocks = jax.tree.map(place, xs)
  mask = place(jnp.ones((t,), jnp.float32))
  ends = pos - phase + c * (1 + jnp.arange(n, dtype=jnp.int32))
  return blocks, mask, ends, phase


def from_blocks(ys, phase: jax.Array, t: int):
  """Inverse of ``to_blocks`` for outputs ``[n, c, …]`` → ``[T, …]``."""

  def one(y):
    flat = y.reshape(-1, *y.shape[2:])
    return jax.lax.dynamic_slice_in_dim(flat, phase, t, axis=0)

  return jax.tree.map(one, ys)


TINY = 1e-30  # α is clamped here before the log, so that α = 0 gives a finite log decay


def safe_log(x):
  return jnp.log(jnp.maximum(x, TINY))


def split_chunks(tree, b: int, t: int):
  """Splits the leading T axis of every leaf into (full chunks [N, b, …], remainder [T mod b, …])."""
  n = t // b
  full = jax.tree.map(lambda x: x[: n * b].reshape(n, b, *x.shape[1:]), tree) if n else None
  rest = jax.tree.map(lambda x: x[n * b :], tree) if t % b else None
  return full, rest


def join_chunks(outs, empty):
  """The outputs of the chunks in order; ``empty`` (``[0, d_v]``) when there are none (T = 0)."""
  return jnp.concatenate(outs) if outs else empty


def scan_chunks(body, carry, full, rest, remat: bool, empty):
  """Runs ``body(carry, chunk) -> (carry, ys)`` over the full chunks (scanned) and the remainder."""
  outs = []
  if full is not None:
    fn = jax.checkpoint(body) if remat else body
    carry, ys = jax.lax.scan(fn, carry, full)
    outs.append(ys.reshape(-1, *ys.shape[2:]))
  if rest is not None:
    carry, ys = body(carry, rest)
    outs.append(ys)
  return join_chunks(outs, empty), carry


def remat_scan(body, carry, xs, remat: bool):
  """``jax.lax.scan(body, carry, xs)``; with ``remat`` each step is under ``jax.checkpoint`` and,
  where the length n has a divisor g with √n ≤ g < n (the smallest such), the steps are grouped g
  at a time under a second checkpoint: the backward pass then keeps n/g + g carries instead of n
  (Hope's scans, whose carries are whole memories). Values and gradients are those of the plain
  scan."""
  if not remat:
    return jax.lax.scan(body, carry, xs)
  step = jax.checkpoint(body)
  n = jax.tree.leaves(xs)[0].shape[0]
  g = next((g for g in range(max(math.isqrt(n - 1) + 1, 2), n) if n % g == 0), n) if n > 1 else n
  if g == n:
    return jax.lax.scan(step, carry, xs)
  grouped = jax.tree.map(lambda x: x.reshape(n // g, g, *x.shape[1:]), xs)
  carry, ys = jax.lax.scan(jax.checkpoint(lambda c, xg: jax.lax.scan(step, c, xg)), carry, grouped)
  return carry, jax.tree.map(lambda y: y.reshape(n, *y.shape[2:]), ys)


def check_chunk_size(chunk_size) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


def _finite_tokens(tree, t: int) -> jax.Array:
  """``[t]`` bool: whether every entry of each token's inputs (leaves ``[t, …]``) is finite."""
  ok = jnp.ones((t,), bool)
  for x in jax.tree.leaves(tree):
    ok &= jnp.all(jnp.isfinite(x.reshape(t, math.prod(x.shape[1:]))), axis=1)
  return ok


def isolate_nonfinite(tree, t: int):
  """Keeps a non-finite token out of the chunk's matmuls: ``(tree, alive)`` with every token whose
  inputs (the exact form's effective k, v and gates; the mini-batch form's gradient factors and
  gates) are not all finite set to 0, and ``alive: [t]`` False from the first such token on.

  Inside a chunk every token meets every other one in a matmul over the chunk axis, where a
  causal mask cannot stop 0 · NaN = NaN (masks select with ``jnp.where``, but a NaN row of the
  right operand reaches every output row): without this a NaN in the last key made all earlier
  outputs of its chunk NaN. The caller marks its outputs from the first bad token on, and the end
  state, as NaN (``poison_after``): the token-serial ``recurrent`` is non-finite there too (in every
  channel, or in the channels the bad entry reaches), and the earlier outputs stay exact."""
  ok = _finite_tokens(tree, t)
  clean = jax.tree.map(lambda x: jnp.where(ok.reshape(t, *(1,) * (x.ndim - 1)), x, 0), tree)
  return clean, jnp.cumsum(~ok) == 0


def poison_after(tree, alive):
  """NaN in every floating leaf where ``alive`` (a scalar or a leading ``[t]``) is False."""

  def one(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return jnp.where(alive.reshape(*alive.shape, *(1,) * (x.ndim - alive.ndim)), x, jnp.nan)

  return jax.tree.map(one, tree)
