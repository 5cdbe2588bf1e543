"""Mean, min and max of each memory gate's activations, for the training log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["gate_statistics"]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for name, value in tree.items():
    key = f"{prefix}{name}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, key + "/"))
    else:
      out[key] = value
  return out


def gate_statistics(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Mean/min/max of each gate: ``{"gate/<name>/mean": ..., "gate/<name>/min": ..., ...}``.

  ``tree`` maps names to arrays of gate activations (any shape; NumPy or JAX), e.g.
  ``{"lr": lr, "retention": alpha}``; nested dicts give ``gate/<outer>/<inner>/...`` names. Means
  accumulate in float32 (bfloat16 gates included). Concrete inputs give Python floats (one device
  transfer per gate); inside ``jit`` (traced inputs) the values are JAX scalars, so the reductions
  can run in the train step and only three scalars per gate leave the device.
  """
  out: dict[str, Any] = {}
  for name, value in _flatten(tree).items():
    if np.size(value) == 0:
      raise ValueError(f"gate {name!r} is empty")
    if isinstance(value, jax.Array):
      x = value.astype(jnp.float32)
      stats = jnp.stack([jnp.mean(x), jnp.min(x), jnp.max(x)])
      if not isinstance(value, jax.core.Tracer):
        stats = np.asarray(stats).tolist()
      else:
        stats = list(stats)
    else:
      x = np.asarray(value, dtype=np.float32)
      stats = [float(np.mean(x)), float(np.min(x)), float(np.max(x))]
    for stat, v in zip(("mean", "min", "max"), stats, strict=True):
      out[f"gate/{name}/{stat}"] = v
  return out
