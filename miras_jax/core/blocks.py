"""Fixed-size token blocks on an absolute position grid, shared by the chunked Nested Learning forms.

A call continues a sequence at absolute position ``pos`` (a traced int). Its T tokens are placed at
``[phase, phase + T)`` of a zero buffer of ``n · c`` slots, ``phase = pos mod c``, so that block
``i`` covers the absolute positions ``[pos − phase + i·c, pos − phase + (i+1)·c)`` and every chunk
boundary of a size that is a multiple of ``c`` falls on a block end. ``mask`` marks the real tokens.
"""

from __future__ import annotations

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
