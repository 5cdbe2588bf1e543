r"""Per model and size: the train step's compile time and XLA temporary memory per sequence, and on
an accelerator its step time, tokens/s and MFU, in float32 and bfloat16 (JSON lines).

    python -m experiments.bench_model > runs/bench_model.jsonl             # compile-only on CPU
    python -m experiments.bench_model --models=gated_delta_net --sizes=340m --dtypes=bfloat16
    python -m experiments.bench_model --steps=10 --out=runs/bench_model_gpu.jsonl  # accelerator

Each row builds ``configs/<model>.py:<size>`` (the paper sizes: ``remat`` and ``scan_layers`` on)
with ``--seq_len`` tokens per sequence and ``--per_device`` sequences per device (1), and compiles
its train step as the training loop does (``miras_jax.train.aot.compile_step``; data-parallel over
the visible devices). ``temp_gib`` is XLA's ``memory_analysis().temp_size_in_bytes`` per device:
with one sequence it includes the step's gradient and optimizer-update buffers, which do not grow
with the batch; the difference of two ``--per_device`` values is the activation memory per
sequence. With ``--steps`` N > 0 and a platform other than CPU it then runs the step on a
fresh state and random tokens: one warm-up step, then the median of N timed steps
(``step_s``), ``tokens_per_s`` and ``mfu`` (model FLOPs ``train.flops.lm_flops_per_token`` over
the device's dense peak for the compute dtype; null where the chip's peak is unknown; memory
updates are not counted, see ``train.flops.attention_keys``). Each row
records the device kind, the jax version and the command. ``--overrides`` (JSON) adds model config
fields to every row, e.g. ``'{"remat_policy": "dots"}'``; ``--time_cpu`` times the steps on CPU too
(for a reduced setting: ``--sizes=170m --seq_len=512``).
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

MODELS = ("transformer", "gated_delta_net", "titans_lmm", "moneta", "titans_mac", "hope")

FLAGS = flags.FLAGS


def define_flags():
  """The flags (defined when run as a script, so that tests can import the module)."""
  flags.DEFINE_list("models", list(MODELS), "configs/<model>.py of each row")
  flags.DEFINE_list("sizes", ["170m", "340m"], "paper sizes")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes (LMConfig.dtype)")
  flags.DEFINE_integer("seq_len", 4096, "tokens per sequence")
  flags.DEFINE_integer("steps", 10, "timed steps on an accelerator (0: compile only)")
  flags.DEFINE_string("overrides", "{}", "JSON object of model fields for every row")
  flags.DEFINE_integer("per_device", 1, "sequences per device in a step")
  flags.DEFINE_bool("time_cpu", False, "also time the steps on CPU (slow at the paper sizes)")
  flags.DEFINE_string("out", None, "JSON-lines file to append to (default: stdout)")


def row_config(model: str, size: str, dtype: str, seq_len: int, batch: int, overrides: dict):
  """``configs/<model>.py:<size>`` with ``batch`` sequences of ``seq_len`` tokens per step."""
  import importlib

  module = importlib.import_module(f"configs.{model}")
  c = module.get_config(size)
  with c.unlocked():
    c.data.pack_len = seq_len
    c.train.batch_size = batch
    c.train.grad_accum = 1
    c.model.overrides.dtype = dtype
    for name, value in overrides.items():
      c.model.overrides[name] = value
  return c


def time_steps(step, steps: int) -> float:
  """Median seconds of ``steps`` calls of the donated step after one warm-up call."""
  import jax
  import numpy as np

  built, shape = step.built, step.batch_shape
  state = jax.jit(built.init, out_shardings=built.shardings)(jax.random.key(0))
  rng = np.random.default_rng(0)
  vocab = built.model_config.vocab
  tokens = rng.integers(0, vocab, size=(shape[0], shape[1] + 1), dtype=np.int32)
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "mask": np.ones(shape, bool),
  }
  batch = jax.device_put(batch, step.batch_sharding)
  compiled = step.compiled
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench_row(model, size, dtype, seq_len, steps, overrides, time_cpu=False, per_device=1) -> dict:
  import jax

  from miras_jax.train.aot import compile_step
  from miras_jax.train.flops import attention_keys, lm_flops_per_token, mfu, peak_flops_per_device

  n = jax.device_count()
  config = row_config(model, size, dtype, seq_len, n * per_device, overrides)
  step = compile_step(config, {"data": n, "fsdp": 1, "tensor": 1})
  report = step.report
  device = jax.devices()[0]
  temp = report["memory_analysis"].get("temp_size_in_bytes")
  row = {
    "model": model,
    "size": size,
    "dtype": dtype,
    "seq_len": seq_len,
    "params": report["params"],
    "layers": report["layers"],
    "overrides": report["overrides"],
    "devices": n,
    "platform": device.platform,
    "device_kind": device.device_kind,
    "jax": jax.__version__,
    "compile_s": report["seconds"]["compile"],
    "lower_s": report["seconds"]["lower"],
    "per_device": per_device,
    "temp_gib": None if temp is None else round(temp / 2**30, 3),
    "state_gib": report["gib_per_device"]["state"],
    "command": "python -m experiments.bench_model " + " ".join(sys.argv[1:]),
  }
  if steps > 0 and (device.platform != "cpu" or time_cpu):
    step_s = time_steps(step, steps)
    tps = n * per_device * seq_len / step_s
    flops = lm_flops_per_token(
      report["params"],
      report["layers"],
      report["dim"],
      seq_len,
      attention_keys(step.built.model_config),
    )
    peak = peak_flops_per_device(device, dtype=dtype)
    row |= {
      "step_s": round(step_s, 4),
      "tokens_per_s": round(tps, 1),
      "mfu": None if peak is None else round(mfu(tps, flops, peak * n), 4),
    }
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    overrides = json.loads(FLAGS.overrides)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--overrides must be a JSON object: {e}") from e
  if not isinstance(overrides, dict):
    raise app.UsageError(f"--overrides must be a JSON object; got {FLAGS.overrides!r}")
  unknown = sorted(set(FLAGS.models) - set(MODELS))
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown}; known {', '.join(MODELS)}")
  out = open(FLAGS.out, "a") if FLAGS.out else sys.stdout  # noqa: SIM115
  try:
    for model in FLAGS.models:
      for size in FLAGS.sizes:
        for dtype in FLAGS.dtypes:
          row = bench_row(
            model,
            size,
            dtype,
            FLAGS.seq_len,
            FLAGS.steps,
            overrides,
            time_cpu=FLAGS.time_cpu,
            per_device=FLAGS.per_device,
          )
          print(json.dumps(row), file=out, flush=True)
  finally:
    if out is not sys.stdout:
      out.close()


if __name__ == "__main__":
  define_flags()
  app.run(main)
