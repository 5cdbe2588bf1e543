"""Channel-wise gates (MIRAS §5.4): η_t and δ_t in R^{d_v}, one per output channel of the memory.

A channel-wise rate scales each output channel's error signal before it is pulled back through the
memory, ∇̃ = J_Wᵀ (η ⊙ ∂ℓ/∂M(k)) (for a linear memory: diag(η) e kᵀ, one rate per row of W); a
channel-wise Huber threshold switches Yaad's mixture on ‖e ⊘ δ‖ ≤ 1 and steps δ ⊙ sign(e) beyond
it. Checked against numpy writes (float64), in every form, and equal channels against the scalar
gate.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from miras_jax.core.exact import exact_form_applies
from miras_jax.core.reference import chunk_reference
from tests.core.test_presets_reference import (
  LINEAR,
  MIRAS_MLP,
  TITANS_MLP,
  _lp_grad,
  lq_normalise,
  run_reference,
)

T, D = 9, 4


def _draw(preset, rng, **opts):
  rule = mj.presets.get(preset, **opts)
  k = rng.normal(size=(T, D))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  q, v = rng.normal(size=(T, D)), rng.normal(size=(T, D))
  gates = dict(
    lr=rng.uniform(0.02, 0.4, size=(T, D)),
    retention=rng.uniform(0.8, 1.0, size=(T,)),
    momentum=rng.uniform(0.2, 0.9, size=(T,)),
    delta=rng.uniform(0.3, 2.0, size=(T, D)) if rule.channel_delta else None,
  )
  gates = {n: x for n, x in gates.items() if n in rule.used_gates and x is not None}
  if isinstance(rule.memory, mj.LinearMemory):
    w0 = [0.1 * rng.normal(size=(D, D))]
  else:
    w0 = [np.asarray(w, np.float64) for w in rule.memory.init(jax.random.key(0), D, D)]
  return rule, q, k, v, gates, w0


def _jax_inputs(rule, q, k, v, gates, w0):
  w = w0[0] if isinstance(rule.memory, mj.LinearMemory) else tuple(w0)
  state = rule.init_state(jax.tree.map(jnp.asarray, w))
  return state, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mj.Gates(**gates)


# ---- numpy writes with a channel-wise rate -------------------------------------------------------
def write_delta(st, k, v, g):
  w = st["w"][0]
  return {**st, "w": [w - np.outer(g["lr"] * (w @ k - v), k)]}


def write_gated_delta(st, k, v, g):
  w = g["retention"] * st["w"][0]
  return {**st, "w": [w - np.outer(g["lr"] * (w @ k - v), k)]}


def write_mamba2(st, k, v, g):
  return {**st, "w": [g["retention"] * st["w"][0] + np.outer(g["lr"] * v, k)]}


def write_titans(mem, clip=None):
  def write(st, k, v, g):
    e = mem.apply(st["w"], k) - v
    grads = mem.pullback(st["w"], k, g["lr"] * e)
    if clip is not None:  # the clip factor of the unscaled gradient
      norm = np.sqrt(sum(np.sum(x * x) for x in mem.pullback(st["w"], k, e)))
      grads = [x * min(1.0, clip / norm) for x in grads]
    s = [g["momentum"] * s - x for s, x in zip(st["s"], grads, strict=True)]
    w = [g["retention"] * w + sn for w, sn in zip(st["w"], s, strict=True)]
    return {**st, "w": w, "s": s}

  return write


def write_yaad(st, k, v, g):
  e = MIRAS_MLP.apply(st["w"], k) - v
  out = e if np.linalg.norm(e / g["delta"]) <= 1.0 else g["delta"] * np.sign(e)
  grads = MIRAS_MLP.pullback(st["w"], k, g["lr"] * out)
  w = [g["retention"] * w - x for w, x in zip(st["w"], grads, strict=True)]
  return {**st, "w": w, "switched": st["switched"] + [np.linalg.norm(e / g["delta"]) > 1.0]}


def write_moneta(st, k, v, g):
  e = MIRAS_MLP.apply(st["w"], k) - v
  grads = MIRAS_MLP.pullback(st["w"], k, g["lr"] * _lp_grad(e, 3.0, False))
  a = [g["retention"] * a - x for a, x in zip(st["a"], grads, strict=True)]
  return {**st, "a": a, "w": [lq_normalise(x, 4.0) for x in a]}


CASES = {
  "delta_net": (LINEAR, write_delta, {}),
  "gated_delta_net": (LINEAR, write_gated_delta, {}),
  "mamba2": (LINEAR, write_mamba2, {}),
  "titans_lmm": (TITANS_MLP, write_titans(TITANS_MLP), {}),
  "titans_lmm_clip": (TITANS_MLP, write_titans(TITANS_MLP, clip=0.5), {"grad_clip": 0.5}),
  "yaad": (MIRAS_MLP, write_yaad, {}),
  "moneta": (MIRAS_MLP, write_moneta, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_matches_numpy(case):
  mem, write, opts = CASES[case]
  preset = case.removesuffix("_clip")
  with jax.enable_x64(True):
    rule, q, k, v, gates, w0 = _draw(preset, np.random.default_rng(len(case)), **opts)
    st = {"w": w0, "s": [np.zeros_like(w) for w in w0], "a": w0, "switched": []}
    if preset == "moneta":
      st["w"] = [lq_normalise(a, 4.0) for a in w0]
    want, end = run_reference(mem, write, st, q, k, v, gates)
    got, _ = mj.recurrent(rule, *_jax_inputs(rule, q, k, v, gates, w0))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-10)
  if preset == "yaad":  # both branches of the mixture are exercised
    assert 0 < sum(end["switched"]) < T, end["switched"]


@pytest.mark.parametrize("preset", ["delta_net", "gated_delta_net", "mamba2", "rwkv7", "gla"])
def test_exact_chunked_equals_recurrent_with_channel_lr(preset):
  rule, q, k, v, gates, w0 = _draw(preset, np.random.default_rng(1))
  if "retention" in rule.used_gates and rule.retention.channels == "key":
    gates["retention"] = np.random.default_rng(2).uniform(0.8, 1.0, size=(T, D))
  assert exact_form_applies(rule)
  args = _jax_inputs(rule, q, k, v, jax.tree.map(jnp.float32, gates), w0)
  want, end = mj.recurrent(rule, *args)
  for b in (1, 4, 16):
    got, fin = mj.chunked(rule, *args, chunk_size=b)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(fin.weights, end.weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "preset,opts",
  [("titans_lmm", {}), ("titans_lmm", {"grad_clip": 0.5}), ("yaad", {}), ("moneta", {}),
   ("memora", {}), ("ttt_mlp", {})],
)  # fmt: skip
def test_minibatch_chunked_equals_chunk_reference_with_channel_gates(preset, opts):
  with jax.enable_x64(True):
    rule, q, k, v, gates, w0 = _draw(preset, np.random.default_rng(3), **opts)
    if preset == "memora":
      w0 = [np.asarray(jax.nn.softmax(jnp.asarray(w), axis=-1)) for w in w0]
    args = _jax_inputs(rule, q, k, v, gates, w0)
    rec, _ = mj.recurrent(rule, *args)
    ref1, _ = chunk_reference(rule, *args, chunk_size=1)
    np.testing.assert_allclose(np.asarray(ref1), np.asarray(rec), rtol=1e-9, atol=1e-10)
    for b in (1, 4):
      got, _ = mj.chunked(rule, *args, chunk_size=b)
      ref, _ = chunk_reference(rule, *args, chunk_size=b)
      np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("preset", ["delta_net", "titans_lmm", "yaad", "moneta", "memora"])
def test_equal_channels_give_the_scalar_gate(preset):
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    rule, q, k, v, gates, w0 = _draw(preset, rng)
    if preset == "memora":
      w0 = [np.asarray(jax.nn.softmax(jnp.asarray(w), axis=-1)) for w in w0]
    scalar = {n: x[:, 0] if n in ("lr", "delta") else x for n, x in gates.items()}
    equal = {n: np.repeat(x[:, :1], D, 1) if n in ("lr", "delta") else x for n, x in gates.items()}
    for form in ("recurrent", "chunked"):
      fn = mj.recurrent if form == "recurrent" else lambda *a: mj.chunked(*a, chunk_size=4)
      want, _ = fn(rule, *_jax_inputs(rule, q, k, v, scalar, w0))
      got, _ = fn(rule, *_jax_inputs(rule, q, k, v, equal, w0))
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-10)


def test_channel_gates_are_rejected_where_undefined():
  rng = np.random.default_rng(5)
  rule, q, k, v, gates, w0 = _draw("longhorn", rng)  # implicit GD normalises a scalar rate
  with pytest.raises(ValueError, match=r"gates\.lr must have shape \(9,\);"):
    mj.recurrent(rule, *_jax_inputs(rule, q, k, v, gates, w0))
  rule = mj.presets.get("titans_lmm")
  state = rule.init_state(rule.memory.init(jax.random.key(0), D, D))
  bad = mj.Gates(lr=jnp.full((T, D + 1), 0.1), retention=jnp.ones((T,)), momentum=jnp.zeros((T,)))
  with pytest.raises(ValueError, match=r"gates\.lr must have shape \(9,\) or \(9, 4\)"):
    mj.chunked(rule, state, *(jnp.asarray(x) for x in (q, k, v)), bad)
  huber = mj.Rule("h", mj.LinearMemory(), mj.biases.Huber("norm"), mj.retention.NoRetention(),
                  mj.algorithms.GD())  # fmt: skip
  g = mj.Gates(lr=jnp.full((T,), 0.1), delta=jnp.ones((T, D)))
  with pytest.raises(ValueError, match=r"gates\.delta must have shape \(9,\);"):
    mj.recurrent(
      huber, huber.init_state(jnp.zeros((D, D))), *(jnp.asarray(x) for x in (q, k, v)), g
    )
