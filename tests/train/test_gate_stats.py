"""``miras_jax.train.gate_stats``: ``gate_statistics`` on NumPy, JAX, bfloat16 and nested inputs (under
jit: tests/train/test_metrics.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.train.gate_stats import gate_statistics

# ------------------------------------------------------------------------------------------------
# Gate statistics
# ------------------------------------------------------------------------------------------------


def test_gate_statistics_values():
  gates = {
    "lr": np.array([[0.1, 0.2], [0.3, 0.4]]),
    "retention": jnp.array([0.5, 0.9, 1.0], jnp.bfloat16),
    "layer": {"momentum": jnp.arange(4.0)},
  }
  stats = gate_statistics(gates)
  assert set(stats) == {
    f"gate/{n}/{s}" for n in ("lr", "retention", "layer/momentum") for s in ("mean", "min", "max")
  }
  assert stats["gate/lr/mean"] == pytest.approx(0.25)
  assert stats["gate/lr/min"] == pytest.approx(0.1) and stats["gate/lr/max"] == pytest.approx(0.4)
  assert stats["gate/retention/mean"] == pytest.approx(0.8, abs=2e-3)  # bf16 inputs
  assert (stats["gate/retention/min"], stats["gate/retention/max"]) == (0.5, 1.0)
  assert stats["gate/layer/momentum/mean"] == 1.5
  assert (stats["gate/layer/momentum/min"], stats["gate/layer/momentum/max"]) == (0.0, 3.0)
  assert all(type(v) is float for v in stats.values())
  with pytest.raises(ValueError, match="empty"):
    gate_statistics({"lr": np.zeros((0,))})
