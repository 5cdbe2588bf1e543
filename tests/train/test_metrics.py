"""``miras_jax.train.metrics``: the JSONL/TensorBoard writer.

- ``MetricsWriter``: JSONL lines parse (NaN/inf as null), resume appends, ``truncate_after``
  rewrites atomically, only process 0 writes; the TensorBoard event files are read back with a
  TFRecord reader written here (own CRC32C, ``Event`` proto decoding), not with tensorboardX's
  writer code, including the purge marker written after ``truncate_after``.
- gate statistics computed under jit go straight to the writer.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.train.gate_stats import gate_statistics
from miras_jax.train.metrics import MetricsWriter

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


def test_gate_statistics_under_jit(tmp_path):
  stats = jax.jit(gate_statistics)({"lr": jnp.array([0.25, 0.75])})
  assert float(stats["gate/lr/mean"]) == 0.5 and float(stats["gate/lr/max"]) == 0.75
  with MetricsWriter(tmp_path, tensorboard=False) as w:  # JAX scalars go straight to the writer
    w.write(1, stats)
  assert _lines(tmp_path / "metrics.jsonl") == [
    {"step": 1, "gate/lr/mean": 0.5, "gate/lr/min": 0.25, "gate/lr/max": 0.75}
  ]
