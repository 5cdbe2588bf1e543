"""Retention gates: the third MIRAS choice (how the memory keeps or forgets its past).

Every retention gate here is a mirror-descent write. The learning algorithm hands it a *step* Δ_t
(``−η_t ∇ℓ`` for GD, the surprise ``S_t`` for momentum); the gate combines it with the previous
state:

=================== ====================================================== =========================
gate                write                                                  reference
=================== ====================================================== =========================
``NoRetention``     W_t = W_{t−1} + Δ_t                                    DeltaNet, TTT
``Decay``           W_t = α_t ⊙ W_{t−1} + Δ_t (scalar, key or value axes)  ℓ2 local + global, Eq 8–9
``LqNormalization`` A_t = α_t A_{t−1} + Δ_t;  W_t = A_t / ‖A_t‖_q^{q−2}      Moneta, Eq 24
``KLSoftmax``       W_t = c · softmax_rows(α_t log W_{t−1} + Δ_t)            Memora, Eq 21/27
``ElasticNet``      W_t = S_γ(α_t W_{t−1} + Δ_t)  (or FTRL: A_t as above,    Eq 22–23
                    W_t = S_γ(A_t)); S_γ soft-thresholding or its smooth form
``BregmanSigmoid``  Z_t = Z_{t−1} + Δ_t, W_t = σ(Z_t) (Z = logit W)       §5.2, sigmoid mirror map
=================== ====================================================== =========================

α_t is ``gates.retention`` (``[T]`` scalar per token, or ``[T, d_k]`` on the key axis: ``W diag(α)``)
and ``gates.retention_value`` (``[T, d_v]``, rows: ``diag(β) W``). Channel-wise retention needs a
linear memory; a scalar acts on every weight of an MLP. Norms and softmaxes act on each weight
matrix separately (softmax over each row, i.e. over the input axis).

Each gate keeps ``accum`` (the dual variable A) in the state when its weights are a function of it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from miras_jax.core.gates import Gates


def scale_by_retention(tree, g: Gates, *, required: bool = True):
  """α ⊙ tree: scalar α scales every leaf; key-channel α scales columns, value-channel β rows.

  ``g`` holds the gates of one token (``retention: []`` or ``[d_k]``, ``retention_value: [d_v]``).
  With ``required=False`` and no gate given, returns ``tree`` unchanged.
  """
  alpha, beta = g.retention, g.retention_value
  if alpha is None and beta is None:
    if required:
      raise ValueError("gates.retention is required")
    return tree

  def scale(w):
    if alpha is not None:
      w = w * alpha if alpha.ndim == 0 else w * alpha[None, :]
    if beta is not None:
      w = w * beta[:, None]
    return w

  return jax.tree.map(scale, tree)


class _LinearRetention:
  """The retention gates linear in the state: W_t = decay(W_{t−1}) + Δ_t, with ``decay`` the
  diagonal map of ``scale_by_retention`` (or the identity)."""

  optional_gates = ()
  has_accum = False
  linear_in_state = True
  minibatch = "linear"
  domain = "real"

  def init(self, weights):
    return weights, None

  def to_domain(self, raw):
    return raw

  def write(self, weights, accum, step, g):
    return jax.tree.map(jnp.add, self.decay(weights, g), step), None


@dataclasses.dataclass(frozen=True)
class NoRetention(_LinearRetention):
  """W_t = W_{t−1} + Δ_t."""

  name = "none"
  gates = ()
  channels = "any"

  def decay(self, weights, g):
    return weights


@dataclasses.dataclass(frozen=True)
class Decay(_LinearRetention):
  """W_t = α_t ⊙ W_{t−1} + Δ_t: multiplicative decay (the ℓ2 local + global retention).

  ``channels``: ``"scalar"`` needs ``retention: [T]``; ``"key"`` needs ``retention: [T, d_k]``;
  ``"key_value"`` needs ``retention: [T, d_k]`` and ``retention_value: [T, d_v]`` (DFW's
  ``(β αᵀ) ⊙ W``); ``"any"`` accepts a scalar or key-channel ``retention`` (Titans, Yaad).
  """

  channels: str = "scalar"  # scalar | key | key_value | any

  def __post_init__(self):
    if self.channels not in ("scalar", "key", "key_value", "any"):
      raise ValueError(f"channels must be scalar, key, key_value or any; got {self.channels!r}")

  @property
  def name(self) -> str:
    return f"decay({self.channels})"

  @property
  def gates(self):
    return ("retention", "retention_value") if self.channels == "key_value" else ("retention",)

  def decay(self, weights, g):
    return scale_by_retention(weights, g)


def lq_scale(a: jax.Array, q: float, eps: float = 0.0) -> jax.Array:
  """1 / max(‖A‖_q, ε)^{q−2} over all entries of one weight matrix: W = A · lq_scale(A, q, ε).

  ε = 0 is MIRAS Eq 24 exactly (1 when A = 0). For q > 2 the map scales W like ‖W‖_q =
  ‖A‖_q^{3−q}: an accumulator that a near-zero retention gate has emptied gives huge weights and,
  below ‖A‖_4 ≈ 1e-9 in float32, overflowing outer gradients. ε > 0 floors the norm there (W =
  A / ε^{q−2} while ‖A‖_q < ε) and is the identity elsewhere.
  """
  if q == 2.0:
    return jnp.ones((), a.dtype)
  norm_q = jnp.sum(jnp.abs(a) ** q)
  if eps > 0:  # the floor is taken on Σ|a|^q, so the power below never sees a tiny number
    return 1.0 / jnp.maximum(norm_q, eps**q) ** ((q - 2.0) / q)
  safe = jnp.where(norm_q > 0, norm_q, 1.0)
  return jnp.where(norm_q > 0, 1.0 / safe ** ((q - 2.0) / q), 1.0)


@dataclasses.dataclass(frozen=True)
class LqNormalization:
  """Moneta's ℓq retention (MIRAS Eq 24): A_t = α_t A_{t−1} + Δ_t, W_t = A_t / ‖A_t‖_q^{q−2}.

  The state stores A (``accum``) and the weights W derived from it; ``init(A_0)`` gives
  ``W_0 = A_0 / ‖A_0‖_q^{q−2}``. q = 2 is the identity map (plain decayed GD). ``eps`` > 0 floors
  the norm, W_t = A_t / max(‖A_t‖_q, ε)^{q−2} (not in the paper; see ``lq_scale``).
  """

  q: float = 4.0  # q of the ℓq norm (> 1)
  eps: float = 0.0  # floor ε of ‖A‖_q in the normaliser (0: MIRAS Eq 24 exactly)

  def __post_init__(self):
    if not self.q > 1.0:
      raise ValueError(f"q must be > 1 for the lq retention; got {self.q}")
    if not self.eps >= 0.0:
      raise ValueError(f"eps must be >= 0 for the lq retention; got {self.eps}")

  @property
  def name(self) -> str:
    return f"lq(q={self.q:g}{f', eps={self.eps:g}' if self.eps else ''})"

  gates = ("retention",)
  optional_gates = ()
  channels = "any"
  has_accum = True
  linear_in_state = False
  minibatch = "normalised"  # reads scale A by the last boundary's 1/‖A‖^{q−2} (``scale``)
  domain = "real"

  def to_domain(self, raw):
    return raw

  def scale(self, accum: jax.Array) -> jax.Array:
    """The normaliser of one weight matrix, ``1 / max(‖A‖_q, ε)^{q−2}``."""
    return lq_scale(accum, self.q, self.eps)

  def init(self, accum):
    return jax.tree.map(lambda a: a * self.scale(a), accum), accum

  def write(self, weights, accum, step, g):
    accum = jax.tree.map(jnp.add, scale_by_retention(accum, g), step)
    return self.init(accum)


@dataclasses.dataclass(frozen=True)
class KLSoftmax:
  """Memora's KL retention (MIRAS Eq 21/27): W_t = c · softmax(α_t log W_{t−1} + Δ_t) per row.

  Keeps every row of every weight matrix on the simplex scaled by c; needs positive weights.
  ``log W`` is taken of ``max(W, eps)``. The default 1e-30 only keeps an underflowed weight from
  giving 0 · log 0 = NaN. A larger floor bounds the map's derivative α / W, which is exact but
  unbounded as W → 0 when α < 1 (W^α has an infinite slope at 0): measured in a Memora training
  run, retention gates α ≈ 1e-10 met weights ≈ 1e-22 and the outer gradients overflowed.
  """

  c: float = 1.0  # mass of each row (the simplex scale c)
  eps: float = 1e-30  # floor of W before log W

  def __post_init__(self):
    if not self.c > 0:
      raise ValueError(f"c must be > 0; got {self.c}")
    if not self.eps > 0:
      raise ValueError(
        f"eps must be > 0 for the KL retention (it floors W before log W); got {self.eps}"
      )

  name = "kl_softmax"
  gates = ("retention",)
  optional_gates = ()
  channels = "any"
  has_accum = False
  linear_in_state = False
  minibatch = "lag"  # MIRAS Eq 30–32: the chunk's first token exact, the rest a linear decay
  domain = "simplex"

  def init(self, weights):
    return weights, None

  def to_domain(self, raw):
    """Rows of mass c: ``c · softmax`` over each row of the raw logits."""
    return self.c * jax.nn.softmax(raw, axis=-1)

  def write(self, weights, accum, step, g):
    log_w = jax.tree.map(lambda w: jnp.log(jnp.maximum(w, self.eps)), weights)
    logits = jax.tree.map(jnp.add, scale_by_retention(log_w, g), step)
    return jax.tree.map(lambda z: self.c * jax.nn.softmax(z, axis=-1), logits), None


def soft_threshold(z: jax.Array, gamma: float, smooth: bool = False) -> jax.Array:
  """S_γ(z) = sign(z) max(0, |z| − γ) (MIRAS Eq 22); smooth: |z| · arctan(z/γ) / (π/2)."""
  if smooth:
    return jnp.abs(z) * jnp.arctan(z / gamma) / (math.pi / 2)
  return jnp.sign(z) * jnp.maximum(jnp.abs(z) - gamma, 0.0)


@dataclasses.dataclass(frozen=True)
class ElasticNet:
  """Elastic-net retention (MIRAS Eq 22–23): soft forgetting by α_t, hard forgetting by S_γ.

  ``ftrl=False`` (Eq 22): W_t = S_γ(α_t W_{t−1} + Δ_t), where in the paper's terms α_t = λ = β/(β+η)
  and Δ_t = −ζ∇ℓ with ζ = ηλ. ``ftrl=True`` (Eq 23): A_t = α_t A_{t−1} + Δ_t, W_t = S_γ(A_t), with γ
  = η/α of the paper. ``gates.retention`` is optional (1 when absent).
  """

  gamma: float = 0.01  # threshold γ > 0 of S_γ
  smooth: bool = False  # smooth S_γ ≈ |z| arctan(z/γ)/(π/2)
  ftrl: bool = False  # Eq 23 (accumulate A, threshold it) instead of Eq 22

  def __post_init__(self):
    if not self.gamma > 0:
      raise ValueError(f"gamma must be > 0; got {self.gamma}")

  @property
  def name(self) -> str:
    return f"elastic_net(gamma={self.gamma:g}{', smooth' if self.smooth else ''})"

  gates = ()
  optional_gates = ("retention",)  # α_t = 1 when absent
  channels = "any"
  linear_in_state = False
  minibatch = None
  domain = "real"

  @property
  def has_accum(self) -> bool:
    return self.ftrl

  def to_domain(self, raw):
    return raw

  def _threshold(self, tree):
    return jax.tree.map(lambda z: soft_threshold(z, self.gamma, self.smooth), tree)

  def init(self, weights):
    if self.ftrl:
      return self._threshold(weights), weights
    return weights, None

  def write(self, weights, accum, step, g):
    base = accum if self.ftrl else weights
    z = jax.tree.map(jnp.add, scale_by_retention(base, g, required=False), step)
    return self._threshold(z), (z if self.ftrl else None)


@dataclasses.dataclass(frozen=True)
class BregmanSigmoid:
  """Bregman retention with the logit mirror map (MIRAS §5.2): W_t = σ(logit(W_{t−1}) + Δ_t).

  Keeps every weight in (0, 1); needs initial weights in (0, 1). The state keeps the logits
  Z_t = logit(W_t) in ``accum`` (Z_t = Z_{t−1} + Δ_t, W_t = σ(Z_t)), so that a weight that rounds to
  0 or 1 in float32 can still move back: recomputing logit(W) from W would give ±∞ there.
  """

  name = "bregman_sigmoid"
  gates = ()
  optional_gates = ()
  channels = "any"
  has_accum = True
  linear_in_state = False
  minibatch = None
  domain = "unit_interval"

  def to_domain(self, raw):
    return jax.nn.sigmoid(raw)

  def init(self, weights):
    return weights, jax.tree.map(lambda w: jnp.log(w) - jnp.log1p(-w), weights)

  def write(self, weights, accum, step, g):
    logits = jax.tree.map(jnp.add, accum, step)
    return jax.tree.map(jax.nn.sigmoid, logits), logits
