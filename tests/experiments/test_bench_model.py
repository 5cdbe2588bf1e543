"""experiments.bench_model: the rows' configs and a timed step."""

import math

import jax
import pytest

from experiments import bench_model


def test_row_config_sets_sequence_batch_dtype_and_overrides():
  c = bench_model.row_config("moneta", "170m", "bfloat16", 4096, 2, {"remat": False})
  assert c.data.pack_len == 4096 and c.train.batch_size == 2 and c.train.grad_accum == 1
  o = c.model.overrides
  assert (o.dtype, o.remat, o.preset, c.model.size) == ("bfloat16", False, "moneta", "170m")


@pytest.mark.slow  # a whole train step on 8 fake devices (~7 s cold)
def test_a_tiny_row_compiles_runs_and_is_timed():
  row = bench_model.bench_row("transformer", "tiny", "float32", 16, 2, {}, time_cpu=True)
  n = jax.device_count()  # one sequence per device
  assert (row["devices"], row["seq_len"], row["platform"]) == (n, 16, "cpu")
  assert row["temp_gib"] is not None and row["compile_s"] > 0 and row["per_device"] == 1
  assert math.isfinite(row["step_s"]) and row["step_s"] > 0
  # tokens/s from the unrounded step time (step_s is rounded to 0.1 ms)
  assert abs(row["tokens_per_s"] * row["step_s"] - n * 16) <= n * 16 * (1e-4 / row["step_s"])
  assert row["mfu"] is None  # no known peak for a CPU
