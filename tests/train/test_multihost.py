"""Multi-process training on CPU: ``python -m experiments.train`` as 2 processes × 4 fake devices
(``jax.distributed`` over a local coordinator, gloo collectives) against 1 process × 8 devices.

- The same MQAR run (one global ``data 4 × fsdp 2`` mesh, global batch 8) logs the same per-step
  losses in both layouts (relative 1e-5): each process reads its own half of every global batch.
- Both processes exit 0; the 2-process run saves an Orbax checkpoint at step 3, both processes
  writing their shards.
- Restarting the 2-process job with ``train.steps=4`` resumes from step 3: ``metrics.jsonl`` then
  logs steps 1..4 once each, and step 4's loss is the uninterrupted single-process run's.

The learning-rate schedules of a 3-step and a 4-step run agree on the first three updates (warmup
of 2 steps, then the cosine's peak), so one 4-step single-process run is the reference for both.
Three launches, each compiling its own programs: about 2¼ minutes on 2 CPU cores, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from configs import mqar
from miras_jax import data

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # per launch
GRACE_S = 30  # how long the other processes may outlive a failed one
DATA_OPTIONS = {"train_size": 256, "test_size": 64}
FLAGS = [
  "--config=configs/mqar.py",  # first: config_flags wants it before the --config.x overrides
  "--config.train.log_every=1",
  "--config.train.eval_every=0",
  "--config.train.eval_batches=2",
  "--config.train.checkpoint_every=3",
  "--config.train.batch_size=8",
  "--config.optimizer.warmup_steps=2",
  "--config.mesh.data=4",
  "--config.mesh.fsdp=2",
  "--config.model.overrides.dim=32",
  "--config.model.overrides.layers=1",
  "--config.model.overrides.head_dim=16",
  "--config.model.overrides.mlp_hidden=64",
  *(f"--config.data.options.{k}={v}" for k, v in DATA_OPTIONS.items()),
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",  # jax's default on CPU; stated for clarity
    PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
  )
  return env


def _launch(workdir: Path, data_dir: Path, steps: int, processes: int, logs: Path) -> list[str]:
  """Runs ``experiments.train`` as ``processes`` processes (8 devices in all); asserts that all
  exit 0 within ``TIMEOUT_S`` and returns their stderr. Output goes to files under ``logs`` (a
  pipe that nobody drains would stall a process, and with it the collectives of the others)."""
  cmd = [
    sys.executable,
    "-m",
    "experiments.train",
    *FLAGS,
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.steps={steps}",
  ]
  if processes > 1:
    address = f"127.0.0.1:{_free_port()}"
    dist = ["--coordinator_address=" + address, f"--num_processes={processes}"]
    cmds = [[*cmd, *dist, f"--process_id={i}"] for i in range(processes)]
  else:
    cmds = [cmd]
  logs.mkdir(parents=True, exist_ok=True)
  tag = f"{workdir.name}-steps{steps}"
  files = [(logs / f"{tag}-p{i}.out", logs / f"{tag}-p{i}.err") for i in range(processes)]
  env = _env(8 // processes)
  procs = []
  for c, (out, err) in zip(cmds, files, strict=True):
    with open(out, "w") as fo, open(err, "w") as fe:
      procs.append(subprocess.Popen(c, cwd=REPO, env=env, stdout=fo, stderr=fe))

  start, failed_at, killed = time.monotonic(), None, ""
  while any(p.poll() is None for p in procs):
    now = time.monotonic()
    if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
      failed_at = now
    if now - start > TIMEOUT_S or (failed_at is not None and now - failed_at > GRACE_S):
      killed = f"killed after {now - start:.0f} s"
      for p in procs:
        if p.poll() is None:
          p.kill()
      for p in procs:
        p.wait()
      break
    time.sleep(0.5)

  stderr = [err.read_text() for _, err in files]
  bad = [i for i, p in enumerate(procs) if p.returncode != 0]
  report = "\n".join(
    f"--- process {i} of {processes} (steps={steps}) exited {procs[i].returncode} {killed}\n"
    f"stdout:\n{files[i][0].read_text()[-4000:]}\nstderr:\n{stderr[i][-8000:]}"
    for i in bad
  )
  assert not bad, report
  return stderr


def _losses(workdir: Path) -> dict[int, float]:
  """``{step: loss}`` of the training lines of ``metrics.jsonl``; asserts each step is logged once."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "loss" in r]
  assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_match_one_and_resume(tmp_path):
  data_dir, logs = tmp_path / "tfds", tmp_path / "logs"
  options = {**mqar.get_config().data.options.to_dict(), **DATA_OPTIONS}
  data.prepare("mqar", data_dir, **options)  # once, before the processes that read it

  single, multi = tmp_path / "single", tmp_path / "multi"
  _launch(single, data_dir, steps=4, processes=1, logs=logs)
  _launch(multi, data_dir, steps=3, processes=2, logs=logs)

  reference = _losses(single)
  assert sorted(reference) == [1, 2, 3, 4]
  first = _losses(multi)
  assert sorted(first) == [1, 2, 3]
  for step, loss in first.items():
    np.testing.assert_allclose(loss, reference[step], rtol=1e-5, err_msg=f"step {step}")
  checkpoints = multi / "checkpoints"
  assert (checkpoints / "3" / "commit_success.txt").exists(), sorted(os.listdir(checkpoints))
  # OCDBT: one sub-store per process that wrote shards of the state.
  written = sorted(p.name for p in (checkpoints / "3" / "state").glob("ocdbt.process_*"))
  assert written == ["ocdbt.process_0", "ocdbt.process_1"], written
  assert json.loads((multi / "summary.json").read_text())["step"] == 3

  stderr = _launch(multi, data_dir, steps=4, processes=2, logs=logs)  # from the step-3 checkpoint
  for i, log in enumerate(stderr):
    assert "resumed from step 3" in log, f"process {i}:\n{log[-4000:]}"
  resumed = _losses(multi)
  assert sorted(resumed) == [1, 2, 3, 4]
  for step, loss in resumed.items():
    np.testing.assert_allclose(loss, reference[step], rtol=1e-5, err_msg=f"step {step}")
  assert (checkpoints / "4" / "commit_success.txt").exists(), sorted(os.listdir(checkpoints))
  assert json.loads((multi / "summary.json").read_text())["step"] == 4
