"""``miras_jax.train.progress``: ``Progress`` with an injected clock: line format, the first (compile)
interval kept out of the rate, the moving window, ``every``, ``summary``; the format helpers."""

from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.train import progress
from miras_jax.train.progress import Progress

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
  assert progress._format_rate(950) == "950"
  assert progress._format_rate(12_345) == "12.3k"
  assert progress._format_rate(2.5e6) == "2.5M"
  assert progress._format_duration(83) == "1m23s"
  assert progress._format_duration(59.6) == "1m00s"
  assert progress._format_duration(5000) == "1h23m"
  assert progress._format_duration(90_000) == "1d01h"
