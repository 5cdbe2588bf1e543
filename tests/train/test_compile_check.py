"""experiments.compile_check: an ahead-of-time compile on fake devices, nothing run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # it sets its own device count
  cmd = [sys.executable, "-m", "experiments.compile_check", "--config=configs/mqar.py", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a tool's report; the sharded step itself is tested in test_loop.py
def test_compile_check_reports_per_device_memory_on_a_2x2x2_mesh():
  small = [
    f"--config.model.overrides.{k}={v}"
    for k, v in dict(dim=16, heads=2, head_dim=8, mlp_hidden=32, chunk_size=8, gate_rank=4).items()
  ]
  proc = _run("--mesh=data:2,fsdp:2,tensor:2", "--config.train.batch_size=8", *small)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout[proc.stdout.index("{") :])
  assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report["bytes_per_device"]["params"] > 0
  assert report["memory_analysis"]["temp_size_in_bytes"] > 0
  bad = _run("--mesh=data:2,pipeline:2")
  assert bad.returncode != 0 and "unknown axis 'pipeline'" in bad.stderr
