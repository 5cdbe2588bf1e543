"""M3, Multi-scale Momentum Muon (Nested Learning, arXiv 2512.24695, §7.2 Eq 75 and Algorithm 1,
as reconstructed in ../shared/papers/nested-learning-notes.md §4), as an optax transformation.

Per parameter G (state: count, M1, M2, V, S, O2; all zeros at the start):

    M1 ← M1 + β1 g                  fast momentum: a running SUM, no decay       (Alg 1 line 7)
    V  ← V  + β2 g ⊙ g              second moment: a running sum of squares       (line 8)
    S  ← S + g                      the current chunk's gradients
    u  = (NS_T(M1) + α O2) / (√V + ε)                                             (lines 9–10)
    every f-th step (count % f = 0): M2 ← M2 + β3 S;  S ← 0;  O2 ← NS_T(M2)      (lines 3–4)

``scale_by_m3`` returns ``u``; ``m3`` scales it by −learning_rate. O2 is 0 for the first f steps and
the slow term enters from the step after each chunk ends (exactly f gradients per slow update: the
paper's index range (k−1)f..kf has f + 1 terms, an off-by-one). Decisions where the paper is silent
(notes §9.1–9.2): the denominator is √V + ε; Algorithm 1's sums, not EMAs, and no bias correction
(the step shrinks like 1/√t for a constant gradient); Newton–Schulz on parameters of rank ≥ 2
(reshaped to [shape[0], −1]); a parameter of rank < 2 is taken as a 1 × n matrix, whose polar
factor is x / ‖x‖ (a reference implementation uses the raw momentum there instead, whose step
grows like √t under a constant gradient); defaults
β = (0.9, 0.999, 0.9), α = 1, ε = 1e-8, f = 100, cubic NS with T = 10 (the paper's Eq 44 step;
``ns="quintic"`` uses Muon's (3.4445, −4.7750, 2.0315) with T = 5). ``f = None`` never refreshes
the slow momentum (f = ∞).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

_QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: jax.Array, steps: int = 10, kind: str = "cubic", eps: float = 1e-7):
  """Approximate polar factor of a matrix ``g: [m, n]`` (the orthogonal U Vᵀ of g = U Σ Vᵀ).

  ``X_0 = g / (‖g‖_F + eps)``; cubic: ``X ← ½ X (3I − XᵀX)`` (converges for singular values of X_0 in
  (0, √3)); quintic (Muon): ``A = X Xᵀ, X ← aX + (bA + cA²) X`` on the wide orientation. NS(0) = 0.
  """
  if g.ndim != 2:
    raise ValueError(f"newton_schulz needs a matrix; got shape {g.shape}")
  if kind not in ("cubic", "quintic"):
    raise ValueError(f"kind must be 'cubic' or 'quintic'; got {kind!r}")
  tall = g.shape[0] > g.shape[1]
  x = g.T if tall else g  # [small, large]
  x = x / (jnp.linalg.norm(x) + eps)

  def cubic(x, _):
    return 0.5 * (3.0 * x - (x @ x.T) @ x), None

  def quintic(x, _):
    a, b, c = _QUINTIC
    s = x @ x.T
    return a * x + (b * s + c * s @ s) @ x, None

  x, _ = jax.lax.scan(cubic if kind == "cubic" else quintic, x, None, length=steps)
  return x.T if tall else x


class M3State(NamedTuple):
  count: jax.Array  # steps taken (int32)
  m1: optax.Updates  # fast momentum Σ β1 g
  m2: optax.Updates  # slow momentum Σ β3 (chunk sums)
  v: optax.Updates  # Σ β2 g²
  s: optax.Updates  # gradients of the current chunk
  o2: optax.Updates  # NS(m2), frozen for a chunk


def _orthogonalize(x, steps, kind):
  rows = x.shape[0] if x.ndim >= 2 else 1
  return newton_schulz(x.reshape(rows, -1), steps, kind).reshape(x.shape)


def scale_by_m3(
  b1: float = 0.9,
  b2: float = 0.999,
  b3: float = 0.9,
  alpha: float = 1.0,
  eps: float = 1e-8,
  frequency: int | None = 100,
  ns_steps: int = 10,
  ns: str = "cubic",
) -> optax.GradientTransformation:
  """The M3 direction ``(NS(M1) + α NS(M2)) / (√V + ε)`` (module doc); no learning rate."""
  if frequency is not None and frequency < 1:
    raise ValueError(f"frequency must be >= 1 or None (never); got {frequency}")
  if ns not in ("cubic", "quintic"):
    raise ValueError(f"ns must be 'cubic' or 'quintic'; got {ns!r}")
  for name, value in dict(b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps).items():
    if isinstance(value, int | float) and value < 0:  # (injected hyperparameters are arrays)
      raise ValueError(f"{name} must be >= 0; got {value}")
  orth = lambda tree: jax.tree.map(lambda x: _orthogonalize(x, ns_steps, ns), tree)  # noqa: E731

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    return M3State(jnp.zeros((), jnp.int32), zeros(), zeros(), zeros(), zeros(), zeros())

  def update(updates, state: M3State, params=None):
    del params
    count = state.count + 1
    m1 = jax.tree.map(lambda m, g: m + b1 * g, state.m1, updates)
    v = jax.tree.map(lambda m, g: m + b2 * g * g, state.v, updates)
    s = jax.tree.map(jnp.add, state.s, updates)
    direction = jax.tree.map(
      lambda o1, o2, vv: (o1 + alpha * o2) / (jnp.sqrt(vv) + eps), orth(m1), state.o2, v
    )
    m2, o2 = state.m2, state.o2
    if frequency is not None:
      boundary = count % frequency == 0

      def refresh(_):
        new_m2 = jax.tree.map(lambda m, x: m + b3 * x, state.m2, s)
        return new_m2, jax.tree.map(jnp.zeros_like, s), orth(new_m2)

      m2, s, o2 = jax.lax.cond(boundary, refresh, lambda _: (state.m2, s, state.o2), None)
    return direction, M3State(count, m1, m2, v, s, o2)

  return optax.GradientTransformation(init, update)


def m3(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  b3: float = 0.9,
  alpha: float = 1.0,
  eps: float = 1e-8,
  frequency: int | None = 100,
  ns_steps: int = 10,
  ns: str = "cubic",
) -> optax.GradientTransformation:
  """M3 with a learning rate (or schedule): ``Θ ← Θ − η (NS(M1) + α NS(M2)) / (√V + ε)``;
  the other arguments as ``scale_by_m3``. With ``optax.inject_hyperparams`` pass
  ``static_args=("frequency", "ns_steps", "ns")`` (they shape the computation)."""
  direction = scale_by_m3(b1, b2, b3, alpha, eps, frequency, ns_steps, ns)
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
