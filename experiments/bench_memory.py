r"""Throughput of the memory forms: chunked (fwd, fwd+bwd) and token-serial.

    python -m experiments.bench_memory --suite=default            # the suite of docs/benchmarks.md
    python -m experiments.bench_memory --preset=gated_delta_net --seq=4096 --mode=fwdbwd

Prints one JSON object per line: preset, memory, batch, heads, d_head, seq, chunk, mode,
seconds (median), tokens_per_s, gflops (achieved, from the analytic FLOP counts below),
flops_per_token and peak_gflops (a jitted float32 2048² matmul measured in the same run), device.
(XLA's own cost analysis is not used: it counts the body of a scan once.)

FLOP counts (multiply-adds count 2; elementwise work and the b³ decay-mask products are left out,
so ``gflops`` understates the work slightly). Per chunk of b tokens, head dim D (= d_k = d_v):

- exact chunkwise delta rule (scalar decay): P = QKᵀ and M = KKᵀ: 4b²D; triangular solve with
  2D right-hand sides: 2b²D; the W_0-dependent matmuls (e^L K) W_0ᵀ, (e^L Q) W_0ᵀ and the state
  update wᵀK: 6bD²; P w: 2b²D. Total 8b²D + 6bD².
- mini-batch, one layer n_in → n_out with gradient factors g_i x_iᵀ: forward of the keys at the base
  2b·n_in·n_out, backward signal 2b·n_in·n_out (between layers), reads a_t W_0 h (+ b_t S_0 h with
  momentum) 2b·n_in·n_out each, H Xᵀ 2b²n_in, (C ⊙ ·) G 2b²n_out, end state W (and S) 2b·n_in·n_out
  each. For the MLP the forward of the queries is counted once per layer as part of the reads.
- token-serial: per token and layer, forward 2·n_in·n_out, backward 4·n_in·n_out, weight write
  2·n_in·n_out (plus momentum), read 2·n_in·n_out.
- fwd+bwd counts 3× the forward.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import miras_jax as mj
from experiments.benchlib import flops_per_token, peak_gflops, time_fn

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "suite", None, ["default", "quick"], "A predefined list of runs (overrides the rest)."
)
flags.DEFINE_string("preset", "gated_delta_net", "Preset name.")
flags.DEFINE_enum(
  "memory", "linear", ["linear", "mlp"], "Memory: linear or the preset's MLP (depth 2)."
)
flags.DEFINE_integer("batch", 4, "Batch size B.")
flags.DEFINE_integer("heads", 4, "Heads H.")
flags.DEFINE_integer("d_head", 64, "Head dim D (d_k = d_v).")
flags.DEFINE_integer("seq", 4096, "Sequence length T.")
flags.DEFINE_integer("chunk", 64, "Chunk size b.")
flags.DEFINE_enum("mode", "fwd", ["fwd", "fwdbwd", "serial"], "What to time.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (the median is reported).")


MEMORY_OPTION = ("ttt_linear", "ttt_mlp", "titans_lmm", "moneta", "yaad", "memora")


def make_case(preset, memory, batch, heads, d, t, seed=0):
  opts = {"memory": memory} if preset in MEMORY_OPTION else {}
  rule = mj.presets.get(preset, **opts)
  rng = np.random.default_rng(seed)
  shape = (batch, heads, t, d)
  k = rng.normal(size=shape).astype(np.float32)
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  q = rng.normal(size=shape).astype(np.float32) / np.sqrt(d)
  v = rng.normal(size=shape).astype(np.float32)
  g = mj.Gates(
    lr=rng.uniform(0.05, 0.2, size=shape[:3]).astype(np.float32),
    retention=rng.uniform(0.95, 1.0, size=shape[:3]).astype(np.float32),
    momentum=rng.uniform(0.5, 0.9, size=shape[:3]).astype(np.float32),
    delta=rng.uniform(0.5, 1.5, size=shape[:3]).astype(np.float32),
  )
  g = mj.Gates(**{f: getattr(g, f) if f in rule.used_gates else None for f in mj.Gates._fields})
  if isinstance(rule.memory, mj.LinearMemory):
    w0 = np.zeros((batch, heads, d, d), np.float32)
    if preset == "memora":
      w0 += 1.0 / d
  else:
    one = rule.memory.init(jax.random.key(seed), d, d)
    if preset == "memora":
      one = jax.tree.map(lambda w: jax.nn.softmax(w, axis=-1), one)
    w0 = jax.tree.map(lambda w: jnp.broadcast_to(w, (batch, heads, *w.shape)), one)
  return rule, w0, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jax.tree.map(jnp.asarray, g)


def build(rule, mode, chunk):
  """A jitted function of (w0, q, k, v, gates) for the mode, vmapped over batch and heads."""

  def one(w0, q, k, v, g):
    state = rule.init_state(w0)
    if mode == "serial":
      return mj.recurrent(rule, state, q, k, v, g)[0]
    return mj.chunked(rule, state, q, k, v, g, chunk_size=chunk)[0]

  batched = jax.vmap(jax.vmap(one))
  if mode != "fwdbwd":
    return jax.jit(batched)

  def loss(w0, q, k, v, g):
    return jnp.sum(batched(w0, q, k, v, g) ** 2)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def run_one(preset, memory, batch, heads, d, t, chunk, mode, repeats, peak):
  rule, *args = make_case(preset, memory, batch, heads, d, t)
  fn = build(rule, mode, chunk)
  seconds = time_fn(fn, args, repeats)
  tokens = batch * heads * t
  fpt = flops_per_token(rule, d, chunk, mode)
  return {
    "preset": preset,
    "memory": memory if not isinstance(rule.memory, mj.MLPMemory) else rule.memory.name,
    "batch": batch,
    "heads": heads,
    "d_head": d,
    "seq": t,
    "chunk": chunk if mode != "serial" else None,
    "mode": mode,
    "seconds": round(seconds, 5),
    "tokens_per_s": round(batch * t / seconds, 1),
    "head_tokens_per_s": round(tokens / seconds, 1),
    "flops_per_token": fpt,
    "gflops": round(fpt * tokens / seconds / 1e9, 2),
    "peak_gflops": round(peak, 1),
    "device": jax.devices()[0].device_kind,
  }


SUITES = {
  "default": [
    (p, m, 4, 4, 64, t, 64, mode)
    for p, m in (
      ("gated_delta_net", "linear"),
      ("titans_lmm", "linear"),
      ("titans_lmm", "mlp"),
      ("moneta", "linear"),
    )
    for t in (1024, 4096, 16384)
    for mode in ("fwd", "fwdbwd")
  ]
  + [
    (p, m, 4, 4, 64, 4096, 64, "serial")
    for p, m in (
      ("gated_delta_net", "linear"),
      ("titans_lmm", "linear"),
      ("titans_lmm", "mlp"),
      ("moneta", "linear"),
    )
  ],
  "quick": [
    ("gated_delta_net", "linear", 1, 2, 32, 512, 32, "fwd"),
    ("titans_lmm", "mlp", 1, 2, 32, 512, 32, "fwdbwd"),
    ("titans_lmm", "linear", 1, 2, 32, 512, 32, "serial"),
  ],
}


def main(argv):
  del argv
  peak = peak_gflops()
  runs = (
    SUITES[FLAGS.suite]
    if FLAGS.suite
    else [
      (
        FLAGS.preset,
        FLAGS.memory,
        FLAGS.batch,
        FLAGS.heads,
        FLAGS.d_head,
        FLAGS.seq,
        FLAGS.chunk,
        FLAGS.mode,
      )
    ]
  )
  for run in runs:
    print(json.dumps(run_one(*run, repeats=FLAGS.repeats, peak=peak)), flush=True)


if __name__ == "__main__":
  app.run(main)
