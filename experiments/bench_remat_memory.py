r"""Compiled fwd+bwd temporary memory of the chunked forms, with and without rematerialisation.

    python -m experiments.bench_remat_memory

Compile-only (XLA's ``memory_analysis().temp_size_in_bytes``; nothing runs), one head, D = 64,
chunk 64, T ∈ {4096, 16384}. Prints one JSON object per line: preset, memory, remat, seq,
temp_bytes, temp_bytes_per_token.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app

import miras_jax as mj

D, CHUNK = 64, 64


def temp_bytes(preset: str, memory: str, t: int, remat: bool) -> int:
  rule = mj.presets.get(preset, **({"memory": memory} if preset == "titans_lmm" else {}))
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  q = spec(t, D)
  g = mj.Gates(**{f: spec(t) for f in rule.used_gates})
  w0 = rule.memory.init(jax.random.key(0), D, D)
  w0 = jax.tree.map(lambda w: spec(*w.shape), w0)

  def loss(w0, q, k, v, g):
    ys, _ = mj.chunked(rule, rule.init_state(w0), q, k, v, g, chunk_size=CHUNK, remat=remat)
    return jnp.sum(ys**2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(w0, q, q, q, g).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def main(argv):
  del argv
  for preset, memory in (
    ("gated_delta_net", "linear"),
    ("titans_lmm", "linear"),
    ("titans_lmm", "mlp"),
  ):
    for remat in (True, False):
      for t in (4096, 16384):
        size = temp_bytes(preset, memory, t, remat)
        row = {"preset": preset, "memory": memory, "remat": remat, "seq": t, "temp_bytes": size}
        print(json.dumps({**row, "temp_bytes_per_token": round(size / t, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
