"""Per-token gates of a memory rule and the checks that guard them.

One ``Gates`` pytree carries every data-dependent (or fixed) coefficient of a write; fields a rule
does not use are ``None`` (CONVENTIONS.md §2):

=================== ============================================ =================================
field               symbol                                       shape
=================== ============================================ =================================
``lr``              η_t (MIRAS), θ_t (Titans), β_t (DeltaNet)    ``[T]``, or ``[T, d_v]`` channel-wise
                                                                 (``[T, n]`` delta_product)
``retention``       α_t, multiplicative retention in [0, 1]      ``[T]`` or ``[T, d_k]`` (key axis)
``retention_value`` β_t of DFW, retention of the value axis      ``[T, d_v]``
``momentum``        η_t (Titans), decay of the surprise S        ``[T]``
``delta``           δ_t, Huber threshold (Yaad), > 0             ``[T]``, or ``[T, d_v]`` channel-wise
=================== ============================================ =================================

Titans' forget gate is ``1 - retention``.

Channel-wise gates (MIRAS §5.4, η_t, δ_t, α_t ∈ R^d): a channel-wise ``lr`` holds one rate per
*output* channel of the memory and scales that channel's error signal before it is pulled back
through the memory, ∇̃_t = J_Wᵀ (η_t ⊙ ∂ℓ/∂M(k_t)) (a linear memory: diag(η_t) e kᵀ, one rate per
row of W; rules with GD or momentum, ``Rule.channel_lr``); a channel-wise ``delta`` is a threshold
per output channel (Huber coord and mixture, ``Rule.channel_delta``); a channel-wise
``retention`` acts on the key channels of a linear memory (``W diag(α)``) and is scalar for MLP
memories. Equal channels give the scalar gate's result in every form.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Gates(NamedTuple):
  """Per-token gates; see the module docstring for the meaning and shape of each field."""

  lr: jax.Array | None = None
  retention: jax.Array | None = None
  retention_value: jax.Array | None = None
  momentum: jax.Array | None = None
  delta: jax.Array | None = None


# Valid range of each gate: (lower, lower inclusive, upper).
_RANGES = {
  "lr": (0.0, True, None),
  "retention": (0.0, True, 1.0),
  "retention_value": (0.0, True, 1.0),
  "momentum": (0.0, True, 1.0),
  "delta": (0.0, False, None),
}


def concrete(x) -> np.ndarray | None:
  """Returns ``x`` as a numpy array when its value is known now, ``None`` under a jax transform."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_gate_values(gates: Gates) -> None:
  """Raises ``ValueError`` when a concrete gate lies outside its valid range or is not finite.

  Values are only known outside ``jax.jit``; under a transform only shapes are checked (by the
  rule), and keeping gates in range is the caller's job (a sigmoid does it).
  """
  for name, (lo, lo_inclusive, hi) in _RANGES.items():
    value = getattr(gates, name)
    if value is None:
      continue
    arr = concrete(value)
    if arr is None:
      continue
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"gates.{name} contains non-finite values")
    if arr.size == 0:
      continue
    if lo_inclusive and arr.min() < lo or not lo_inclusive and arr.min() <= lo:
      bound = ">=" if lo_inclusive else ">"
      raise ValueError(f"gates.{name} must be {bound} {lo}; got min {arr.min():.6g}")
    if hi is not None and arr.max() > hi:
      raise ValueError(f"gates.{name} must lie in [{lo}, {hi}]; got max {arr.max():.6g}")
