"""Attentional biases: the second MIRAS choice (the inner loss ℓ the memory minimises).

Every bias works on the error ``e = M(k) − v`` of one token (CONVENTIONS §3) and is given in one or
both of two forms:

- ``loss(pred, v, delta)``: a scalar; the weight gradient is ``jax.grad`` of it through any memory;
- ``output_grad(pred, v, delta)``: the closed-form ``∂ℓ/∂M(k)`` (a gradient *rule*); the weight
  gradient is its vector-Jacobian product through the memory, which for a linear memory is the
  outer product ``output_grad · kᵀ``, i.e. exactly the paper's closed forms (MIRAS Eq 11, 14–17, 25).

Biases defined only by their update direction (Yaad's Eq 16 mixture) have no loss. ``delta`` is the
per-token Huber threshold ``gates.delta[t]`` (only Huber biases read it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

_TINY = 1e-12


def _safe_norm(e: jax.Array) -> jax.Array:
  """‖e‖₂ with a finite gradient at ``e = 0`` (the double-where trick)."""
  sq = jnp.sum(jnp.square(e))
  safe = jnp.where(sq > _TINY, sq, 1.0)
  return jnp.where(sq > _TINY, jnp.sqrt(safe), 0.0)


def _unit(e: jax.Array) -> jax.Array:
  """``e / ‖e‖₂``, and 0 at ``e = 0``."""
  n = _safe_norm(e)
  return e / jnp.where(n > 0, n, 1.0)


@dataclasses.dataclass(frozen=True)
class DotProduct:
  """ℓ = −⟨M(k), v⟩, gradient −v kᵀ for a linear memory (Hebbian rules, MIRAS Eq 8)."""

  name = "dot_product"
  needs_delta = False
  channel_delta = False
  exact_write = "hebbian"
  error_power = 0.0

  def loss(self, pred, v, delta=None):
    return -jnp.vdot(pred, v)

  def output_grad(self, pred, v, delta=None):
    return -v


@dataclasses.dataclass(frozen=True)
class L2:
  """ℓ = ½‖M(k) − v‖², gradient (Wk − v) kᵀ for a linear memory (delta rule, Titans Eq 12)."""

  name = "l2"
  needs_delta = False
  channel_delta = False
  exact_write = "delta"
  error_power = 1.0

  def loss(self, pred, v, delta=None):
    return 0.5 * jnp.sum(jnp.square(pred - v))

  def output_grad(self, pred, v, delta=None):
    return pred - v


@dataclasses.dataclass(frozen=True)
class Lp:
  """ℓ = ‖M(k) − v‖_p^p = Σ|e_i|^p, p ≥ 1 (MIRAS Eq 10).

  Gradient (Eq 11/25): ``p (sign(e) ⊙ |e|^{p−1}) kᵀ`` for a linear memory. With ``smooth=True`` the
  rule uses Remark 5's ``sign(x) ≈ tanh(a·x)`` and ``|x| ≈ √(x² + ε)``, and the loss uses the smooth
  absolute value (so the smooth rule is not the exact gradient of the smooth loss).
  """

  p: float = 3.0  # exponent p >= 1
  smooth: bool = False  # Remark 5 smooth sign / abs
  sharpness: float = 10.0  # a in tanh(a·x)
  eps: float = 1e-6  # ε in √(x² + ε)

  def __post_init__(self):
    if not self.p >= 1.0:
      raise ValueError(f"p must be >= 1 for the lp attentional bias; got {self.p}")

  @property
  def name(self) -> str:
    return f"lp(p={self.p:g}{', smooth' if self.smooth else ''})"

  needs_delta = False
  channel_delta = False
  exact_write = None

  @property
  def error_power(self) -> float:
    return self.p - 1.0

  def _abs(self, e):
    return jnp.sqrt(jnp.square(e) + self.eps) if self.smooth else jnp.abs(e)

  def loss(self, pred, v, delta=None):
    return jnp.sum(self._abs(pred - v) ** self.p)

  def output_grad(self, pred, v, delta=None):
    e = pred - v
    sign = jnp.tanh(self.sharpness * e) if self.smooth else jnp.sign(e)
    if self.p == 1.0:
      return sign
    return self.p * sign * self._abs(e) ** (self.p - 1.0)


def L1(smooth: bool = False) -> Lp:
  """ℓ = ‖M(k) − v‖₁, gradient sign(e) kᵀ (MIRAS Eq 12): ``Lp(p=1)``."""
  return Lp(p=1.0, smooth=smooth)


HUBER_VARIANTS = ("coord", "norm", "mixture")


@dataclasses.dataclass(frozen=True)
class Huber:
  """Huber attentional bias with threshold δ_t = ``gates.delta[t]`` (MIRAS §5.1).

  - ``coord`` (Eq 14): ℓ = Σ_j H(e_j); gradient e_j if |e_j| ≤ δ else δ sign(e_j), per coordinate.
  - ``norm`` (Eq 15): ℓ = H(‖e‖); gradient e if ‖e‖ ≤ δ else δ e/‖e‖.
  - ``mixture`` (Eq 16, Yaad): gradient e (∇ℓ2) if ‖e‖ ≤ δ else δ sign(e) (δ ∇ℓ1). Defined by its
    update direction only, so it has no loss.

  A channel-wise threshold δ ∈ R^{d_v} (``gates.delta: [T, d_v]``, MIRAS §5.4) acts per output
  channel (``coord`` and ``mixture``): ``coord`` compares |e_j| with δ_j; ``mixture`` switches on
  ‖e ⊘ δ‖ ≤ 1 and takes δ ⊙ sign(e) beyond it, so that equal channels give the scalar rule exactly.

  H(a) = ½a² if |a| ≤ δ else δ(|a| − ½δ).
  """

  variant: str = "mixture"  # coord (Eq 14) | norm (Eq 15) | mixture (Eq 16, Yaad)

  def __post_init__(self):
    if self.variant not in HUBER_VARIANTS:
      raise ValueError(f"variant must be one of {HUBER_VARIANTS}; got {self.variant!r}")

  @property
  def name(self) -> str:
    return f"huber({self.variant})"

  needs_delta = True
  exact_write = None
  error_power = 1.0  # at most: the ℓ1 branch's signal does not grow

  @property
  def channel_delta(self) -> bool:
    return self.variant in ("coord", "mixture")

  @staticmethod
  def _h(a, delta):
    return jnp.where(jnp.abs(a) <= delta, 0.5 * a * a, delta * (jnp.abs(a) - 0.5 * delta))

  @property
  def loss(self) -> Callable | None:
    if self.variant == "coord":
      return lambda pred, v, delta: jnp.sum(self._h(pred - v, delta))
    if self.variant == "norm":
      return lambda pred, v, delta: self._h(_safe_norm(pred - v), delta)
    return None

  def output_grad(self, pred, v, delta):
    e = pred - v
    if self.variant == "coord":
      return jnp.where(jnp.abs(e) <= delta, e, delta * jnp.sign(e))
    if jnp.ndim(delta) == 0:
      small = _safe_norm(e) <= delta
    else:  # channel-wise δ (mixture): the switch compares ‖e ⊘ δ‖ with 1
      small = _safe_norm(e / delta) <= 1.0
    if self.variant == "norm":
      return jnp.where(small, e, delta * _unit(e))
    return jnp.where(small, e, delta * jnp.sign(e))


@dataclasses.dataclass(frozen=True)
class RobustL2:
  """Robust to value shifts of radius Δ (MIRAS Eq 17): ℓ = ½‖e‖² + Δ‖e‖ + ½Δ².

  Gradient ``(e + Δ e/‖e‖) kᵀ`` for a linear memory (0 for the second term at e = 0).
  """

  radius: float = 0.1  # Δ >= 0

  def __post_init__(self):
    if not self.radius >= 0:
      raise ValueError(f"radius must be >= 0; got {self.radius}")

  name = "robust_l2"
  needs_delta = False
  channel_delta = False
  exact_write = None
  error_power = 1.0

  def loss(self, pred, v, delta=None):
    e = pred - v
    return 0.5 * jnp.sum(jnp.square(e)) + self.radius * _safe_norm(e) + 0.5 * self.radius**2

  def output_grad(self, pred, v, delta=None):
    e = pred - v
    return e + self.radius * _unit(e)


@dataclasses.dataclass(frozen=True)
class FromLoss:
  """A user bias given as a loss ``fn(pred, v, delta) -> scalar``; differentiated with ``jax.grad``."""

  fn: Callable
  name: str = "custom_loss"
  needs_delta: bool = False

  channel_delta = False
  exact_write = None
  error_power = None

  @property
  def loss(self):
    return self.fn

  output_grad = None


@dataclasses.dataclass(frozen=True)
class FromOutputGrad:
  """A user bias given as a gradient rule ``fn(pred, v, delta) -> ∂ℓ/∂pred`` (shape of pred)."""

  fn: Callable
  name: str = "custom_rule"
  needs_delta: bool = False

  channel_delta = False
  exact_write = None
  error_power = None

  loss = None

  @property
  def output_grad(self):
    return self.fn


def output_gradient(bias, pred, v, delta=None, *, use_loss: bool = False):
  """∂ℓ/∂M(k) at ``pred``: the bias's closed form, or ``jax.grad`` of its loss (``use_loss``)."""
  if use_loss or bias.output_grad is None:
    if bias.loss is None:
      raise ValueError(f"bias {bias.name} has no loss to differentiate")
    return jax.grad(lambda p: bias.loss(p, v, delta))(pred)
  return bias.output_grad(pred, v, delta)


def weight_grad(memory, bias, weights, k, v, delta=None, *, use_loss: bool = False):
  """∇_W ℓ(M(W, k), v): the gradient of the bias at ``weights`` for one token.

  The output gradient (``output_gradient``: closed form, or ``jax.grad`` of the loss with
  ``use_loss=True``) pulled back through the memory with ``jax.vjp``. Shapes: ``k: [d_k]``,
  ``v: [d_v]``; returns a pytree shaped like ``weights``.
  """
  pred, pullback = jax.vjp(lambda w: memory.apply(w, k), weights)
  (grad,) = pullback(output_gradient(bias, pred, v, delta, use_loss=use_loss))
  return grad
