"""The mini-batch chunk semantics written token by token: ``chunk_reference``, and the parts of
those semantics that the dual form (``minibatch.py``) shares.

Inside a chunk every token's gradient is taken at the state the previous chunk left (its *base*;
Titans Eq 16–18, MIRAS Eq 28–32); chunk boundaries sit every b tokens from the start of the
sequence, and a state returned mid-chunk carries ``chunk_phase`` and ``chunk_base`` so that a later
call completes that chunk. ``chunk_reference`` is the same semantics semantics written token by token with
materialised weights; with ``chunk_size=1`` it equals ``recurrent`` exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.core import retention as ret
from miras_jax.core.blocks import check_chunk_size
from miras_jax.core.gates import Gates
from miras_jax.core.rule import MemoryState, Rule, promote


def check_minibatch(rule: Rule, g: Gates, *, serial: bool = False):
  """``serial``: the token-serial reference, which also runs DGD (its decay is not a scalar)."""
  forms = ("dual", "reference") if serial else ("dual",)
  if rule.grad_at != "previous" or rule.algorithm.minibatch not in forms:
    raise ValueError(
      f"{rule.name}: no chunked form for this composition (grad_at={rule.grad_at}, "
      f"{rule.algorithm.name}); use recurrent"
    )
  if rule.retention.minibatch is None:
    raise ValueError(
      f"{rule.name}: no chunked form for retention {rule.retention.name}; use recurrent"
    )
  for name in ("retention", "retention_value"):
    x = getattr(g, name)
    if x is not None and x.ndim != 1:
      raise ValueError(f"{rule.name}: the mini-batch chunked form needs a scalar gates.{name} [T]")


def tree_where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def boundary(state: MemoryState) -> MemoryState:
  """The part of a state that serves as a chunk's gradient base point (W, and A for ℓq)."""
  return MemoryState(state.weights, state.accum)


def phase_and_base(state: MemoryState):
  """(phase, base, static_zero): where the previous call left the chunk grid."""
  if state.chunk_phase is None:
    return jnp.zeros((), jnp.int32), boundary(state), True
  phase = jnp.asarray(state.chunk_phase, jnp.int32)
  base = tree_where(phase > 0, state.chunk_base, boundary(state))
  return phase, base, False


def chunk_reference(rule: Rule, state: MemoryState, q, k, v, gates: Gates, *, chunk_size: int):
  """Token-serial mini-batch semantics: the gradient base point is frozen per chunk.

  The semantics of ``chunked``'s mini-batch form (module docstring) written as one ``lax.scan`` over
  tokens with every W_t materialised. Chunk boundaries sit every ``chunk_size`` tokens from the
  start of the sequence; a state returned mid-chunk (``chunk_phase > 0``) continues that chunk.
  With ``chunk_size=1`` it is ``recurrent``. Half-precision inputs and ``T = 0`` as in ``chunked``.
  """
  if not isinstance(rule, Rule):
    raise ValueError(f"rule must be a parametric Rule; got {type(rule).__name__}")
  check_chunk_size(chunk_size)
  rule.check(state, q, k, v, gates)
  g = Gates(**{f: getattr(gates, f) if f in rule.used_gates else None for f in Gates._fields})
  check_minibatch(rule, g, serial=True)
  state, q, k, v, g = promote(state, q, k, v, g)
  t, b = q.shape[0], chunk_size
  if g.lr is None:
    g = g._replace(lr=jnp.full((t,), rule.lr_default, q.dtype))
  lq = rule.retention.minibatch == "normalised"
  lag = rule.retention.minibatch == "lag"
  inner = ret.Decay("scalar") if lag else rule.retention  # Memora's in-chunk (linear) retention
  phase, base, _ = phase_and_base(state)
  core = state._replace(chunk_base=None, chunk_phase=None)

  def token(carry, x):
    state, base = carry
    pos, qt, kt, vt, gt = x
    first, last = pos % b == 0, pos % b == b - 1
    if lag:  # the lag token: the exact update, which is also the chunk's base
      cand = rule.write(state, kt, vt, gt)
      base = tree_where(first, boundary(cand), base)
    else:
      base = tree_where(first, boundary(state), base)
    grad, gs = rule._grad(base.weights, kt, vt, gt)  # noqa: SLF001 (clipped like every write)
    step, mom = rule.algorithm.step(
      grad, state.momentum, gs, kt, state.weights, rule._inputs(base.weights, kt)
    )
    if lq:
      accum = jax.tree.map(jnp.add, ret.scale_by_retention(state.accum, gt), step)
      normalised, _ = rule.retention.init(accum)
      scale = jax.tree.map(rule.retention.scale, base.accum)
      read = tree_where(last, normalised, jax.tree.map(lambda a, c: a * c, accum, scale))
      new = state._replace(weights=normalised, accum=accum, momentum=mom)
    else:
      w, _ = inner.write(state.weights, None, step, gt)
      new = state._replace(weights=w, momentum=mom)
      if lag:
        new = tree_where(first, cand, new)
      read = new.weights
    return (new, base), rule.memory.apply(read, qt)

  xs = (phase + jnp.arange(t), q, k, v, g)
  (final, base), ys = jax.lax.scan(token, (core, base), xs)
  end = (phase + t) % b
  return ys, final._replace(chunk_base=tree_where(end == 0, boundary(final), base), chunk_phase=end)
