"""The training loop's one-line progress report:
``step 120/1000  loss 2.3451  12.3k tok/s  ETA 1m23s``."""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["Progress"]


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
