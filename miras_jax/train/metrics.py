"""Metrics for the training loop: a JSONL + TensorBoard writer, a progress line, MFU and gate stats.

Example::

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

import collections
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "MetricsWriter",
  "Progress",
  "gate_statistics",
  "lm_flops_per_token",
  "mfu",
  "peak_flops_per_device",
]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


# ------------------------------------------------------------------------------------------------
# MetricsWriter
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


def _format_rate(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


def _format_duration(seconds: float) -> str:
  s = int(seconds + 0.5)
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
  """A one-line progress report: ``step 120/1000  loss 2.3451  12.3k tok/s  ETA 1m23s``.

  Call ``update(step, loss)`` after each step (or each ``every``-th; any cadence works). The clock
  starts at construction. The first ``update`` closes the interval that holds compilation, so it
  only marks where the steady state begins; the rate is measured over the last ``window``
  intervals between later updates (steps done / wall-clock time), and the ETA is the remaining
  steps at that rate. Until two updates have been seen the rate and ETA print as ``--``.

  With asynchronous dispatch the times are those of the ``update`` calls; they settle to the device
  rate once the dispatch queue is full. ``loss`` (and ``extra``) are converted to floats only on
  the lines that are printed, i.e. every ``every``-th step and at ``total_steps``.

  Args:
    total_steps: the step number at which training ends.
    tokens_per_step: tokens per optimiser step over all devices (global batch x sequence length).
    stream: where lines go; ``None`` (the default) means ``sys.stderr`` at the time of printing.
    every: print on steps divisible by ``every`` (and on ``total_steps``).
    window: how many intervals between updates the moving rate uses.
    start_step: the step training starts from (the restored step when resuming), for ``summary``.
    clock: seconds, monotonic (injectable for tests).
  """

  def __init__(
    self,
    total_steps: int,
    *,
    tokens_per_step: int,
    stream: TextIO | None = None,
    every: int = 1,
    window: int = 20,
    start_step: int = 0,
    clock: Callable[[], float] = time.monotonic,
  ):
    if every < 1 or window < 1:
      raise ValueError("every and window must be >= 1")
    self.total_steps = int(total_steps)
    self.tokens_per_step = int(tokens_per_step)
    self.stream = stream
    self.every = int(every)
    self.start_step = int(start_step)
    self._clock = clock
    self._t0 = clock()
    # (time, step) of updates from the first one on; the first one opens the steady-state window.
    self._recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=window + 1)
    self._first: tuple[float, int] | None = None
    self._last: tuple[float, int] | None = None

  def steps_per_second(self) -> float | None:
    """The moving-window step rate, excluding the first (compilation) interval; None if unknown."""
    if len(self._recent) < 2:
      return None
    (t_a, s_a), (t_b, s_b) = self._recent[0], self._recent[-1]
    if t_b <= t_a or s_b <= s_a:
      return None
    return (s_b - s_a) / (t_b - t_a)

  def tokens_per_second(self) -> float | None:
    rate = self.steps_per_second()
    return None if rate is None else rate * self.tokens_per_step

  def update(self, step: int, loss: Any, extra: Mapping[str, Any] | None = None) -> str | None:
    """Records that ``step`` is done; prints and returns the progress line when one is due."""
    now = self._clock()
    step = int(step)
    point = (now, step)
    if self._first is None:
      self._first = point
    self._recent.append(point)
    self._last = point
    if step % self.every != 0 and step != self.total_steps:
      return None
    rate = self.steps_per_second()
    if rate is None:
      speed, eta = "-- tok/s", "ETA --"
    else:
      speed = f"{_format_rate(rate * self.tokens_per_step)} tok/s"
      eta = f"ETA {_format_duration(max(self.total_steps - step, 0) / rate)}"
    parts = [f"step {step}/{self.total_steps}", f"loss {float(loss):.4f}", speed, eta]
    for name, value in (extra or {}).items():
      parts.append(f"{name} {float(value):.4g}")
    line = "  ".join(parts)
    stream = self.stream if self.stream is not None else sys.stderr
    print(line, file=stream, flush=True)
    return line

  def summary(self) -> dict[str, float | int | None]:
    """Totals for the run so far.

    Keys: ``steps`` (last updated step - ``start_step``), ``total_time_s`` (construction to now),
    ``first_update_s`` (construction to the first update: compilation plus the steps before it),
    ``steady_time_s`` (first to last update), ``steps_per_s`` and ``tokens_per_s`` (steady state:
    the steps after the first update over ``steady_time_s``; None with fewer than two updates).
    """
    now = self._clock()
    out: dict[str, float | int | None] = {
      "steps": 0,
      "total_time_s": now - self._t0,
      "first_update_s": None,
      "steady_time_s": None,
      "steps_per_s": None,
      "tokens_per_s": None,
    }
    if self._first is None:
      return out
    (t_first, s_first), (t_last, s_last) = self._first, self._last
    out["steps"] = s_last - self.start_step
    out["first_update_s"] = t_first - self._t0
    out["steady_time_s"] = t_last - t_first
    if t_last > t_first and s_last > s_first:
      rate = (s_last - s_first) / (t_last - t_first)
      out["steps_per_s"] = rate
      out["tokens_per_s"] = rate * self.tokens_per_step
    return out


# ------------------------------------------------------------------------------------------------
# FLOPs and MFU
# ------------------------------------------------------------------------------------------------

# Dense (no structured sparsity) peak FLOP/s per JAX device, from the vendors' datasheets: NVIDIA
# quotes tensor-core figures "with sparsity", the dense ones are half. ``tensorfloat32`` is the
# TF32 tensor-core rate; ``float32`` the IEEE FP32 (non-tensor-core) rate. TPUs have no published
# float32 matmul rate (their MXUs run float32 dots as one or more bfloat16 passes), hence None.
# NB: at JAX's default matmul precision, float32 dots run as TF32 on these GPUs and as one bf16
# pass on TPUs, so ask for ``tensorfloat32`` (GPU) or ``bfloat16`` (TPU) for such runs.
_A100 = {"bfloat16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12}
_H100_SXM = {"bfloat16": 989.5e12, "tensorfloat32": 494.5e12, "float32": 67e12}
_H100_PCIE = {"bfloat16": 756.5e12, "tensorfloat32": 378e12, "float32": 51e12}
_HOPPER_NVL = {"bfloat16": 835.5e12, "tensorfloat32": 417.5e12, "float32": 60e12}


def _tpu(bf16: float) -> dict[str, float | None]:
  return {"bfloat16": bf16, "tensorfloat32": None, "float32": None}


# ``device.device_kind`` as JAX reports it (one JAX device per chip on v4 and later).
_TPU_PEAKS: dict[str, dict[str, float | None]] = {
  "TPU v4": _tpu(275e12),
  "TPU v5 lite": _tpu(197e12),  # v5e
  "TPU v5e": _tpu(197e12),
  "TPU v5": _tpu(459e12),  # v5p
  "TPU v5p": _tpu(459e12),
  "TPU v6 lite": _tpu(918e12),  # v6e (Trillium)
  "TPU v6e": _tpu(918e12),
}

_DTYPE_ALIASES = {
  "bfloat16": "bfloat16",
  "bf16": "bfloat16",
  "tensorfloat32": "tensorfloat32",
  "tf32": "tensorfloat32",
  "float32": "float32",
  "fp32": "float32",
  "f32": "float32",
}


def _peaks_for_kind(kind: str) -> Mapping[str, float | None] | None:
  if kind in _TPU_PEAKS:
    return _TPU_PEAKS[kind]
  k = kind.lower()
  if "a100" in k:  # NVIDIA A100-SXM4-40GB / -80GB, A100-PCIE-40GB, A100 80GB PCIe: same peaks
    return _A100
  if "h100" in k or "h200" in k:  # H100 80GB HBM3 (SXM), H100 PCIe, H100 NVL, H200, H200 NVL, GH200
    if "nvl" in k:
      return _HOPPER_NVL
    if "pcie" in k:
      return _H100_PCIE
    return _H100_SXM
  return None


def peak_flops_per_device(device: Any = None, *, dtype: Any = "bfloat16") -> float | None:
  """Dense peak FLOP/s of one device for matmuls in ``dtype``, or None when unknown.

  Known: TPU v4, v5e, v5p, v6e and NVIDIA A100, H100 (SXM/PCIe/NVL), H200 (SXM/NVL), matched on
  ``device.device_kind``; ``device`` defaults to ``jax.devices()[0]``. CPUs and other chips give
  None: MFU is then not reported (``mfu`` returns None). ``dtype``: ``"bfloat16"`` (default),
  ``"tensorfloat32"`` or ``"float32"`` (also ``jnp.bfloat16``/``jnp.float32``, ``"bf16"``,
  ``"tf32"``, ``"fp32"``); see the table's comment for which one a float32 run uses. Multiply by
  ``jax.device_count()`` for the whole job.
  """
  if isinstance(dtype, str):
    key = _DTYPE_ALIASES.get(dtype.lower())
  else:
    key = _DTYPE_ALIASES.get(np.dtype(dtype).name)
  if key is None:
    raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, tensorfloat32 or float32")
  if device is None:
    device = jax.devices()[0]
  if getattr(device, "platform", None) == "cpu":
    return None
  peaks = _peaks_for_kind(str(getattr(device, "device_kind", "")))
  return None if peaks is None else peaks[key]


def mfu(
  tokens_per_second: float | None, flops_per_token: float, peak_flops: float | None = None
) -> float | None:
  """Model FLOPs utilisation: ``tokens_per_second * flops_per_token / peak_flops`` (a fraction).

  ``tokens_per_second`` is the whole job's throughput and ``peak_flops`` the whole job's peak,
  normally ``peak_flops_per_device() * jax.device_count()``; left as None, that product is used
  (bfloat16 peaks). Returns None when the peak is unknown (CPU, unlisted chips) or the throughput
  is None (not yet measured): MFU is then not reported.
  """
  if tokens_per_second is None:
    return None
  if peak_flops is None:
    per_device = peak_flops_per_device()
    if per_device is None:
      return None
    peak_flops = per_device * jax.device_count()
  if peak_flops <= 0:
    raise ValueError(f"peak_flops must be positive, got {peak_flops}")
  return float(tokens_per_second) * float(flops_per_token) / float(peak_flops)


def lm_flops_per_token(
  n_params: int, n_layers: int, dim: int, seq_len: int, attention_window: int | None = 0
) -> float:
  """Training FLOPs per token of a language model: ``6·N + 12·L·E·min(T, window)``.

  ``6·N``: a forward pass costs 2 FLOPs (multiply + add) per parameter per token and the backward
  pass twice that (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1). The
  attention term is that of PaLM (Chowdhery et al. 2022, appendix B, ``6N + 12·L·H·Q·T`` with
  ``H·Q = E``): per layer, token and attended key the scores ``QKᵀ`` and the weighted sum ``AV`` cost
  ``2·E`` FLOPs each forward, times 3 for forward + backward. As in PaLM, causal masking is not
  discounted (each query counts all ``T`` keys); with a sliding window each query counts
  ``min(T, window)`` keys.

  Args:
    n_params: parameters used in matmuls per token (Kaplan et al. count non-embedding parameters;
      an untied output projection is a matmul and counts).
    n_layers: L, layers with softmax attention.
    dim: E, the attention width (heads x head dim).
    seq_len: T, training sequence length.
    attention_window: 0 (default): no softmax attention (recurrent/memory-only layers; the
      attention term vanishes); None: full attention over ``seq_len``; w > 0: sliding window w.

  Neural-memory updates at test time (Titans/MIRAS inner-loop gradients) are not counted: the
  number is the standard transformer-style estimate, comparable across runs, not an exact count.
  """
  if min(n_params, n_layers, dim, seq_len) < 0:
    raise ValueError("n_params, n_layers, dim and seq_len must be non-negative")
  if attention_window is None:
    keys = seq_len
  elif attention_window < 0:
    raise ValueError(f"attention_window must be None or >= 0, got {attention_window}")
  else:
    keys = min(seq_len, attention_window)
  return 6.0 * n_params + 12.0 * n_layers * dim * keys


# ------------------------------------------------------------------------------------------------
# Gate statistics
# ------------------------------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for name, value in tree.items():
    key = f"{prefix}{name}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, key + "/"))
    else:
      out[key] = value
  return out


def gate_statistics(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Mean/min/max of each gate: ``{"gate/<name>/mean": ..., "gate/<name>/min": ..., ...}``.

  ``tree`` maps names to arrays of gate activations (any shape; NumPy or JAX), e.g.
  ``{"lr": lr, "retention": alpha}``; nested dicts give ``gate/<outer>/<inner>/...`` names. Means
  accumulate in float32 (bfloat16 gates included). Concrete inputs give Python floats (one device
  transfer per gate); inside ``jit`` (traced inputs) the values are JAX scalars, so the reductions
  can run in the train step and only three scalars per gate leave the device.
  """
  out: dict[str, Any] = {}
  for name, value in _flatten(tree).items():
    if np.size(value) == 0:
      raise ValueError(f"gate {name!r} is empty")
    if isinstance(value, jax.Array):
      x = value.astype(jnp.float32)
      stats = jnp.stack([jnp.mean(x), jnp.min(x), jnp.max(x)])
      if not isinstance(value, jax.core.Tracer):
        stats = np.asarray(stats).tolist()
      else:
        stats = list(stats)
    else:
      x = np.asarray(value, dtype=np.float32)
      stats = [float(np.mean(x)), float(np.min(x)), float(np.max(x))]
    for stat, v in zip(("mean", "min", "max"), stats, strict=True):
      out[f"gate/{name}/{stat}"] = v
  return out
