"""``miras_jax.train.metrics``: JSONL/TensorBoard writer, progress line, FLOPs/MFU, gate statistics.

- ``MetricsWriter``: JSONL lines parse (NaN/inf as null), resume appends, ``truncate_after``
  rewrites atomically, only process 0 writes; the TensorBoard event files are read back with a
  TFRecord reader written here (own CRC32C, ``Event`` proto decoding), not with tensorboardX's
  writer code, including the purge marker written after ``truncate_after``.
- ``Progress`` with an injected clock: line format, the first (compile) interval kept out of the
  rate, the moving window, ``every``, ``summary``.
- ``mfu``/``peak_flops_per_device``/``lm_flops_per_token`` on hand-computed examples.
- ``gate_statistics`` on NumPy, JAX, bfloat16, nested and traced inputs.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import struct
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.train import metrics
from miras_jax.train.metrics import (
  MetricsWriter,
  Progress,
  gate_statistics,
  lm_flops_per_token,
  mfu,
  peak_flops_per_device,
)

# ------------------------------------------------------------------------------------------------
# An event-file reader independent of tensorboardX's writer: TFRecord framing + CRC32C.
# ------------------------------------------------------------------------------------------------


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_records(path: str) -> list[bytes]:
  """TFRecord: uint64 length, uint32 masked crc(length), data, uint32 masked crc(data)."""
  with open(path, "rb") as f:
    buf = f.read()
  records, pos = [], 0
  while pos < len(buf):
    header = buf[pos : pos + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", buf[pos + 8 : pos + 12])
    assert header_crc == _masked_crc(header), f"bad length crc at {pos} in {path}"
    data = buf[pos + 12 : pos + 12 + length]
    (data_crc,) = struct.unpack("<I", buf[pos + 12 + length : pos + 16 + length])
    assert data_crc == _masked_crc(data), f"bad data crc at {pos} in {path}"
    records.append(data)
    pos += 16 + length
  assert pos == len(buf)
  return records


def _read_events(tb_dir: str) -> list[list]:
  """The ``Event`` protos of each event file in ``tb_dir``, files in name (= TensorBoard) order."""
  from tensorboardX.proto.event_pb2 import Event  # the schema only

  files = sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")))
  return [[Event.FromString(r) for r in _read_records(f)] for f in files]


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
  out: dict[str, list[tuple[int, float]]] = {}
  for ev in events:
    for v in ev.summary.value:
      out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


def _lines(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_crc32c_reference_value():
  assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)


# ------------------------------------------------------------------------------------------------
# MetricsWriter
# ------------------------------------------------------------------------------------------------


def test_jsonl_lines_parse_and_hold_step_and_loss(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(1, {"loss": 2.5, "lr": np.float32(1e-3)})
    w.write(2, {"loss": jnp.float32(2.25), "grad_norm": jnp.asarray([0.5], jnp.bfloat16)})
    w.write(3, {"loss": float("nan"), "big": np.inf, "count": 7})
    # Flushed per line: readable while the writer is open.
    assert len(_lines(tmp_path / "metrics.jsonl")) == 3
  rows = _lines(tmp_path / "metrics.jsonl")
  assert rows[0] == {"step": 1, "loss": 2.5, "lr": pytest.approx(1e-3)}
  assert rows[1] == {"step": 2, "loss": 2.25, "grad_norm": 0.5}
  assert rows[2] == {"step": 3, "loss": None, "big": None, "count": 7.0}
  assert all(type(v) is float for r in rows[:2] for k, v in r.items() if k != "step")
  assert not (tmp_path / "tensorboard").exists()
  with pytest.raises(RuntimeError):
    w.write(4, {"loss": 1.0})


def test_write_rejects_bad_metrics(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(ValueError, match="scalar"):
      w.write(1, {"loss": np.zeros(3)})
    with pytest.raises(ValueError, match="reserved"):
      w.write(1, {"step": 1.0})
    with pytest.raises(ValueError, match="real number"):
      w.write(1, {"tag": np.asarray("x")})
  assert _lines(tmp_path / "metrics.jsonl") == []


def test_tensorboard_scalars_read_back(tmp_path):
  with MetricsWriter(tmp_path) as w:
    for step, loss in [(10, 3.0), (20, 2.5), (30, 2.125)]:
      w.write(step, {"loss": jnp.float32(loss), "gate/lr/mean": loss / 10})
    # Flushed per write: readable while the writer is open.
    (events,) = _read_events(tmp_path / "tensorboard")
    assert len(_scalars(events)["loss"]) == 3
  (events,) = _read_events(tmp_path / "tensorboard")
  assert events[0].file_version.startswith("brain.Event:")
  got = _scalars(events)
  assert got["loss"] == [(10, 3.0), (20, 2.5), (30, 2.125)]
  assert [s for s, _ in got["gate/lr/mean"]] == [10, 20, 30]
  np.testing.assert_allclose([v for _, v in got["gate/lr/mean"]], [0.3, 0.25, 0.2125], rtol=1e-6)


def test_tensorboard_keeps_nan(tmp_path):
  with MetricsWriter(tmp_path) as w:
    w.write(1, {"loss": float("nan")})
  (events,) = _read_events(tmp_path / "tensorboard")
  ((step, value),) = _scalars(events)["loss"]
  assert step == 1 and math.isnan(value)
  assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": None}]


def test_non_zero_process_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  with MetricsWriter(workdir, process_index=1) as w:
    assert not w.active
    w.write(1, {"loss": 1.0})
    assert w.truncate_after(0) == 0
    w.flush()
  assert not workdir.exists()


def test_default_process_index_is_jax_process_index(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    assert w.active == (jax.process_index() == 0)


def test_resume_appends(tmp_path):
  with MetricsWriter(tmp_path) as w:
    w.write(1, {"loss": 4.0})
    w.write(2, {"loss": 3.0})
  with MetricsWriter(tmp_path) as w:
    w.write(3, {"loss": 2.0})
  assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]
  files = _read_events(tmp_path / "tensorboard")
  assert len(files) == 2  # one event file per session, none overwritten
  assert [_scalars(f)["loss"] for f in files] == [[(1, 4.0), (2, 3.0)], [(3, 2.0)]]


def test_truncate_after(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with MetricsWriter(tmp_path) as w:
    for step in range(1, 6):
      w.write(step, {"loss": float(step)})
  # A run killed in the middle of a line leaves a partial one; reopening closes it off.
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"step": 6, "lo')
  with MetricsWriter(tmp_path) as w:
    w.write(7, {"loss": 7.0})
    lines = path.read_text().splitlines()
    assert lines[-2:] == ['{"step": 6, "lo', '{"step": 7, "loss": 7.0}']
    # Restored the checkpoint of step 3: steps 4, 5, 7 and the broken line go.
    assert w.truncate_after(3) == 4
    assert _lines(path) == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]
    w.write(4, {"loss": 40.0})  # the recomputed step
    assert w.truncate_after(10) == 0
  assert [(r["step"], r["loss"]) for r in _lines(path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]  # no temp file left

  # TensorBoard: a new file whose SessionLog.START at step 4 purges the old steps >= 4.
  files = _read_events(tmp_path / "tensorboard")
  assert len(files) == 3
  purge = [e for e in files[2] if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in purge] == [(4, 1)]  # 1 == SessionLog.START
  assert _scalars(files[2])["loss"] == [(4, 40.0)]


def test_truncate_everything(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(1, {"loss": 1.0})
    assert w.truncate_after(0) == 1
    w.write(1, {"loss": 0.5})
  assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


class _FakeClock:
  def __init__(self):
    self.t = 0.0

  def __call__(self) -> float:
    return self.t


def test_progress_line_and_compile_step_excluded():
  clock, out = _FakeClock(), io.StringIO()
  p = Progress(100, tokens_per_step=1000, stream=out, clock=clock)
  clock.t = 30.0  # step 1 includes 30 s of compilation
  assert p.update(1, 5.0) == "step 1/100  loss 5.0000  -- tok/s  ETA --"
  clock.t = 30.5
  p.update(2, jnp.float32(4.5))
  clock.t = 31.0
  line = p.update(3, np.float32(4.25), {"lr": 3e-4})
  # 2 steps in 1 s after the first update: 2000 tok/s (with the compile step: 3 steps / 31 s).
  assert line == "step 3/100  loss 4.2500  2.0k tok/s  ETA 49s  lr 0.0003"
  assert out.getvalue().splitlines()[-1] == line
  assert len(out.getvalue().splitlines()) == 3
  assert p.tokens_per_second() == pytest.approx(2000.0)
  clock.t = 40.0
  s = p.summary()
  assert s["steps"] == 3 and s["total_time_s"] == 40.0 and s["first_update_s"] == 30.0
  assert s["tokens_per_s"] == pytest.approx(2000.0) and s["steps_per_s"] == pytest.approx(2.0)


def test_progress_moving_window_every_and_eta():
  clock, out = _FakeClock(), io.StringIO()
  p = Progress(1000, tokens_per_step=4096, stream=out, every=10, window=2, clock=clock)
  t = 0.0
  for step in range(1, 21):
    t += 60.0 if step == 1 else (1.0 if step <= 18 else 0.1)  # slow, then fast last 2 steps
    clock.t = t
    line = p.update(step, 2.0)
    assert (line is None) == (step % 10 != 0)
  # The window holds the last 2 intervals (0.1 s each): 10 steps/s, 40.96k tok/s.
  assert p.steps_per_second() == pytest.approx(10.0)
  assert line == "step 20/1000  loss 2.0000  41.0k tok/s  ETA 1m38s"
  assert len(out.getvalue().splitlines()) == 2
  s = p.summary()  # steady state: 19 steps in 17.2 s
  assert s["steps_per_s"] == pytest.approx(19 / 17.2)
  assert s["steps"] == 20


def test_progress_last_step_and_resume():
  clock, out = _FakeClock(), io.StringIO()
  p = Progress(25, tokens_per_step=10, stream=out, every=10, start_step=20, clock=clock)
  for step in range(21, 26):
    clock.t += 1.0
    line = p.update(step, 1.0)
  assert line == "step 25/25  loss 1.0000  10 tok/s  ETA 0s"  # total_steps always prints
  assert p.summary()["steps"] == 5


def test_progress_default_stream_is_stderr_at_print_time(capsys):
  Progress(2, tokens_per_step=1).update(1, 1.0)
  assert capsys.readouterr().err == "step 1/2  loss 1.0000  -- tok/s  ETA --\n"


def test_format_helpers():
  assert metrics._format_rate(950) == "950"
  assert metrics._format_rate(12_345) == "12.3k"
  assert metrics._format_rate(2.5e6) == "2.5M"
  assert metrics._format_duration(83) == "1m23s"
  assert metrics._format_duration(59.6) == "1m00s"
  assert metrics._format_duration(5000) == "1h23m"
  assert metrics._format_duration(90_000) == "1d01h"


# ------------------------------------------------------------------------------------------------
# FLOPs and MFU
# ------------------------------------------------------------------------------------------------


def _device(kind: str, platform: str = "gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


def test_peak_flops_table():
  h100 = _device("NVIDIA H100 80GB HBM3")
  assert peak_flops_per_device(h100) == 989.5e12
  assert peak_flops_per_device(h100, dtype=jnp.float32) == 67e12
  assert peak_flops_per_device(h100, dtype="tf32") == 494.5e12
  assert peak_flops_per_device(_device("NVIDIA H100 PCIe")) == 756.5e12
  assert peak_flops_per_device(_device("NVIDIA H200")) == 989.5e12
  assert peak_flops_per_device(_device("NVIDIA H200 NVL")) == 835.5e12
  assert peak_flops_per_device(_device("NVIDIA A100-SXM4-80GB"), dtype="fp32") == 19.5e12
  assert peak_flops_per_device(_device("NVIDIA A100 80GB PCIe"), dtype=jnp.bfloat16) == 312e12
  for kind, peak in [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12)]:
    assert peak_flops_per_device(_device(kind, "tpu")) == peak
  assert peak_flops_per_device(_device("TPU v6 lite", "tpu")) == 918e12
  assert peak_flops_per_device(_device("TPU v6 lite", "tpu"), dtype="float32") is None
  assert peak_flops_per_device(_device("NVIDIA GeForce RTX 4090")) is None
  assert peak_flops_per_device(_device("TPU v4 lite", "tpu")) is None
  assert peak_flops_per_device(_device("cpu", "cpu")) is None
  assert peak_flops_per_device() is None  # the test platform is CPU
  with pytest.raises(ValueError):
    peak_flops_per_device(h100, dtype="int8")


def test_mfu_hand_example():
  # 8 x H100 SXM at 50k tok/s on a 1B-parameter model, 6e9 FLOPs/token:
  # 5e4 * 6e9 = 3e14 FLOP/s over 8 * 989.5e12 = 7.916e15 FLOP/s -> 3.7898 %.
  peak = peak_flops_per_device(_device("NVIDIA H100 80GB HBM3")) * 8
  assert mfu(5e4, 6e9, peak) == pytest.approx(3e14 / 7.916e15)
  assert mfu(5e4, 6e9, peak) == pytest.approx(0.037898, rel=1e-4)
  assert mfu(1000.0, 1e9, 4e12) == 0.25
  assert mfu(1000.0, 1e9) is None  # CPU: peak unknown, MFU not reported
  assert mfu(None, 1e9, 4e12) is None
  with pytest.raises(ValueError):
    mfu(1.0, 1.0, 0.0)


def test_lm_flops_per_token_hand_example():
  # N = 1e6, L = 2, E = 64, T = 128: 6N = 6e6; 12 L E T = 12*2*64*128 = 196,608.
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=None) == 6_196_608
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=32) == 6_000_000 + 49_152
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=4096) == 6_196_608
  assert lm_flops_per_token(1_000_000, 2, 64, 128) == 6_000_000  # window 0: no softmax attention
  with pytest.raises(ValueError):
    lm_flops_per_token(1, 1, 1, 1, attention_window=-1)


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


def test_gate_statistics_under_jit(tmp_path):
  stats = jax.jit(gate_statistics)({"lr": jnp.array([0.25, 0.75])})
  assert float(stats["gate/lr/mean"]) == 0.5 and float(stats["gate/lr/max"]) == 0.75
  with MetricsWriter(tmp_path, tensorboard=False) as w:  # JAX scalars go straight to the writer
    w.write(1, stats)
  assert _lines(tmp_path / "metrics.jsonl") == [
    {"step": 1, "gate/lr/mean": 0.5, "gate/lr/min": 0.25, "gate/lr/max": 0.75}
  ]
