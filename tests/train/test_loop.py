"""The training loop: mesh equivalence, an end-to-end run that resumes, kill -9 and Ctrl-C/SIGTERM
recovery, the divergence guard, re-running a finished run, and the errors for bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mqar
from miras_jax import data as mdata
from miras_jax.train import mesh as mesh_lib
from miras_jax.train.loop import build, train
from miras_jax.train.settings import settings_from_config
from miras_jax.train.step import make_train_step

ROOT = Path(__file__).resolve().parents[2]
_DATA = dict(seq_len=16, vocab=32, num_pairs=2, train_size=256, test_size=32, seed=0)


def _config(data_dir, **train):
  c = mqar.get_config()
  c.model.overrides.update(
    vocab=32, dim=16, layers=1, heads=2, head_dim=8, mlp_hidden=32, chunk_size=8, gate_rank=4
  )
  c.data.options.update(_DATA)
  c.data.data_dir = str(data_dir)
  c.train.update(
    dict(steps=4, batch_size=8, log_every=1, eval_every=0, eval_batches=2, checkpoint_every=2)
  )
  c.train.update(train)
  c.optimizer.warmup_steps = 0  # a constant lr: the trajectory does not depend on train.steps
  c.optimizer.min_lr_ratio = 1.0
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  mdata.prepare("mqar", path, **_DATA)
  return path


def _flags(c):
  """The config as --config.* flags for the launcher (the fields _config changed)."""
  out = [f"--config.data.data_dir={c.data.data_dir}"]
  out += [
    f"--config.model.overrides.{k}={v}" for k, v in c.model.overrides.items() if k != "preset"
  ]
  out += [f"--config.data.options.{k}={v}" for k, v in _DATA.items()]
  out += [f"--config.train.{k}={v}" for k, v in c.train.items()]
  out += ["--config.optimizer.warmup_steps=0", "--config.optimizer.min_lr_ratio=1.0"]
  return out


def _losses(workdir):
  lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {x["step"]: x["loss"] for x in lines if "loss" in x}


def test_sharded_steps_match_a_single_device(data_dir):
  """2 steps on data = fsdp = tensor = 2 (8 fake devices) give the single-device losses."""
  run = settings_from_config(_config(data_dir))
  batches = mdata.mqar(1, 16, _DATA["seq_len"], _DATA["vocab"], _DATA["num_pairs"])
  batches = [{k: v[i * 8 : (i + 1) * 8] for k, v in batches.items()} for i in range(2)]
  losses = {}
  for name, mesh in [
    ("single", mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])),
    ("2x2x2", mesh_lib.make_mesh(2, 2, 2)),
  ]:
    built = build(run, mesh)
    graphdef, tx, init, shardings = built.graphdef, built.tx, built.init, built.shardings
    if name == "2x2x2":  # the parameters really are split over fsdp and tensor
      specs = {tuple(s.spec) for s in jax.tree.leaves(shardings.params)}
      assert ("fsdp", "tensor") in specs and ("tensor", "fsdp") in specs, specs
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(
      make_train_step(graphdef, tx),
      in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
      out_shardings=(shardings, None),
    )
    losses[name] = []
    for batch in batches:
      state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
      losses[name].append(float(metrics["loss"]))
  np.testing.assert_allclose(losses["2x2x2"], losses["single"], rtol=1e-5)
  assert losses["single"][1] != losses["single"][0]


def test_train_writes_metrics_and_checkpoints_and_resumes(tmp_path, data_dir):
  workdir = tmp_path / "run"
  summary = train(_config(data_dir, steps=4, eval_every=2), str(workdir))
  assert summary["status"] == "completed" and summary["step"] == 4
  assert 0.0 <= summary["eval/accuracy"] <= 1.0 and np.isfinite(summary["eval/loss"])
  assert sorted(_losses(workdir)) == [1, 2, 3, 4]
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("gate/lr/mean" in x for x in lines) and any("eval/accuracy" in x for x in lines)
  assert list((workdir / "tensorboard").iterdir())
  assert json.loads((workdir / "summary.json").read_text())["step"] == 4
  assert {p.name for p in (workdir / "checkpoints").iterdir()} >= {"2", "4"}
  # resumes at 4 (16 steps: the program test_ctrl_c_… compiles too, shared through the cache)
  summary = train(_config(data_dir, steps=16, checkpoint_every=6), str(workdir))
  assert summary["step"] == 16 and summary["steps"] == 12
  assert sorted(_losses(workdir)) == list(range(1, 17))


def _launch(c, workdir, steps):
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mqar.py"]
  cmd += [f"--workdir={workdir}", *_flags(c), f"--config.train.steps={steps}"]
  return subprocess.Popen(
    cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _wait_for_checkpoint(proc, workdir, step, timeout=240):
  start = time.monotonic()
  while not (Path(workdir) / "checkpoints" / str(step) / "commit_success.txt").exists():
    if proc.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}:\n{proc.stdout.read()}")
    if time.monotonic() - start > timeout:
      proc.kill()
      raise AssertionError(f"no checkpoint {step} after {timeout} s")
    time.sleep(0.05)


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out
  return out


def _interrupt_after_checkpoint(workdir, step, timeout=240):
  """Sends this process SIGINT (Ctrl-C) once checkpoint ``step`` of ``workdir`` is committed."""

  def watch():
    done = Path(workdir) / "checkpoints" / str(step) / "commit_success.txt"
    start = time.monotonic()
    while not done.exists() and time.monotonic() - start < timeout:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


def test_ctrl_c_saves_and_a_killed_run_resumes_bit_for_bit(tmp_path, data_dir, capfd):
  steps, every = 16, 4  # checkpoints are the slow part of a tiny run: few of them
  c = _config(data_dir, checkpoint_every=every, steps=steps)
  reference = tmp_path / "reference"
  train(c, str(reference))  # uninterrupted
  run = tmp_path / "run"
  # Ctrl-C (SIGINT; SIGTERM takes the same path, test_stop_handles_sigterm_and_sigint): a clean
  # return with a checkpoint at the step it stopped after (here in this process: the signal path
  # is the launcher's, which only adds the exit status)
  long = _config(data_dir, checkpoint_every=every, steps=100_000)
  thread = _interrupt_after_checkpoint(run, every)
  summary = train(long, str(run))
  thread.join()
  assert summary["status"] == "preempted"
  stopped = summary["step"]
  assert json.loads((run / "summary.json").read_text())["step"] == stopped
  assert (run / "checkpoints" / str(stopped) / "commit_success.txt").exists()
  # resume through the launcher, then kill -9 after the next checkpoint
  proc = _launch(c, run, 100_000)
  _wait_for_checkpoint(proc, run, (stopped // every + 1) * every)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = proc.stdout.read()
  # Quiet by default: the run's own lines only (no absl/Orbax INFO lines, e.g. "I1201 12:00…").
  assert "resumed from step" in out
  assert not [x for x in out.splitlines() if re.match(r"I\d{4} ", x)], out
  capfd.readouterr()
  train(c, str(run))  # restart with the reference's config: every step once, equal bit for bit
  assert f"step {steps}/{steps}" in capfd.readouterr().err
  assert _losses(run) == _losses(reference)
  assert sorted(_losses(run)) == list(range(1, steps + 1))


@pytest.mark.slow  # the in-process test above covers the stop and resume; this one the exit status
def test_the_launcher_exits_0_on_ctrl_c_with_a_checkpoint(tmp_path, data_dir):
  run = tmp_path / "run"
  proc = _launch(_config(data_dir, checkpoint_every=2), run, 100_000)
  _wait_for_checkpoint(proc, run, 2)
  proc.send_signal(signal.SIGINT)
  _finish(proc)  # exit status 0
  summary = json.loads((run / "summary.json").read_text())
  assert summary["status"] == "preempted"
  assert (run / "checkpoints" / str(summary["step"]) / "commit_success.txt").exists()


def test_stop_handles_sigterm_and_sigint():
  from miras_jax.train.loop import _Stop

  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  for sig in (signal.SIGTERM, signal.SIGINT):
    with _Stop() as stop:
      assert not stop.requested
      os.kill(os.getpid(), sig)
      time.sleep(0.01)
      assert stop.requested, sig
      if sig == signal.SIGINT:  # a second Ctrl-C interrupts at once
        with pytest.raises(KeyboardInterrupt):
          os.kill(os.getpid(), sig)
          time.sleep(0.01)
  assert {sig: signal.getsignal(sig) for sig in before} == before  # restored


def test_bad_input_gives_clear_errors(tmp_path, data_dir):
  c = _config(data_dir)
  c.train.stpes = 3
  with pytest.raises(ValueError, match="train.stpes"):
    train(c, str(tmp_path / "a"))
  c = _config(data_dir)
  c.mesh.data, c.mesh.fsdp = 3, 1
  with pytest.raises(ValueError, match="does not match the 8 devices"):
    train(c, str(tmp_path / "b"))
  with pytest.raises(ValueError, match="not divisible by the data-parallel size"):
    train(_config(data_dir, batch_size=6), str(tmp_path / "c"))
  c = _config(data_dir)
  c.data.name, c.data.options = "lm1b", {}
  with pytest.raises(ValueError, match="lm1b"):
    train(c, str(tmp_path / "d"))
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="workdir"):
    train(_config(data_dir), str(blocker / "sub"))
  with pytest.raises(ValueError, match="grad_accum"):
    train(_config(data_dir, grad_accum=3), str(tmp_path / "e"))
  assert not any((tmp_path / n / "checkpoints").exists() for n in "abcde")
  os.sync()


@pytest.mark.parametrize(
  "optimizer",
  [pytest.param("muon", marks=pytest.mark.slow), pytest.param("m3", marks=pytest.mark.slow), "sgd"],
)
def test_other_optimizers_train(data_dir, optimizer):
  """The optimizers a config can name besides adamw take finite steps that change the loss (the
  loop around the step is the same for all and is tested above with adamw)."""
  c = _config(data_dir)
  c.optimizer.name = optimizer
  built = build(settings_from_config(c), mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  graphdef, tx, init = built.graphdef, built.tx, built.init
  state = init(jax.random.key(0))
  step = jax.jit(make_train_step(graphdef, tx))
  batch = mdata.mqar(1, 8, _DATA["seq_len"], _DATA["vocab"], _DATA["num_pairs"])
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[2] != losses[0], losses
  assert int(state.step) == 3


def test_text_corpus_run_packs_windows_and_reports_perplexity(tmp_path):
  from configs import lm_text

  corpus = tmp_path / "corpus"
  corpus.mkdir()
  text = (Path(lm_text.common.SHAKESPEARE) / "input.txt").read_text()[:20000]
  (corpus / "a.txt").write_text(text[:10000])
  (corpus / "b.txt").write_text(text[10000:])
  c = lm_text.get_config("transformer")
  c.model.overrides.update(dim=16, heads=2, head_dim=8, mlp_hidden=32, max_len=32)
  c.data.options.update(corpus_dir=str(corpus), max_doc_bytes=2000)
  c.data.pack_len = 32
  c.train.update(dict(steps=2, batch_size=8, log_every=1, eval_batches=1, checkpoint_every=10))
  summary = train(c, str(tmp_path / "run"))
  assert summary["step"] == 2 and summary["eval/tokens"] == 8 * 32
  assert 1.0 < summary["eval/perplexity"] < 1000.0  # byte level: at most ~256 at the start


# -- divergence guard, finished runs ---------------------------------------------------------------


def _poisoned_step(bad_steps):
  """``make_train_step`` whose optimizer update is NaN at the given 0-based steps (a stand-in for a
  run that diverges there: the step sees non-finite new parameters). Keyed on ``state.step``,
  which advances whether or not a step is applied."""
  import optax

  def make(graphdef, tx, grad_accum=1):
    def step(state, batch):
      bad = jnp.isin(state.step, jnp.asarray(bad_steps))

      def update(grads, opt_state, params=None):
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates), opt_state

      poisoned = optax.GradientTransformation(tx.init, update)
      return make_train_step(graphdef, poisoned, grad_accum)(state, batch)

    return step

  return make


def _restore_params(workdir, c, step):
  from miras_jax.train.checkpoint import Checkpointer

  run = settings_from_config(c)
  *_, abstract, _ = build(run, mesh_lib.make_mesh(-1, 1, 1))
  with Checkpointer(str(Path(workdir) / "checkpoints"), async_save=False) as ckpt:
    return ckpt.restore(abstract, step=step)[1].params


def test_a_diverging_run_stops_without_saving_the_bad_state(tmp_path, data_dir, monkeypatch):
  """NaN parameters after update 3 (step 4): status "diverged" at step 4, nothing saved after
  step 3, and keep_checkpoints=1 still holds the finite step-3 checkpoint."""
  from miras_jax.train import loop

  monkeypatch.setattr(loop, "make_train_step", _poisoned_step([3]))
  c = _config(data_dir, steps=8, checkpoint_every=1, keep_checkpoints=1)
  summary = train(c, str(tmp_path / "run"))
  assert summary["status"] == "diverged" and summary["diverged_step"] == 4
  assert summary["last_checkpoint"] == 3
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
  steps = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps == ["3"]
  params = _restore_params(tmp_path / "run", c, 3)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_skip_mode_skips_and_counts_then_stops_past_the_limit(tmp_path, data_dir, monkeypatch):
  from miras_jax.train import loop

  monkeypatch.setattr(loop, "make_train_step", _poisoned_step([1, 2]))
  c = _config(data_dir, steps=5, on_nonfinite="skip", max_skipped=2, checkpoint_every=10)
  summary = train(c, str(tmp_path / "skip"))
  assert summary["status"] == "completed" and summary["skipped_steps"] == 2
  assert all(np.isfinite(list(_losses(tmp_path / "skip").values())))
  params = _restore_params(tmp_path / "skip", c, 5)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  c = _config(data_dir, steps=5, on_nonfinite="skip", max_skipped=1, checkpoint_every=10)
  summary = train(c, str(tmp_path / "limit"))
  assert summary["status"] == "diverged" and summary["diverged_step"] == 3  # the 2nd bad one


def test_running_a_finished_run_again_changes_nothing(tmp_path, data_dir):
  c = _config(data_dir, steps=4, eval_every=2)  # the programs of the test above
  first = train(c, str(tmp_path / "run"))
  written = (tmp_path / "run" / "summary.json").read_text()
  again = train(c, str(tmp_path / "run"))
  assert (tmp_path / "run" / "summary.json").read_text() == written
  assert again == first and "eval/accuracy" in again


@pytest.mark.slow  # the divergence itself is tested in-process above; this is the exit status
def test_the_launcher_exits_3_when_training_diverges(tmp_path, data_dir):
  """An sgd step of size 1e30 overflows the parameters at the first step with a non-zero lr."""
  c = _config(data_dir, steps=3)
  flags = ["--config.optimizer.name=sgd", "--config.optimizer.lr=1e30"]
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mqar.py"]
  cmd += [f"--workdir={tmp_path / 'run2'}", *_flags(c), "--config.train.steps=3", *flags]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 3, out.stderr[-2000:]
  assert json.loads((tmp_path / "run2" / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
  "args, message",
  [
    (["--stpes=3"], "Unknown command line flag 'stpes'"),
    (["--config.train.stpes=3"], "--config.train.stpes: unknown key 'stpes'; known here:"),
    (["--config.optimizer.lr=-1"], "optimizer.lr = -1.0: must be a finite number in (0, inf)"),
    (["--config.model.overrides.max_lr=5"], "max_lr must be in [0, 1]"),
    (["--workdir=/proc/no/such/dir"], "workdir '/proc/no/such/dir' is not writable"),
  ],
)
def test_the_launcher_answers_user_errors_with_one_line_and_status_2(tmp_path, args, message):
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mqar.py"]
  cmd += [f"--workdir={tmp_path / 'run'}", *args]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
  assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
