"""The training loop's metrics writer: JSON lines and TensorBoard event files (the progress line is
``train.progress``, FLOPs and MFU ``train.flops``, gate statistics ``train.gate_stats``).

Example (with the other three)::

  from miras_jax.train.flops import lm_flops_per_token, mfu, peak_flops_per_device
  from miras_jax.train.gate_stats import gate_statistics
  from miras_jax.train.progress import Progress

  with MetricsWriter(workdir) as writer:
    restored = ckpt.restore(abstract)
    if restored is not None:
      start, state, extra = restored
      writer.truncate_after(start)       # steps after the checkpoint will be recomputed
    progress = Progress(total_steps, tokens_per_step=batch * seq_len, start_step=start)
    for step in range(start + 1, total_steps + 1):
      state, loss, gates = train_step(state, batch)
      progress.update(step, loss)
      if step % log_every == 0:
        writer.write(step, {"loss": loss, **gate_statistics(gates)})
  peak = peak_flops_per_device()                   # None on CPU / unknown chips: no MFU
  if peak is not None:
    tps = progress.summary()["tokens_per_s"]
    print(mfu(tps, lm_flops_per_token(n_params, n_layers, dim, seq_len), peak * jax.device_count()))

What is on disk::

  <workdir>/
    metrics.jsonl                    one JSON object per ``write``: {"step": 120, "loss": 2.34, ...}
    tensorboard/
      events.out.tfevents.<time>.<host>.<ns>.<pid>    one file per writer session (see below)

TensorBoard event files are written with tensorboardX's synchronous ``EventsWriter`` (TFRecord
framing, ``Event`` protos with ``simple_value`` scalars, stored as float32) and flushed after every
``write``; tensorboardX's ``SummaryWriter`` is not used because its ``flush`` does not wait for the
events still queued for its background thread. Reading them needs neither TensorFlow nor
tensorboardX (any TFRecord + ``Event`` proto reader, e.g. TensorBoard's ``EventAccumulator``).

Note: tensorboardX's package ``__init__`` imports torch when torch is installed (about 2 s, once);
it is imported lazily, on the first TensorBoard write, so ``tensorboard=False`` never pays for it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import numpy as np

__all__ = ["MetricsWriter"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_float(name: str, value: Any) -> float:
  """A Python float from a Python/NumPy/JAX scalar (or any one-element array)."""
  if isinstance(value, bool | int | float):
    return float(value)
  arr = np.asarray(value)  # device_get for a jax.Array
  if arr.size != 1:
    raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
  if arr.dtype.kind in "USOcmM":  # strings, objects, complex, times; bfloat16 & co. are kind "V"
    raise ValueError(f"metric {name!r} is not a real number (dtype {arr.dtype})")
  return float(arr.reshape(()))


class MetricsWriter:
  """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard event files.

  Only process 0 writes (``process_index`` defaults to ``jax.process_index()``); on every other
  process all methods are no-ops and nothing is created on disk, so the training loop can call
  them unconditionally.

  JSONL: one line per ``write``, ``{"step": <int>, "<name>": <float>, ...}``, flushed to the OS
  after each line (a killed run keeps every line it wrote; no fsync, a machine crash may lose the
  last ones). Values are Python floats; NaN and +-inf are written as ``null`` so that every line is
  strict JSON (``json.loads``, ``jq``, pandas all read it); TensorBoard gets the raw value
  (it plots NaN/inf as such). Opening an existing file appends (resuming a run); a partial last
  line left by a killed writer is closed with a newline first so new lines stay parseable.

  TensorBoard: the same scalars, one ``Event`` per ``write`` at ``step``, in a new event file under
  ``<workdir>/tensorboard/`` per writer session (opened on the first write). After
  ``truncate_after(step)`` the next event file starts with a ``SessionLog.START`` at ``step + 1``,
  which makes TensorBoard discard the old events from that step on ("purge", as
  tensorboardX's ``purge_step``).
  """

  def __init__(
    self, workdir: str | os.PathLike, *, tensorboard: bool = True, process_index: int | None = None
  ):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(self.workdir, TENSORBOARD_DIR)
    if process_index is None:
      process_index = jax.process_index()
    self.active = process_index == 0
    self._tensorboard = tensorboard
    self._tb = None  # tensorboardX EventsWriter, opened lazily
    self._purge_step: int | None = None
    self._file: TextIO | None = None
    self._closed = False
    if self.active:
      os.makedirs(self.workdir, exist_ok=True)
      self._repair_last_line()
      self._file = open(self.path, "a", encoding="utf-8")

  # -- JSONL -------------------------------------------------------------------------------------

  def _repair_last_line(self) -> None:
    try:
      with open(self.path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
          return
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
    except FileNotFoundError:
      return
    if last != b"\n":
      with open(self.path, "ab") as f:
        f.write(b"\n")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes ``metrics`` (name -> scalar) at ``step``: one JSONL line and one TensorBoard event.

    Values may be Python numbers, NumPy scalars or JAX scalars (fetched from the device here, so
    call this at the logging frequency, not every step).
    """
    if not self.active:
      return
    if self._closed:
      raise RuntimeError("MetricsWriter is closed")
    step = int(step)
    values: dict[str, float] = {}
    for name, value in metrics.items():
      if not isinstance(name, str):
        raise TypeError(f"metric names must be strings, got {name!r}")
      if name == "step":
        raise ValueError("'step' is reserved for the step number")
      values[name] = _to_float(name, value)
    record: dict[str, Any] = {"step": step}
    record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tensorboard and values:
      self._write_tensorboard(step, values)

  def truncate_after(self, step: int) -> int:
    """Drops the JSONL lines whose step is greater than ``step``; returns how many were dropped.

    Meant for resuming: after restoring the checkpoint of ``step``, the steps after it will be
    recomputed, so their old lines go. The file is rewritten atomically (temp file in the same
    directory, fsync, ``os.replace``): a crash leaves either the old or the new file. Lines that do
    not parse (a line cut short by a kill) are dropped too. TensorBoard events cannot be edited in
    place; the next event file purges steps > ``step`` instead (see the class docstring).
    """
    if not self.active:
      return 0
    if self._closed:
      raise RuntimeError("MetricsWriter is closed")
    step = int(step)
    self._file.close()
    kept, dropped = [], 0
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
          keep = False
        if keep:
          kept.append(line if line.endswith("\n") else line + "\n")
        elif line.strip():
          dropped += 1
    tmp = f"{self.path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    if self._tensorboard:
      self._close_tensorboard()
      self._purge_step = step + 1
    return dropped

  # -- TensorBoard -------------------------------------------------------------------------------

  def _write_tensorboard(self, step: int, values: dict[str, float]) -> None:
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary

    if self._tb is None:
      from tensorboardX.event_file_writer import EventsWriter

      os.makedirs(self.tensorboard_dir, exist_ok=True)
      # EventsWriter names files events.out.tfevents.<10-digit time>.<host><suffix> and opens them
      # "wb": the suffix (ns within the second, pid) keeps two sessions in one second apart and in
      # creation order (TensorBoard reads a directory's event files in name order).
      suffix = f".{time.time_ns() % 1_000_000_000:09d}.{os.getpid()}"
      self._tb = EventsWriter(os.path.join(self.tensorboard_dir, "events"), suffix)
      if self._purge_step is not None:
        self._tb.write_event(
          Event(
            wall_time=time.time(),
            step=self._purge_step,
            session_log=SessionLog(status=SessionLog.START),
          )
        )
        self._purge_step = None
    summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._tb.write_event(Event(wall_time=time.time(), step=step, summary=summary))
    self._tb.flush()

  def _close_tensorboard(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  # -- lifetime ----------------------------------------------------------------------------------

  def flush(self) -> None:
    if self.active and not self._closed:
      self._file.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the files; idempotent."""
    if self._closed:
      return
    self._closed = True
    if self.active:
      self._file.close()
      self._close_tensorboard()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
