"""The training loop: mesh → sharded init or restore → jitted, donated steps → metrics, evaluation,
Orbax checkpoints; resumes from ``WORKDIR/checkpoints`` and saves on SIGTERM or SIGINT (Ctrl-C; a
second Ctrl-C interrupts at once).

Divergence guard: a step whose loss, gradient norm or new parameters are not finite is never
applied (``step.make_train_step``), so no checkpoint holds a non-finite state and retention never
removes the last finite one. The loop reads the steps' finiteness flags at each log step, before
each evaluation and checkpoint, and at the end (not every step: no host sync per step). With
``train.on_nonfinite="stop"`` (default) the first non-finite step ends the run: nothing more is
saved, summary.json has status "diverged", ``diverged_step`` and the last checkpoint's step, and
``experiments/train.py`` exits with status 3. With ``"skip"`` the bad steps are skipped and counted
(``skipped_steps`` in the metrics and summary) until more than ``train.max_skipped`` stop the run
as above.

Running a finished run again (its checkpoint at ``train.steps``) changes nothing and returns the
summary.json it wrote.

``train(config, workdir)`` is what ``python -m experiments.train`` runs. Layout of ``workdir``::

  checkpoints/    Orbax checkpoints (params, optimizer state, step; data iterator positions)
  tensorboard/    TensorBoard event files
  metrics.jsonl   one JSON object per logged step (``step``, ``loss``, …) and per evaluation
  summary.json    the final summary (also printed)
  tfds/           prepared datasets, unless ``data.data_dir`` is set
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from miras_jax import data as mdata
from miras_jax import models
from miras_jax.models.titans_mac import MACBlock
from miras_jax.nn.memory import NeuralMemory
from miras_jax.train import mesh as mesh_lib
from miras_jax.train.checkpoint import Checkpointer
from miras_jax.train.flops import attention_keys, lm_flops_per_token, mfu, peak_flops_per_device
from miras_jax.train.gate_stats import gate_statistics
from miras_jax.train.metrics import MetricsWriter
from miras_jax.train.optimizer import make_optimizer, schedule
from miras_jax.train.progress import Progress
from miras_jax.train.settings import RunSettings, settings_from_config
from miras_jax.train.settings import model_config as model_config_of
from miras_jax.train.step import TrainState, make_eval_step, make_train_step


def _workdir(path: str) -> Path:
  workdir = Path(path).expanduser().resolve()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-probe-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {str(workdir)!r} is not writable: {e}") from e
  return workdir


def _sources(run: RunSettings, workdir: Path):
  d = run.data
  data_dir = d.data_dir or str(workdir / "tfds")
  builder = mdata.prepare(d.name, data_dir, **d.options)
  sources = builder.as_data_source()
  for split in (d.train_split, d.eval_split):
    if split not in sources:
      raise ValueError(f"data: split {split!r} not in {d.name!r} (has {sorted(sources)})")
  return sources[d.train_split], sources[d.eval_split]


def first_train_batch(run: RunSettings, workdir: str) -> dict:
  """The first training batch ``run`` draws (numpy arrays), its data prepared under ``workdir``
  (or ``run.data.data_dir``): what the loop's first step trains on."""
  source, _ = _sources(run, _workdir(workdir))
  return next(_loader(source, run, seed=run.train.seed, eval_=False))


def _loader(source, run: RunSettings, *, seed: int, eval_: bool):
  n_proc = jax.process_count()
  return mdata.make_loader(
    source,
    batch_size=run.train.batch_size // n_proc,
    seed=seed,
    shuffle=not eval_,
    shard_index=jax.process_index(),
    shard_count=n_proc,
    num_epochs=1 if eval_ else None,
    pack_len=run.data.pack_len or None,
    drop_remainder=True,
  )


def _gather_json(obj) -> list:
  """Every process's JSON-able ``obj``, in process order (a collective)."""
  if jax.process_count() == 1:
    return [obj]
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size])))[:, 0]
  buf = np.zeros(int(sizes.max()), np.uint8)
  buf[: raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(bytes(rows[i, : sizes[i]]).decode()) for i in range(len(sizes))]


class Built(NamedTuple):
  """What ``build`` makes of a run's settings on a mesh."""

  model_config: Any  # the model's frozen config dataclass
  graphdef: Any  # nnx.GraphDef of the model (merged with params inside the step)
  tx: optax.GradientTransformation  # the optimizer, schedule included
  init: Any  # key -> TrainState: a fresh state (jit it with out_shardings=shardings)
  abstract: TrainState  # the state's ShapeDtypeStructs, each with its sharding
  shardings: TrainState  # the state's shardings


def build(run: RunSettings, mesh) -> Built:
  """Model graph, optimizer, abstract sharded train state and its shardings."""
  m = run.model
  model_config = model_config_of(m)
  abstract_model = nnx.eval_shape(lambda: models.get(m.name, model_config, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  specs = nnx.get_partition_spec(abstract_params).to_pure_dict()
  tx = make_optimizer(run.optimizer, run.train.steps)

  def init(key):
    model = models.get(m.name, model_config, rngs=nnx.Rngs(key))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.fold_in(key, 1))

  abstract = jax.eval_shape(init, jax.random.key(0))
  param_sh = mesh_lib.tree_shardings(abstract.params, specs, mesh, run.mesh.rules)
  replicated = mesh_lib.replicated(mesh)
  # Optimizer state: leaves shaped like a parameter take its sharding, the rest is replicated.
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 (optax's empty placeholder)
  opt_sh = optax.tree_map_params(
    tx,
    lambda x, s: x if masked(x) else s,
    abstract.opt_state,
    param_sh,
    transform_non_params=lambda x: x if masked(x) else replicated,
    is_leaf=masked,
  )
  shardings = TrainState(param_sh, opt_sh, replicated, replicated)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return Built(model_config, graphdef, tx, init, abstract, shardings)


class _Stop:
  """SIGTERM or SIGINT → finish the current step, checkpoint, exit cleanly. A second SIGINT
  raises ``KeyboardInterrupt`` at once (the last checkpoint on disk is kept)."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in self._SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler
        pass
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("%s: saving a checkpoint after this step, then exiting", name)
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


class _Guard:
  """The divergence guard's bookkeeping: the steps' device-side finiteness flags, read in batches."""

  def __init__(self, train_settings):
    self._mode = train_settings.on_nonfinite
    self._limit = train_settings.max_skipped
    self._pending: list[tuple[int, jax.Array]] = []
    self.skipped = 0
    self.diverged_step: int | None = None

  def add(self, step: int, finite: jax.Array) -> None:
    self._pending.append((step, finite))

  def check(self) -> bool:
    """Reads the pending flags; True when the run must stop (it diverged)."""
    flags = jax.device_get([f for _, f in self._pending])
    bad = [step for (step, _), ok in zip(self._pending, flags, strict=True) if not ok]
    self._pending.clear()
    if bad:
      logging.warning(
        "non-finite loss, gradient or parameters at step %d (%d step(s) since the last check); "
        "not applied", bad[0], len(bad),
      )  # fmt: skip
      allowed = 0 if self._mode == "stop" else self._limit - self.skipped
      if len(bad) > allowed:
        self.diverged_step = bad[allowed]
      self.skipped += len(bad)
    return self.diverged_step is not None


def train(config, workdir: str) -> dict[str, Any]:
  """Trains as ``config`` says, resuming from ``workdir``'s latest checkpoint; returns the summary."""
  run = settings_from_config(config)
  workdir = _workdir(workdir)
  t = run.train
  mesh = mesh_lib.make_mesh(run.mesh.data, run.mesh.fsdp, run.mesh.tensor)
  mesh_lib.check_batch(t.batch_size, t.grad_accum, mesh)
  if t.batch_size % jax.process_count():
    raise ValueError(
      f"train.batch_size ({t.batch_size}) must be divisible by the {jax.process_count()} processes"
    )
  built = build(run, mesh)
  model_config, graphdef, tx, init = built.model_config, built.graphdef, built.tx, built.init
  abstract, shardings = built.abstract, built.shardings
  if run.data.name == "mqar" and run.data.options.get("vocab", 0) > model_config.vocab:
    raise ValueError(
      f"data.options.vocab ({run.data.options['vocab']}) exceeds the model's vocab "
      f"({model_config.vocab}); set model.overrides.vocab"
    )
  train_source, eval_source = _sources(run, workdir)
  loader = _loader(train_source, run, seed=t.seed, eval_=False)
  batch_sh = mesh_lib.batch_sharding(mesh)

  checkpoints = Checkpointer(str(workdir / "checkpoints"), keep=t.keep_checkpoints,
                             async_save=t.async_checkpoints)  # fmt: skip
  writer = MetricsWriter(str(workdir))
  restored = checkpoints.restore(abstract)
  if restored is None:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(t.seed))
    start = 0
    _say(f"new run in {workdir}")
  else:
    start, state, extra = restored
    if start >= t.steps and (workdir / "summary.json").exists():
      checkpoints.close()
      writer.close()
      logging.warning("the run in %s is finished (step %d); nothing to do", workdir, start)
      summary = json.loads((workdir / "summary.json").read_text())
      if jax.process_index() == 0:
        print(json.dumps(summary), file=sys.stdout, flush=True)
      return summary
    loader.set_state(extra["data"][jax.process_index()])
    writer.truncate_after(start)
    _say(f"resumed from step {start} in {workdir}")

  train_step = jax.jit(
    make_train_step(graphdef, tx, t.grad_accum),
    in_shardings=(shardings, batch_sh),
    out_shardings=(shardings, mesh_lib.replicated(mesh)),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    make_eval_step(graphdef),
    in_shardings=(shardings.params, batch_sh),
    out_shardings=mesh_lib.replicated(mesh),
  )
  lr = schedule(run.optimizer, t.steps)

  def to_global(batch):
    return {
      k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v)) for k, v in batch.items()
    }

  def evaluate(params) -> dict[str, float]:
    sums = np.zeros(3)
    eval_loader = _loader(eval_source, run, seed=t.seed, eval_=True)
    for _, batch in zip(range(t.eval_batches), eval_loader, strict=False):
      sums += np.asarray(eval_step(params, to_global(batch)))
    n = max(sums[2], 1.0)
    return {"eval/loss": sums[0] / n, "eval/accuracy": sums[1] / n, "eval/perplexity": float(np.exp(min(sums[0] / n, 50.0))), "eval/tokens": sums[2]}  # fmt: skip

  seq_len = int(np.prod(abstract_batch_shape(train_source, run)[1:]))
  tokens_per_step = t.batch_size * seq_len
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  keys = attention_keys(model_config)
  flops = lm_flops_per_token(n_params, model_config.layers, model_config.dim, seq_len, keys)
  progress = Progress(t.steps, tokens_per_step=tokens_per_step, every=t.log_every, start_step=start)
  probe = jax.jit(
    _gate_probe(run.model.name, model_config),
    in_shardings=(shardings.params, batch_sh),
    out_shardings=mesh_lib.replicated(mesh),
  )
  last_eval: dict[str, float] = {}
  status = "completed"
  guard = _Guard(t)
  last_saved = start if restored is not None else None
  with _Stop() as stop:
    for step in range(start, t.steps):
      batch = next(loader)
      batch = to_global(batch)
      state, metrics = train_step(state, batch)
      done = step + 1
      final = done == t.steps
      guard.add(done, metrics.pop("finite"))
      evaluate_now = (t.eval_every and done % t.eval_every == 0) or final
      save_now = done % t.checkpoint_every == 0 or final or stop.requested
      if (done % t.log_every == 0 or evaluate_now or save_now) and guard.check():
        status = "diverged"
        break
      if done % t.log_every == 0 or final:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if guard.skipped:
          scalars["skipped_steps"] = guard.skipped
        scalars["lr"] = float(lr(step))
        scalars.update(gate_statistics(jax.device_get(probe(state.params, batch))))
        progress.update(done, scalars["loss"], {"acc": scalars["accuracy"]})
        rate = progress.tokens_per_second()
        if rate:
          scalars["tokens_per_second"] = rate
          util = mfu(rate, flops, _peak(mesh))
          if util is not None:
            scalars["mfu"] = util
        writer.write(done, scalars)
      if evaluate_now:
        last_eval = evaluate(state.params)
        writer.write(done, last_eval)
        _say(f"eval at step {done}: " + "  ".join(f"{k[5:]} {v:.4g}" for k, v in last_eval.items()))
      if save_now:
        positions = _gather_json(loader.get_state())
        checkpoints.save(done, state, {"data": positions, "step": done})
        last_saved = done
      if stop.requested and not final:
        status = "preempted"
        break
  if start >= t.steps and not last_eval:  # finished, but its summary.json was lost: evaluate
    last_eval = evaluate(state.params)
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  summary = {
    "status": status,
    "step": int(jax.device_get(state.step)),
    "model": run.model.name,
    "params": n_params,
    **{k: float(v) for k, v in last_eval.items()},
    **progress.summary(),
  }
  if guard.skipped:
    summary["skipped_steps"] = guard.skipped
  if status == "diverged":
    summary["diverged_step"] = guard.diverged_step
    summary["last_checkpoint"] = last_saved
    saved = (
      f"the last checkpoint is step {last_saved}" if last_saved is not None else "no checkpoint"
    )
    logging.error(
      "diverged at step %d (non-finite loss, gradient or parameters; train.on_nonfinite=%r, "
      "%d step(s) not applied); nothing saved after it; %s",
      guard.diverged_step, t.on_nonfinite, guard.skipped, saved,
    )  # fmt: skip
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), file=sys.stdout, flush=True)
  return summary


def _say(line: str) -> None:
  """One of the run's own lines (beside the progress line, on stderr; process 0 only)."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr, flush=True)


def _gate_probe(name: str, model_config):
  """Gate activations of every memory block on a batch (not inside MAC's segment scan):
  ``{gate name: [all values]}`` for ``gate_statistics``. A ``scan_layers`` model is probed as its
  unrolled twin with the same parameters (``models.unstacked_params``): the probe sows per block."""
  unrolled = dataclasses.replace(model_config, scan_layers=False)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.get(name, unrolled, rngs=nnx.Rngs(0))))

  def probe(params, batch):
    if model_config.scan_layers:
      params = models.unstacked_params(params)
    model = nnx.merge(graphdef, params)
    in_scan = {id(b.memory) for _, b in nnx.iter_modules(model) if isinstance(b, MACBlock)}
    for _, module in nnx.iter_modules(model):
      if isinstance(module, NeuralMemory) and id(module) not in in_scan:
        module.record_gates = True
    _, sown = nnx.capture(model, nnx.Intermediate)(batch["inputs"])
    values: dict[str, list] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(sown):
      values.setdefault(str(path[-1].key), []).append(leaf.reshape(-1))
    return {name: jnp.concatenate(v) for name, v in values.items()}

  return probe


def _peak(mesh) -> float | None:
  peak = peak_flops_per_device(mesh.devices.flat[0])
  return None if peak is None else peak * mesh.devices.size


def abstract_batch_shape(source, run: RunSettings) -> tuple[int, int]:
  """``[B, T]`` of a training batch (T from pack_len, or from the first record)."""
  if run.data.pack_len:
    return (run.train.batch_size, run.data.pack_len)
  return (run.train.batch_size, int(np.asarray(source[0]["inputs"]).shape[0]))


__all__ = ["abstract_batch_shape", "build", "train"]
