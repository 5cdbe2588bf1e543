"""The four MIRAS choices as declared interfaces (MIRAS §3: memory, bias, retention, algorithm).

A ``Rule`` composes one of each. The execution forms (``recurrent``, ``chunked``'s exact and
mini-batch forms, ``chunk_reference``) and the NNX block never test a component's class: they ask
it what it is through the capabilities below, so a new component is one class in one file that
declares them. ``Rule`` checks each component against its protocol when it is built and names any
missing member.

Capabilities the forms read:

- ``Memory.linear_in_state``: M(W, x) = W x, one matrix linear in W (the exact forms need it).
- ``AttentionalBias.exact_write``: the write the exact chunkwise form can solve, ``"hebbian"``
  (∂ℓ/∂M = −v: w_t = η v_t) or ``"delta"`` (∂ℓ/∂M = M(k) − v: the delta rule), else ``None``.
- ``RetentionGate.linear_in_state``: W_t = D_t ⊙ W_{t−1} + Δ_t with a diagonal decay D_t (it
  then has ``decay(weights, g)``); ``minibatch``: how the mini-batch chunked form treats it at
  chunk boundaries (``"linear"``, ``"normalised"``: Moneta's A/‖A‖, ``"lag"``: Memora's lag token,
  ``None``: no chunked form); ``domain``: where the weights live (``"real"``, ``"simplex"``: rows
  of mass c, ``"unit_interval"``), with ``to_domain`` mapping an unconstrained parameter there.
- ``LearningAlgorithm.exact_form`` and ``exact_rate``: whether the exact form applies and the
  rate it uses; ``minibatch``: ``"dual"`` (the dual form), ``"reference"`` (the token-serial
  chunk semantics only) or ``None``; ``multi_step``: n keys per token (DeltaProduct).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Memory(Protocol):
  """What the memory M is: ``apply(weights, x)`` maps ``[..., d_k]`` to ``[..., d_v]``."""

  name: str
  depth: int  # number of weight matrices, applied in order
  linear_in_state: bool  # M(W, x) = W x with W: [d_v, d_k] (a linear matrix memory)

  def apply(self, weights: Any, x: jax.Array, *, linear: Callable | None = None) -> jax.Array:
    """M(W, x); ``linear(l, w, h)`` replaces layer l's matmul ``h @ w.T`` (dual forms)."""

  def layer_inputs(self, weights: Any, x: jax.Array) -> tuple[jax.Array, ...]:
    """Each weight matrix's input when reading ``x``."""

  def init(self, key: jax.Array, d_k: int, d_v: int, scale: float = ...) -> Any:
    """Initial weights (a pytree of float32 matrices)."""

  def dims(self, weights: Any) -> tuple[int, int]:
    """``(d_k, d_v)`` of ``weights``, or ``ValueError`` naming ``weights``."""


@runtime_checkable
class AttentionalBias(Protocol):
  """The inner loss ℓ(M(k), v): its ``loss`` and/or closed-form ``output_grad`` (∂ℓ/∂M(k))."""

  name: str
  needs_delta: bool  # reads the Huber threshold gates.delta
  channel_delta: bool  # accepts a channel-wise threshold gates.delta: [T, d_v] (MIRAS §5.4)
  exact_write: str | None  # "hebbian" | "delta" | None (see the module docstring)
  error_power: float | None  # ∂ℓ/∂M grows like ‖e‖^error_power (None: unknown)
  loss: Callable | None  # (pred, v, delta) -> scalar, or None
  output_grad: Callable | None  # (pred, v, delta) -> ∂ℓ/∂pred, or None


@runtime_checkable
class RetentionGate(Protocol):
  """How the memory keeps its past: ``write(W, A, Δ, g) -> (W_t, A_t)`` (a mirror-descent step)."""

  name: str
  gates: tuple[str, ...]  # the gates it needs
  optional_gates: tuple[str, ...]  # gates it reads when given and defaults otherwise
  channels: str  # shapes of gates.retention on a linear memory: scalar | key | key_value | any
  has_accum: bool  # keeps a dual variable A in the state
  linear_in_state: bool  # W_t = D_t ⊙ W_{t−1} + Δ_t (then ``decay`` exists)
  minibatch: str | None  # "linear" | "normalised" | "lag" | None
  domain: str  # "real" | "simplex" | "unit_interval"

  def init(self, weights: Any) -> tuple[Any, Any]:
    """``(W_0, A_0)`` from the initial weights."""

  def write(self, weights: Any, accum: Any, step: Any, g: Any) -> tuple[Any, Any]:
    """``(W_t, A_t)`` from the previous state and the algorithm's step Δ_t."""

  def to_domain(self, raw: jax.Array) -> jax.Array:
    """Maps an unconstrained parameter matrix into ``domain`` (learned initial memories)."""


@runtime_checkable
class LearningAlgorithm(Protocol):
  """How the inner loss is optimised: ``step(∇, S, g, k, base, inputs) -> (Δ_t, S_t)``."""

  name: str
  gates: tuple[str, ...]  # the gates it needs
  has_momentum: bool  # keeps Titans' surprise S in the state
  steps: int  # GD steps per token
  multi_step: bool  # n keys/values/rates per token (k: [T, n, d_k])
  channel_lr: bool  # accepts a channel-wise rate gates.lr: [T, d_v]
  needs_layer_inputs: bool  # ``step`` reads each weight matrix's input (DGD)
  needs_linear_l2: bool  # its step is a closed form for a linear memory and the ℓ2 bias only
  exact_form: bool  # has the exact chunkwise form (with a linear memory, bias and retention)
  minibatch: str | None  # "dual" | "reference" | None

  def step(self, grad, momentum, g, k, base=None, inputs=None) -> tuple[Any, Any]:
    """``(Δ_t, S_t)`` from the gradient ∇_t and this token's gates ``g``."""

  def exact_rate(self, lr: jax.Array, k: jax.Array) -> jax.Array:
    """The rate ω_t of the exact form's rank-one write for rates ``lr`` and keys ``k``."""


def missing_members(component: Any, protocol: type) -> list[str]:
  """The members of ``protocol`` that ``component`` does not have."""
  names = {*protocol.__annotations__, *(n for n, x in vars(protocol).items() if callable(x))}
  return sorted(n for n in names if not n.startswith("_") and not hasattr(component, n))


def require(component: Any, protocol: type, what: str) -> None:
  """Raises ``ValueError`` naming ``what`` and the members it lacks when ``component`` does not
  implement ``protocol``."""
  missing = missing_members(component, protocol)
  if missing:
    raise ValueError(
      f"{what} must implement miras_jax.core.interfaces.{protocol.__name__}; "
      f"{type(component).__name__} lacks {', '.join(missing)}"
    )
