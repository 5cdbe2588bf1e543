"""experiments.bench_model: the rows' configs, the FLOP count's attention keys, a timed step."""

import math
import types

import jax

from experiments import bench_model
from miras_jax import models
from miras_jax.train.aot import compile_step


def test_row_config_sets_sequence_batch_dtype_and_overrides():
  c = bench_model.row_config("moneta", "170m", "bfloat16", 4096, 2, {"remat": False})
  assert c.data.pack_len == 4096 and c.train.batch_size == 2 and c.train.grad_accum == 1
  o = c.model.overrides
  assert (o.dtype, o.remat, o.preset, c.model.size) == ("bfloat16", False, "moneta", "170m")


def test_attention_keys_per_model():
  keys = lambda name, **f: bench_model.attention_keys(  # noqa: E731
    types.SimpleNamespace(model_config=models.config(name, "tiny", **f))
  )
  assert keys("transformer") is None  # full attention
  assert keys("transformer", window=32) == 32
  assert keys("titans_mac", segment=8) == 16  # [h ‖ z]
  assert keys("titans_mag", window=16) == 16
  assert keys("miras_lm") == 0 and keys("hope") == 0


def test_a_tiny_step_compiles_runs_and_is_timed():
  n = jax.device_count()  # one sequence per device, as the benchmark's rows
  config = bench_model.row_config("transformer", "tiny", "float32", 16, n, {})
  step = compile_step(config, {"data": n, "fsdp": 1, "tensor": 1})
  assert step.batch_shape == (n, 16)
  assert step.report["memory_analysis"]["temp_size_in_bytes"] > 0
  seconds = bench_model.time_steps(step, step.compiled, 2)
  assert math.isfinite(seconds) and seconds > 0
