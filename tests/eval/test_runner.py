"""The eval entry point end to end on a tiny trained checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from miras_jax import eval as meval
from miras_jax.train.loop import train
from tests.train.test_loop import _config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  # the run of tests/train/test_loop.py's first end-to-end test: its programs are in the cache
  c = _config(workdir / "tfds", steps=4, eval_every=2)
  train(c, str(workdir))
  return workdir, c


def test_evaluate_scores_every_task_and_length(run_dir):
  workdir, c = run_dir
  out = meval.evaluate(c, str(workdir), tasks=("mqar",), lengths=(16, 32), examples=8, batch_size=4)
  assert out["step"] == 4 and [r["length"] for r in out["results"]] == [16, 32]
  for r in out["results"]:
    assert 0.0 <= r["exact_match"] <= r["token_accuracy"] <= 1.0 and np.isfinite(r["loss"])
  assert json.loads((workdir / "eval.json").read_text())["results"] == out["results"]
  meval.plot([out], str(workdir / "plot.png"))
  assert (workdir / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_requests_are_clear(run_dir, tmp_path):
  workdir, c = run_dir
  with pytest.raises(ValueError, match="unknown"):
    meval.evaluate(c, str(workdir), tasks=("nope",))
  with pytest.raises(ValueError, match="byte level"):
    meval.evaluate(c, str(workdir), tasks=("s_niah_pk",), lengths=(256,))
  with pytest.raises(ValueError, match="no checkpoint"):
    meval.evaluate(c, str(tmp_path), tasks=("mqar",))


@pytest.mark.slow  # the in-process test above covers the scoring; this one the command line
def test_launcher_writes_eval_json_and_plot(run_dir):
  workdir, c = run_dir
  cmd = [
    sys.executable,
    "-m",
    "experiments.eval",
    "--config=configs/mqar.py",
    f"--workdir={workdir}",
  ]
  cmd += ["--lengths=16,32", "--examples=8", "--batch_size=4"]
  cmd += [f"--config.data.data_dir={c.data.data_dir}"]
  cmd += [
    f"--config.model.overrides.{k}={v}" for k, v in c.model.overrides.items() if k != "preset"
  ]
  cmd += [f"--config.data.options.{k}={v}" for k, v in c.data.options.items()]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4
  assert (workdir / "eval.png").exists()
