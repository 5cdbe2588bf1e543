r"""Titans LMM layer, fwd+bwd: miras_jax against lucidrains' titans-pytorch ``NeuralMemory``.

    make bench-peer        # installs torch 2.13 (CPU) and titans-pytorch, tunes malloc, runs this
    python -m experiments.bench_peer_titans_pytorch --steps=5

Both sides build the same layer at dim 256, 4 heads × 64, a 2-layer memory MLP (expansion 4,
GELU, LayerNorm + residual: titans-pytorch's default ``ResidualNorm(MemoryMLP)``, our
``MLPMemory(residual_ln=True)``), chunk 64, momentum on, B=4, T=1024: RMSNorm → q/k/v projections
(256 → 256) → per-head memory → output projection, with the learning rate per token and momentum
and forgetting gates from linear maps of the input. One step is forward, loss = Σ out², backward
to every parameter. Both run in one process on the same malloc setting; the peer in its best
setting here (``torch.compile``; the first compiled step is excluded from the timing).

Semantics differ, and the rows say which: ``write=token`` is the papers' rule (one write per token,
gradients at the previous chunk's state), ``write=chunk`` one aggregated write per chunk
(titans-pytorch's granularity; it takes the gradients of every chunk at the weights the call
started from, we at the previous chunk's state). FLOPs are the analytic counts of
``experiments.bench_memory`` for the memory plus 2·4·256² per token for the four projections
(×3 for fwd+bwd).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import miras_jax as mj
from experiments.benchlib import flops_per_token, peak_gflops, time_fn

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 5, "Timed steps per side (the median is reported).")
flags.DEFINE_integer("batch", 4, "Batch size.")
flags.DEFINE_integer("seq", 1024, "Sequence length.")
flags.DEFINE_integer("dim", 256, "Model dim.")
flags.DEFINE_integer("heads", 4, "Heads (dim_head = dim / heads).")
flags.DEFINE_integer("chunk", 64, "Chunk size.")
flags.DEFINE_bool("peer", True, "Also time titans-pytorch (needs torch and titans-pytorch).")
flags.DEFINE_integer("threads", 2, "Threads for torch.")

MEMORY = mj.MLPMemory(depth=2, expansion=4, activation="gelu", residual_ln=True)


def _rms(x, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def init_layer(key, dim, heads):
  d = dim // heads
  ks = jax.random.split(key, 7)
  lin = lambda k, i, o: jax.random.normal(k, (i, o), jnp.float32) / np.sqrt(i)
  mem = MEMORY.init(ks[6], d, d)
  return {
    "wq": lin(ks[0], dim, dim),
    "wk": lin(ks[1], dim, dim),
    "wv": lin(ks[2], dim, dim),
    "wo": lin(ks[3], dim, dim),
    "w_gates": lin(ks[4], dim, 3 * heads),  # lr, momentum, forget per head
    "b_gates": jnp.asarray([-2.0] * heads + [2.0] * heads + [-4.0] * heads, jnp.float32),
    "memory": jax.tree.map(lambda w: jnp.broadcast_to(w, (heads, *w.shape)), mem),
  }


def layer(params, x, heads, chunk, write):
  """x: [B, T, E] → [B, T, E] through a multi-head Titans LMM memory."""
  rule = mj.presets.get("titans_lmm", memory=MEMORY)
  b, t, e = x.shape
  h = _rms(x)
  split = lambda y: y.reshape(b, t, heads, e // heads).transpose(0, 2, 1, 3)  # [B, H, T, D]
  q, k, v = (split(h @ params[n]) for n in ("wq", "wk", "wv"))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  gates = jax.nn.sigmoid(h @ params["w_gates"] + params["b_gates"])  # [B, T, 3H]
  lr, mom, forget = (gates[..., i * heads : (i + 1) * heads].transpose(0, 2, 1) for i in range(3))

  def one(w0, q, k, v, lr, mom, forget):
    g = mj.Gates(lr=lr, momentum=mom, retention=1.0 - forget)
    return mj.chunked(rule, rule.init_state(w0), q, k, v, g, chunk_size=chunk, write=write)[0]

  per_head = jax.vmap(one)  # heads
  ys = jax.vmap(per_head, in_axes=(None, 0, 0, 0, 0, 0, 0))(
    params["memory"], q, k, v, lr, mom, forget
  )
  return ys.transpose(0, 2, 1, 3).reshape(b, t, e) @ params["wo"]


def jax_step(heads, chunk, write):
  def loss(params, x):
    return jnp.sum(layer(params, x, heads, chunk, write) ** 2)

  return jax.jit(jax.value_and_grad(loss))


def time_jax(x, params, write):
  return time_fn(jax_step(FLAGS.heads, FLAGS.chunk, write), (params, x), FLAGS.steps)


def time_peer(x_np):
  import torch
  from titans_pytorch import NeuralMemory

  torch.set_num_threads(FLAGS.threads)
  d = FLAGS.dim // FLAGS.heads
  mem = NeuralMemory(dim=FLAGS.dim, chunk_size=FLAGS.chunk, heads=FLAGS.heads, dim_head=d)
  compiled = torch.compile(mem)
  x = torch.from_numpy(x_np)

  def step():
    out, _ = compiled(x)
    out.pow(2).sum().backward()

  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), first, torch.__version__


def main(argv):
  del argv
  peak = peak_gflops()
  b, t, e, hds = FLAGS.batch, FLAGS.seq, FLAGS.dim, FLAGS.heads
  x = np.random.default_rng(0).normal(size=(b, t, e)).astype(np.float32)
  params = init_layer(jax.random.key(0), e, hds)
  rule = mj.presets.get("titans_lmm", memory=MEMORY)
  proj = 3 * 2 * 4 * e * e  # four projections, fwd+bwd
  malloc = {
    k: os.environ.get(k)
    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
  }
  common = {
    "batch": b,
    "seq": t,
    "dim": e,
    "heads": hds,
    "chunk": FLAGS.chunk,
    "malloc": malloc,
    "peak_gflops": round(peak, 1),
  }
  for write in ("token", "chunk"):
    seconds = time_jax(jnp.asarray(x), params, write)
    mem_flops = flops_per_token(rule, e // hds, FLAGS.chunk, "fwdbwd") * hds
    if write == "chunk":  # no in-chunk coefficient matrix and no dual-form reads of W_0 + S_0
      mem_flops = (
        3 * sum(8 * i * o for i, o in ((e // hds, 4 * e // hds), (4 * e // hds, e // hds))) * hds
      )
    fpt = mem_flops + proj
    print(json.dumps({
      "impl": "miras_jax", "write": write, "seconds": round(seconds, 4),
      "tokens_per_s": round(b * t / seconds, 1), "gflops": round(fpt * b * t / seconds / 1e9, 2),
      "flops_per_token": fpt, **common,
    }), flush=True)  # fmt: skip
  if FLAGS.peer:
    seconds, first, version = time_peer(x)
    print(json.dumps({
      "impl": "titans-pytorch", "write": "chunk (grads at the call's initial weights)",
      "seconds": round(seconds, 4), "tokens_per_s": round(b * t / seconds, 1),
      "first_step_s": round(first, 1), "torch": version, "compiled": True, **common,
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
  app.run(main)
