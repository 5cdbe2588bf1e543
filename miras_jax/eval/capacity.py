"""Recall capacity of a memory before any outer training: write n pairs, read them back.

For a memory block as the models build it (``nn.NeuralMemory``: its rule, its initial memory, its
``max_lr`` cap and the gate values its gate projections give at initialisation), write ``n`` random
pairs ``(k_i, v_i)`` in one pass with a constant inner learning rate ``η`` and retention 1, then
read with the same keys: ``ŷ_i = M_n(k_i)``. Keys are unit vectors (the block ℓ2-normalises them),
values ``N(0, I)``. Two scores, averaged over pairs and trials:

- ``cosine``: cos(ŷ_i, v_i);
- ``accuracy``: the fraction of i whose nearest value (Euclidean) among ``v_1..v_n`` is ``v_i``
  (chance 1/n).

It measures whether a memory can hold what MQAR asks (8 pairs at head dim 32) before the outer
loop has shaped its gates and initial memory. ``experiments/bench_capacity.py`` runs it for every
preset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import miras_jax as mj
from miras_jax.nn.memory import GATE_INIT, NeuralMemory


def block_memory(preset: str, d: int, *, seed: int = 0, **block_options) -> NeuralMemory:
  """A one-head ``NeuralMemory`` of head dim ``d`` (model width ``d``) for ``preset``."""
  return NeuralMemory(d, 1, d, preset=preset, rngs=nnx.Rngs(seed), **block_options)


def init_gate_values(block: NeuralMemory) -> dict[str, float]:
  """The value each gate of ``block`` takes at initialisation for an input x = 0 (its bias)."""
  return {
    name: float(act(jnp.float32(block.gate_bias(name)))) for name, (act, _) in GATE_INIT.items()
  }


def recall_gates(block: NeuralMemory, n: int, lr: float) -> mj.Gates:
  """The gates of ``n`` writes: constant ``lr``, retention 1 (every channel), momentum and δ at
  the block's initial gate values; ``None`` where the rule takes no such gate."""
  rule, d = block.rule, block.head_dim
  init = init_gate_values(block)
  fill = lambda x, width=1: jnp.full((n,) if width == 1 else (n, width), x, jnp.float32)
  values = {
    "lr": fill(lr),
    "momentum": fill(init["momentum"]),
    "delta": fill(init["delta"]),
    "retention": fill(1.0, block.gate_width("retention") if "retention" in rule.used_gates else 1),
    "retention_value": fill(1.0, d),
  }
  return mj.Gates(**{f: values[f] if f in rule.used_gates else None for f in mj.Gates._fields})


def read_back(block: NeuralMemory, k, v, lr: float, *, chunk_size: int | None = None, gates=None):
  """Writes the pairs ``k, v: [n, d]`` into the block's initial memory (head 0) with
  ``recall_gates`` through ``miras_jax.chunked`` (chunk size: the block's unless given; 1 is
  token-serial), then reads every key: returns ``M_n(k_i)``, ``[n, d]``. ``gates``: precomputed
  ``recall_gates(block, n, lr)``."""
  rule = block.rule
  chunk = block.chunk_size if chunk_size is None else chunk_size
  w0 = jax.tree.map(lambda w: w[0], block.initial_weights())
  gates = recall_gates(block, k.shape[0], lr) if gates is None else gates
  _, state = mj.chunked(rule, rule.init_state(w0), k, k, v, gates, chunk_size=chunk)
  return jax.vmap(lambda x: rule.read(state, x))(k)


def scores(y, v):
  """(mean cosine(y_i, v_i), fraction of i whose nearest v_j (Euclidean) is v_i): ``[n, d]``."""
  cos = jnp.sum(y * v, -1) / (jnp.linalg.norm(y, axis=-1) * jnp.linalg.norm(v, axis=-1) + 1e-12)
  dist = jnp.sum(jnp.square(y[:, None, :] - v[None, :, :]), -1)  # [n, n]
  hit = jnp.argmin(dist, axis=-1) == jnp.arange(v.shape[0])
  return jnp.mean(cos), jnp.mean(hit.astype(jnp.float32))


def draw_pairs(key, n: int, d: int):
  """``n`` unit keys and ``N(0, I)`` values, ``[n, d]`` each."""
  kk, kv = jax.random.split(key)
  k = jax.random.normal(kk, (n, d))
  return k / jnp.linalg.norm(k, axis=-1, keepdims=True), jax.random.normal(kv, (n, d))


def recall(
  block: NeuralMemory,
  n: int,
  lrs,
  *,
  trials: int = 32,
  seed: int = 0,
  chunk_size: int | None = None,
) -> list[dict[str, float]]:
  """Mean ``scores`` of reading back ``n`` pairs written with each rate of ``lrs`` (the same
  ``trials`` draws for every rate; one compile for all of them)."""
  lrs = [float(x) for x in np.atleast_1d(lrs)]
  if n < 1:
    raise ValueError(f"n must be >= 1; got {n}")
  if not all(x >= 0 for x in lrs):
    raise ValueError(f"lrs must be >= 0; got {lrs}")
  gates = recall_gates(block, n, 0.0)  # outside the trace: the initial gate values are concrete

  def one(key, lr):
    k, v = draw_pairs(key, n, block.head_dim)
    g = gates._replace(lr=jnp.full((n,), lr, jnp.float32))
    return scores(read_back(block, k, v, lr, chunk_size=chunk_size, gates=g), v)

  keys = jax.random.split(jax.random.key(seed), trials)
  per_lr = jax.vmap(lambda lr: jax.vmap(lambda key: one(key, lr))(keys))
  cos, acc = jax.jit(per_lr)(jnp.asarray(lrs, jnp.float32))  # [L, trials]
  return [
    {"cosine": float(c), "accuracy": float(a)}
    for c, a in zip(jnp.mean(cos, -1), jnp.mean(acc, -1), strict=True)
  ]
