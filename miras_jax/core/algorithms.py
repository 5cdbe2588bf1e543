"""Memory learning algorithms: the fourth MIRAS choice (how the inner loss is optimised).

An algorithm's ``step(grad, momentum, g, k)`` (``g``: the ``Gates`` of one token) turns the gradient ∇_t of the attentional bias into the step Δ_t that the retention
gate applies (``W_t = ret(W_{t−1}) + Δ_t``, see ``retention.py``):

- ``GD``: Δ_t = −η_t ∇_t (MIRAS Eq 5).
- ``Momentum``: S_t = μ_t S_{t−1} − η_t ∇_t, Δ_t = S_t (Titans Eq 9–10, 13–14; μ is
  ``gates.momentum``, η is ``gates.lr``); the state carries S.
- ``ImplicitGD``: W_t = argmin_W ℓ(W) + ‖W − W_{t−1}‖²/(2η_t), solved in closed form for a linear
  memory and the ℓ2 bias: Δ_t = −η_t/(1 + η_t kᵀk) ∇_t (Longhorn, MIRAS Table 1).
- ``MultiStepGD(n)``: n successive GD steps per token, each with its own (k_{t,i}, v_{t,i}, η_{t,i})
  and each gradient taken at the state left by the previous step (DeltaProduct); inputs carry an
  extra axis ``k: [T, n, d_k]``, ``v: [T, n, d_v]``, ``lr: [T, n]``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _scaled(grad, scale):
  return jax.tree.map(lambda x: -scale * x, grad)


@dataclasses.dataclass(frozen=True)
class GD:
  """Δ_t = −η_t ∇_t."""

  name = "gd"
  gates = ("lr",)
  has_momentum = False
  steps = 1

  def step(self, grad, momentum, g, k):
    return _scaled(grad, g.lr), None


@dataclasses.dataclass(frozen=True)
class Momentum:
  """S_t = μ_t S_{t−1} − η_t ∇_t; Δ_t = S_t (Titans Eq 10/14)."""

  name = "momentum"
  gates = ("lr", "momentum")
  has_momentum = True
  steps = 1

  def step(self, grad, momentum, g, k):
    new = jax.tree.map(lambda s, x: g.momentum * s - g.lr * x, momentum, grad)
    return new, new


@dataclasses.dataclass(frozen=True)
class ImplicitGD:
  """Δ_t = −η_t/(1 + η_t kᵀk) ∇ℓ2_t: the exact implicit (proximal) step for a linear ℓ2 memory."""

  name = "implicit_gd"
  gates = ("lr",)
  has_momentum = False
  steps = 1

  def step(self, grad, momentum, g, k):
    return _scaled(grad, g.lr / (1.0 + g.lr * jnp.vdot(k, k))), None


@dataclasses.dataclass(frozen=True)
class MultiStepGD:
  """n GD steps per token on (k_{t,i}, v_{t,i}) with rates η_{t,i} (DeltaProduct)."""

  steps: int = 2  # n, the number of GD steps per token

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"steps must be >= 1; got {self.steps}")

  @property
  def name(self) -> str:
    return f"multi_step_gd(n={self.steps})"

  gates = ("lr",)
  has_momentum = False


Algorithm = GD | Momentum | ImplicitGD | MultiStepGD
