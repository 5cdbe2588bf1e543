"""Memory learning algorithms: the fourth MIRAS choice (how the inner loss is optimised).

An algorithm's ``step(grad, momentum, g, k, base, inputs)`` (``g``: the ``Gates`` of one token,
``base``: the weights the gradient was taken at, ``inputs``: each weight matrix's input there) turns the gradient ∇_t of the attentional bias into the step
Δ_t that the retention gate applies (``W_t = ret(W_{t−1}) + Δ_t``, see ``retention.py``):

- ``GD``: Δ_t = −η_t ∇_t (MIRAS Eq 5).
- ``Momentum``: S_t = μ_t S_{t−1} − η_t ∇_t, Δ_t = S_t (Titans Eq 9–10, 13–14; μ is
  ``gates.momentum``, η is ``gates.lr``); the state carries S.
- ``ImplicitGD``: W_t = argmin_W ℓ(W) + ‖W − W_{t−1}‖²/(2η_t), solved in closed form for a linear
  memory and the ℓ2 bias: Δ_t = −η_t/(1 + η_t kᵀk) ∇_t (Longhorn, MIRAS Table 1).
- ``DGD``: Delta Gradient Descent (Nested Learning [ARX] Eq 56–57): the step of the proximal problem
  ``argmin_W ½‖W k − u‖² + ‖W − W_{t−1}‖²/(2η_t)`` with target ``u = −∇_y ℓ``, in closed form for
  any ‖k‖ (Sherman–Morrison): ``Δ_t = −η'_t (W_{t−1} k) kᵀ − η'_t ∇_t``, ``η'_t = η_t/(1 + η_t ‖k‖²)``.
  With the decay retention this is Hope's "DGD with weight decay" ([ARX] Eq 88):
  ``W_t = W_{t−1}(α_t I − η'_t k kᵀ) − η'_t ∇_t``; MLP memories take it per matrix with that
  matrix's input. ``DGD(momentum=True)`` passes the surprise −η'∇ through Titans' momentum.
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


def _same_rate(lr, k):
  return lr


@dataclasses.dataclass(frozen=True)
class GD:
  """Δ_t = −η_t ∇_t."""

  name = "gd"
  gates = ("lr",)
  has_momentum = False
  steps = 1
  multi_step = False
  channel_lr = True
  needs_layer_inputs = False
  needs_linear_l2 = False
  exact_form = True
  minibatch = "dual"
  exact_rate = staticmethod(_same_rate)

  def step(self, grad, momentum, g, k, base=None, inputs=None):
    return _scaled(grad, g.lr), None


@dataclasses.dataclass(frozen=True)
class Momentum:
  """S_t = μ_t S_{t−1} − η_t ∇_t; Δ_t = S_t (Titans Eq 10/14)."""

  name = "momentum"
  gates = ("lr", "momentum")
  has_momentum = True
  steps = 1
  multi_step = False
  channel_lr = True
  needs_layer_inputs = False
  needs_linear_l2 = False
  exact_form = False  # (W, S) is linear too, but no exact chunkwise form is written for it
  minibatch = "dual"
  exact_rate = staticmethod(_same_rate)

  def step(self, grad, momentum, g, k, base=None, inputs=None):
    new = jax.tree.map(lambda s, x: g.momentum * s - g.lr * x, momentum, grad)
    return new, new


@dataclasses.dataclass(frozen=True)
class ImplicitGD:
  """Δ_t = −η_t/(1 + η_t kᵀk) ∇ℓ2_t: the exact implicit (proximal) step for a linear ℓ2 memory."""

  name = "implicit_gd"
  gates = ("lr",)
  has_momentum = False
  steps = 1
  multi_step = False
  channel_lr = False
  needs_layer_inputs = False
  needs_linear_l2 = True
  exact_form = True
  minibatch = None

  def step(self, grad, momentum, g, k, base=None, inputs=None):
    return _scaled(grad, g.lr / (1.0 + g.lr * jnp.vdot(k, k))), None

  @staticmethod
  def exact_rate(lr, k):
    """ω_t = η_t / (1 + η_t ‖k_t‖²) for keys ``k: [..., d_k]``."""
    return lr / (1.0 + lr * jnp.sum(k * k, axis=-1))


@dataclasses.dataclass(frozen=True)
class DGD:
  """Delta Gradient Descent: per weight matrix W_ℓ with input x_ℓ (k for the first),
  Δ_ℓ = −η'_ℓ (W_ℓ x_ℓ) x_ℓᵀ − η'_ℓ ∇_ℓ,  η'_ℓ = η_t/(1 + η_t‖x_ℓ‖²).

  Nested Learning [ARX] Eq 57 (the general-‖x‖ form of the notes §3; for ‖k‖ = 1, η' = η/(1 + η)).
  A linear memory has one matrix and this is Eq 88/93. For an MLP memory each matrix takes the DGD
  step of its own proximal problem (notes §2: a layer is a memory from its input x_ℓ to its output
  gradient; [ARX] does not say how Eq 88 applies to a deep memory, notes §9.5), as in
  ``core.selfmod``. ``momentum=True``: the surprise goes through Titans' momentum,
  S_t = μ_t S_{t−1} − η'∇, and Δ = −η'(W x)xᵀ + S_t (the decay part acts on W directly).
  ``step`` takes ``inputs``: the tuple of layer inputs at the gradient's base point.
  """

  momentum: bool = False  # pass the surprise −η'∇ through Titans' momentum

  @property
  def name(self) -> str:
    return "dgd_momentum" if self.momentum else "dgd"

  @property
  def gates(self) -> tuple[str, ...]:
    return ("lr", "momentum") if self.momentum else ("lr",)

  @property
  def has_momentum(self) -> bool:
    return self.momentum

  steps = 1
  multi_step = False
  channel_lr = False
  needs_layer_inputs = True
  needs_linear_l2 = False
  exact_form = False
  minibatch = "reference"  # the rank-1 decay W(αI − η'kkᵀ) has no dual form here
  exact_rate = staticmethod(_same_rate)

  def step(self, grad, momentum, g, k, base=None, inputs=None):
    if base is None or inputs is None:
      raise ValueError("DGD needs the base weights (base=) and their layer inputs (inputs=)")
    leaves, tree = jax.tree.flatten(grad)
    weights = jax.tree.leaves(base)
    rates = [g.lr / (1.0 + g.lr * jnp.vdot(x, x)) for x in inputs]
    decay = [-r * jnp.outer(w @ x, x) for r, w, x in zip(rates, weights, inputs, strict=True)]
    surprise = [-r * gr for r, gr in zip(rates, leaves, strict=True)]
    if not self.momentum:
      return jax.tree.unflatten(tree, [d + s for d, s in zip(decay, surprise, strict=True)]), None
    s_new = [g.momentum * s + u for s, u in zip(jax.tree.leaves(momentum), surprise, strict=True)]
    step = [d + s for d, s in zip(decay, s_new, strict=True)]
    return jax.tree.unflatten(tree, step), jax.tree.unflatten(tree, s_new)


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
  multi_step = True
  channel_lr = False
  needs_layer_inputs = False
  needs_linear_l2 = False
  exact_form = True  # runs as Gated DeltaNet on its T·n sub-steps
  minibatch = None
  exact_rate = staticmethod(_same_rate)

  def step(self, grad, momentum, g, k, base=None, inputs=None):
    """One of the n sub-steps, Δ = −η_{t,i} ∇ (``g.lr`` is that sub-step's rate)."""
    return _scaled(grad, g.lr), None
