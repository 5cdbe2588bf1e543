"""Self-modifying Titans (Nested Learning [ARX] §8.1–8.2, Eqs 83–93; notes §6), one head.

Every projection is an in-context memory that generates its own values. Memories
``□ ∈ {k, v, eta, alpha, memory}`` are 2-layer residual MLPs (Eq 89/91)

    M_□(z) = z + W_□,1 σ(W_□,2 z),     W_□,2: [m, d] (first layer, input z),  W_□,1: [d, m]

and per token t (q_t = W_q x_t is the one non-adaptive projection, given by the caller):

    k_t = normalize(M_k(x_t)),  v_t = M_v(x_t),  q_t ← normalize(q_t)
    η_t = max_lr · σ(w_η·M_eta(x_t) + b_η),  α_t = σ(w_α·M_alpha(x_t) + b_α)
    o_t = M_memory(q_t)                                                   (Eq 85; the output)
    v̂_□,t = M_□(v_t)                                                     (Eq 84; self-generated)
    G_□,t = ∇_W ½‖M_W(k_t) − v̂_□,t‖²                                     (v̂ fixed in the inner problem)
    W_□,2 ← W_□,2 (α_t I − η'_t k_t k_tᵀ) − η'_t G_□,2    η'_t = η_t/(1 + η_t‖k_t‖²)   (Eq 88, DGD)
    W_□,1 ← α_t W_□,1 − η_t G_□,1

**Chunking (§8.2, Eq 90).** Two chunk sizes: ``memory_chunk_size`` for M_memory and ``chunk_size``
for the others. Every read (k, v, η, α, o, v̂) and every gradient G uses the memory's state at the end
of its previous chunk (the prose of §8.2; Eq 90's ``C·⌈t/C⌉`` read literally would be non-causal),
while the DGD recurrence itself runs token by token. With both chunk sizes 1 this is the token
recurrence of Eqs 83–88, reading ``M_{t−1}`` (Eq 85).

**Interpretations where the paper is silent** (notes §9.5–9.6): the rank-1 ``kkᵀ`` decay acts on the
first layer only (its input is k; [KM]'s reading); η and α are scalars read out of the d-dimensional
M_eta, M_alpha by learned vectors (w, b) (the paper's memories are d → d); σ = SiLU; the ℓ2 loss
carries ½. ``momentum=True`` passes each step through a per-head momentum
``S ← μ S + step, W ← α W + S`` (μ = σ(outer.momentum), learned): [ARX] Table 6 ablates "momentum",
which Eqs 86–93 do not show. ``dgd=False`` drops the ``−η' W k kᵀ`` term (plain GD, Table 6 "w/o
DGD"), ``retention=False`` fixes α = 1 ("w/o weight decay"), ``adaptive`` lists the memories that
learn in context (the others stay at their meta-learned initial state: "w/o inner-proj k/v").
Outer gradients flow through all writes (second order).

Shapes: ``x, q: [T, d]`` → ``o: [T, d]``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from miras_jax.core.blocks import from_blocks, to_blocks
from miras_jax.core.memory import ACTIVATIONS

MEMORIES = ("k", "v", "eta", "alpha", "memory")


class SelfModState(NamedTuple):
  """``weights``: each memory's current ``(W_2, W_1)``; ``base``: its state at its last chunk
  boundary (reads and gradients); ``momentum``: each memory's S (``None`` without momentum);
  ``position``: tokens seen (int32)."""

  weights: dict
  base: dict
  momentum: dict | None
  position: jax.Array


class SelfModOuter(NamedTuple):
  """Outer-level parameters: gate readouts ``eta_w, alpha_w: [d]``, ``eta_b, alpha_b: []`` and the
  momentum logit ``momentum: []`` (μ = σ(momentum))."""

  eta_w: jax.Array
  eta_b: jax.Array
  alpha_w: jax.Array
  alpha_b: jax.Array
  momentum: jax.Array


def _normalize(x, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


@dataclasses.dataclass(frozen=True)
class SelfModTitans:
  """The self-modifying Titans rule; see the module docstring."""

  chunk_size: int = 1  # C for M_k, M_v, M_eta, M_alpha
  memory_chunk_size: int = 1  # C for M_memory
  max_lr: float = 0.1  # η = max_lr · σ(·)
  dgd: bool = True  # the DGD rank-1 decay (False: plain GD)
  retention: bool = True  # the α gate (False: α = 1)
  momentum: bool = True  # inner momentum over the steps
  adaptive: tuple[str, ...] = MEMORIES  # memories that learn in context
  activation: str = "silu"  # σ inside every memory

  def __post_init__(self):
    for name in ("chunk_size", "memory_chunk_size"):
      c = getattr(self, name)
      if not isinstance(c, int) or c < 1:
        raise ValueError(f"{name} must be a positive int; got {c!r}")
    small, big = sorted((self.chunk_size, self.memory_chunk_size))
    if big % small:
      raise ValueError(
        f"chunk_size {self.chunk_size} and memory_chunk_size {self.memory_chunk_size}: one must "
        "divide the other"
      )
    unknown = set(self.adaptive) - set(MEMORIES)
    if unknown:
      raise ValueError(f"adaptive: unknown memories {sorted(unknown)}; known {MEMORIES}")
    if self.max_lr <= 0:
      raise ValueError(f"max_lr must be > 0; got {self.max_lr}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")

  # ---- memories ----------------------------------------------------------------------------------
  def apply(self, w, z):
    """``M(z) = z + W_1 σ(W_2 z)`` for ``z: [..., d]``, ``w = (W_2, W_1)``."""
    w2, w1 = w
    return z + ACTIVATIONS[self.activation](z @ w2.T) @ w1.T

  def _inner_grad(self, w, k, target):
    return jax.grad(lambda w: 0.5 * jnp.sum(jnp.square(self.apply(w, k) - target)))(w)

  def init_state(self, weights: dict) -> SelfModState:
    """State at t = 0 from the meta-learned ``{name: (W_2 [m, d], W_1 [d, m])}``."""
    if set(weights) != set(MEMORIES):
      raise ValueError(f"weights must have the memories {MEMORIES}; got {sorted(weights)}")
    weights = {n: tuple(jnp.asarray(a) for a in weights[n]) for n in MEMORIES}
    d = weights["k"][0].shape[1]
    for n, (w2, w1) in weights.items():
      if w2.ndim != 2 or w2.shape[1] != d or w1.shape != (d, w2.shape[0]):
        raise ValueError(
          f"weights[{n!r}] must be (W_2 [m, {d}], W_1 [{d}, m]); got {w2.shape}, {w1.shape}"
        )
    momentum = jax.tree.map(jnp.zeros_like, weights) if self.momentum else None
    return SelfModState(weights, weights, momentum, jnp.zeros((), jnp.int32))

  # ---- shared per-token pieces ------------------------------------------------------------------
  def _reads(self, base: dict, outer: SelfModOuter, x, q):
    """Everything a token computes from the chunk-start states (vectorised over ``x, q: [c, d]``)."""
    k = _normalize(self.apply(base["k"], x))
    v = self.apply(base["v"], x)
    eta = self.max_lr * jax.nn.sigmoid(self.apply(base["eta"], x) @ outer.eta_w + outer.eta_b)
    if self.retention:
      alpha = jax.nn.sigmoid(self.apply(base["alpha"], x) @ outer.alpha_w + outer.alpha_b)
    else:
      alpha = jnp.ones_like(eta)
    out = self.apply(base["memory"], _normalize(q))
    grads = {}
    for n in self.adaptive:
      target = self.apply(base[n], v)  # v̂_□ = M_□(v)
      grads[n] = jax.vmap(self._inner_grad, in_axes=(None, 0, 0))(base[n], k, target)
    return out, (k, eta, alpha, grads)

  def _write(self, weights, momentum, mu, k, eta, alpha, grads, real):
    """One token's DGD write of every adaptive memory (no-op where ``real`` is False)."""
    lr_k = eta / (1.0 + eta * jnp.dot(k, k))
    new_w, new_s = dict(weights), None if momentum is None else dict(momentum)
    for n in self.adaptive:
      w2, w1 = weights[n]
      g2, g1 = grads[n]
      if self.dgd:
        s2 = -lr_k * (g2 + jnp.outer(w2 @ k, k))
      else:
        s2 = -eta * g2
      step = (s2, -eta * g1)
      if momentum is not None:
        step = jax.tree.map(lambda s, u: mu * s + u, momentum[n], step)
        new_s[n] = jax.tree.map(lambda a, b: jnp.where(real, a, b), step, momentum[n])
      cand = jax.tree.map(lambda w, u: alpha * w + u, weights[n], step)
      new_w[n] = jax.tree.map(lambda a, b: jnp.where(real, a, b), cand, weights[n])
    return new_w, new_s

  def _rebase(self, weights, base, end, real):
    """At a chunk end, the memories of that chunk group take their current state as the base."""
    hit_other = jnp.logical_and(real, end % self.chunk_size == 0)
    hit_memory = jnp.logical_and(real, end % self.memory_chunk_size == 0)
    return {
      n: jax.tree.map(
        lambda w, b, h=(hit_memory if n == "memory" else hit_other): jnp.where(h, w, b),
        weights[n],
        base[n],
      )
      for n in MEMORIES
    }

  def check(self, state, x, q, outer):
    if not isinstance(state, SelfModState):
      raise ValueError(
        f"state must be a SelfModState (from init_state); got {type(state).__name__}"
      )
    d = state.weights["k"][0].shape[1]
    for name, a in (("x", x), ("q", q)):
      if not hasattr(a, "ndim") or a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"{name} must have shape [T, d={d}]; got {getattr(a, 'shape', a)}")
    if q.shape[0] != x.shape[0]:
      raise ValueError(f"q must have T={x.shape[0]} rows like x; got {q.shape}")
    if tuple(outer.eta_w.shape) != (d,) or tuple(outer.alpha_w.shape) != (d,):
      raise ValueError(f"outer.eta_w and outer.alpha_w must have shape [{d}]")


def selfmod_apply(rule: SelfModTitans, state: SelfModState, x, q, outer, *, aligned=False):
  """Chunked self-modifying Titans: blocks of ``min(chunk sizes)`` tokens; reads and gradients of a
  block in parallel at the chunk-start states, then the DGD recurrence token by token.

  Args:
    rule: the ``SelfModTitans`` configuration; state: from ``init_state`` or a previous call.
    x: ``[T, d]`` the (convolved) input; q: ``[T, d]`` the non-adaptive query projection.
    outer: ``SelfModOuter``; aligned: the caller promises the position is a chunk multiple.

  Returns:
    ``(o [T, d], state)``; equals ``selfmod_reference`` up to float round-off.
  """
  rule.check(state, x, q, outer)
  mu = jax.nn.sigmoid(outer.momentum)
  c = min(rule.chunk_size, rule.memory_chunk_size)
  (xb, qb), mask, ends, phase = to_blocks((x, q), state.position, c, aligned=aligned)

  def block(carry, inp):
    weights, base, momentum = carry
    xc, qc, mc, end = inp
    out, (k, eta, alpha, grads) = rule._reads(base, outer, xc, qc)

    def token(carry, tok):
      w, s = carry
      kt, et, at, gt, rt = tok
      return rule._write(w, s, mu, kt, et, at, gt, rt > 0), None

    (weights, momentum), _ = jax.lax.scan(token, (weights, momentum), (k, eta, alpha, grads, mc))
    base = rule._rebase(weights, base, end, mc[-1] > 0)
    return (weights, base, momentum), out

  carry = (state.weights, state.base, state.momentum)
  (weights, base, momentum), outs = jax.lax.scan(block, carry, (xb, qb, mask, ends))
  t = x.shape[0]
  return from_blocks(outs, phase, t), SelfModState(weights, base, momentum, state.position + t)


def selfmod_reference(rule: SelfModTitans, state: SelfModState, x, q, outer):
  """Token-serial ground truth of ``selfmod_apply``: one ``lax.scan`` step per token."""
  rule.check(state, x, q, outer)
  mu = jax.nn.sigmoid(outer.momentum)

  def token(carry, inp):
    weights, base, momentum, pos = carry
    xt, qt = inp
    out, (k, eta, alpha, grads) = rule._reads(base, outer, xt[None], qt[None])
    one = jax.tree.map(lambda a: a[0], (k, eta, alpha, grads))
    weights, momentum = rule._write(weights, momentum, mu, *one, jnp.asarray(True))
    base = rule._rebase(weights, base, pos + 1, jnp.asarray(True))
    return (weights, base, momentum, pos + 1), out[0]

  carry = (state.weights, state.base, state.momentum, state.position)
  (weights, base, momentum, pos), outs = jax.lax.scan(token, carry, (x, q))
  return outs, SelfModState(weights, base, momentum, pos)
