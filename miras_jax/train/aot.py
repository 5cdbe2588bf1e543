"""Ahead-of-time compile of a run's train step: XLA's memory analysis and the compile time.

``compile_step(config, mesh_sizes)`` builds the mesh and the abstract sharded train state
(``train.loop.build``) and an abstract global batch (``train.batch_size`` × ``data.pack_len``,
or × the task's ``data.options.seq_len``), then lowers and compiles the jitted, donated train
step exactly as the training loop does; nothing is allocated. It returns the report (the model
and its parameter count, the mesh, the per-device bytes of parameters and optimizer state from
their shardings, ``memory_analysis()`` of the compiled step per device, build / lower / compile
seconds) with the compiled step, so that a benchmark can run it (``experiments/bench_model.py``);
``experiments/compile_check.py`` prints the report on fake CPU devices.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from miras_jax.train import mesh as mesh_lib
from miras_jax.train.loop import build
from miras_jax.train.settings import settings_from_config
from miras_jax.train.step import make_train_step

__all__ = ["CompiledStep", "compile_step"]


def _seq_len(run) -> int:
  d = run.data
  if d.pack_len:
    return int(d.pack_len)
  if d.options.get("seq_len"):
    return int(d.options["seq_len"])
  raise ValueError(
    f"cannot tell the sequence length of {d.name!r} without its data: set data.pack_len or "
    "data.options.seq_len"
  )


def _memory_stats(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
    "peak_memory_in_bytes",
  )
  out = {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}
  if {"argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"} <= set(out):
    # What the device holds at once: inputs, outputs not aliased to (donated) inputs, temporaries.
    out["total_in_bytes"] = (
      out["argument_size_in_bytes"]
      + out["output_size_in_bytes"]
      - out.get("alias_size_in_bytes", 0)
      + out["temp_size_in_bytes"]
    )
  return out


def _gib(n: float) -> float:
  return round(n / 2**30, 3)


class CompiledStep(NamedTuple):
  """``compile_step``'s result: the report, the compiled train step and what running it needs."""

  report: dict  # compile_check's report (model, sizes, bytes per device, memory, seconds)
  compiled: Any  # the compiled, donated train step: (state, batch) -> (state, metrics)
  built: Any  # train.loop.Built (init makes a fresh state: jit it with out_shardings)
  mesh: Any  # the jax Mesh
  batch_sharding: Any  # sharding of a global batch
  batch_shape: tuple  # (global batch, sequence length)


def compile_step(config, mesh_sizes: dict[str, int]) -> CompiledStep:
  """Lowers and compiles the train step of ``config`` on a mesh of ``mesh_sizes`` (the devices
  jax sees: fake CPU devices under ``main``, real ones in a benchmark)."""
  run = settings_from_config(config)
  t = run.train
  n_devices = math.prod(mesh_sizes.values())
  mesh = mesh_lib.make_mesh(mesh_sizes["data"], mesh_sizes["fsdp"], mesh_sizes["tensor"])
  mesh_lib.check_batch(t.batch_size, t.grad_accum, mesh)
  seq_len = _seq_len(run)

  start = time.perf_counter()
  built = build(run, mesh)
  model_config, graphdef, tx = built.model_config, built.graphdef, built.tx
  abstract, shardings = built.abstract, built.shardings
  build_s = time.perf_counter() - start

  batch_sh = mesh_lib.batch_sharding(mesh)
  shape = (t.batch_size, seq_len)
  batch = {
    "inputs": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sh),
    "targets": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sh),
    "mask": jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=batch_sh),
  }
  train_step = jax.jit(
    make_train_step(graphdef, tx, t.grad_accum),
    in_shardings=(shardings, batch_sh),
    out_shardings=(shardings, mesh_lib.replicated(mesh)),
    donate_argnums=0,
  )
  start = time.perf_counter()
  lowered = train_step.lower(abstract, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  param_bytes = mesh_lib.bytes_per_device(abstract.params)
  opt_bytes = mesh_lib.bytes_per_device(abstract.opt_state)
  memory = _memory_stats(compiled)
  report = {
    "model": run.model.name,
    "size": run.model.size,
    "overrides": dict(run.model.overrides),
    "layers": getattr(model_config, "layers", None),
    "dim": getattr(model_config, "dim", None),
    "params": n_params,
    "mesh": mesh_sizes,
    "devices": n_devices,
    "platform": jax.devices()[0].platform,
    "batch": {
      "global": list(shape),
      "per_device": t.batch_size // mesh_lib.data_parallel_size(mesh),
      "grad_accum": t.grad_accum,
    },
    "optimizer": run.optimizer.name,
    "bytes_per_device": {
      "params": int(param_bytes),
      "opt_state": int(opt_bytes),
      "state": int(param_bytes + opt_bytes),
    },
    "memory_analysis": memory,
    "gib_per_device": {
      "state": _gib(param_bytes + opt_bytes),
      **({"temp": _gib(memory["temp_size_in_bytes"])} if "temp_size_in_bytes" in memory else {}),
      **({"total": _gib(memory["total_in_bytes"])} if "total_in_bytes" in memory else {}),
    },
    "seconds": {
      "build": round(build_s, 2),
      "lower": round(lower_s, 2),
      "compile": round(compile_s, 2),
    },
  }
  return CompiledStep(report, compiled, built, mesh, batch_sh, shape)
