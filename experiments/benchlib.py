"""Shared helpers of the benchmarks: analytic FLOP counts and timing (no flags defined here).

The FLOP counts are documented in ``experiments/bench_memory.py``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import miras_jax as mj
from miras_jax.core.exact import exact_form_applies


def _layers(rule, d):
  """(n_in, n_out) of every weight matrix of the rule's memory."""
  if isinstance(rule.memory, mj.LinearMemory):
    return [(d, d)]
  h = rule.memory.expansion * d
  sizes = [d] + [h] * (rule.memory.depth - 1) + [d]
  return list(zip(sizes[:-1], sizes[1:], strict=True))


def flops_per_token(rule, d, b, mode):
  """Analytic FLOPs per token (see the module docstring)."""
  layers = _layers(rule, d)
  momentum = rule.algorithm.has_momentum
  if mode == "serial":
    per = sum((10 + 2 * momentum) * i * o for i, o in layers)
    return per
  if exact_form_applies(rule):
    fwd = (8 * b * b * d + 6 * b * d * d) / b
  else:
    per_chunk = 0
    for i, o in layers:
      per_chunk += (2 + 2 + 2 + 2 * momentum + 2 + 2 * momentum) * b * i * o
      per_chunk += 2 * b * b * i + 2 * b * b * o
    fwd = per_chunk / b
  return fwd * (3 if mode == "fwdbwd" else 1)


def time_fn(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def peak_gflops(n=2048, repeats=5):
  """Measured float32 matmul rate of a jitted n×n×n product (the ceiling of a compute-bound kernel)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  fn = jax.jit(jnp.dot)
  return 2 * n**3 / time_fn(fn, (a, a), repeats) / 1e9
