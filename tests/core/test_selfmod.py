"""Self-modifying Titans (Nested Learning notes §6; test criteria §8.7).

The reference is an independent float64 numpy token loop written from the docstring of
``miras_jax.core.selfmod`` (no library code is called): residual SiLU memories
``M(z) = z + W_1 silu(W_2 z)``, the hand-written gradient of ½‖M_W(k) − v̂‖² w.r.t. (W_2, W_1) with
v̂ = M(v) held fixed, ℓ2 normalisation ``z / sqrt(Σz² + 1e-6)`` of q, k and v, scalar gates read out
of M_eta and M_alpha, the per-layer DGD write W ← W(αI − r x xᵀ) − r G with r = η/(1 + η‖x‖²) and
layer input x = k for W_2, x = h = silu(W_2 k) (at the base) for W_1, the rank-1 term on the current
W (plain GD: r = η and no rank-1 term), momentum over the surprise only (S ← μS − r G,
W ← W(αI − r x xᵀ) + S), and every read and gradient at the memory's state of its last chunk
boundary (chunk groups: M_memory alone, the other four together).
``selfmod_chunked`` (float32, chunked) must match it to 1e-5 relative.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.core.selfmod import (
  MEMORIES,
  SelfModOuter,
  SelfModState,
  SelfModTitans,
  selfmod_chunked,
  selfmod_recurrent,
)

D, M = 4, 8
T = 22  # a multiple of neither 4 nor 8 (the chunk sizes below)
MAX_LR = 0.3
RTOL = 1e-5
EPS = 1e-6  # inside rsqrt(Σ x² + eps)


# ---- numpy reference ----------------------------------------------------------------------------
def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _silu(x):
  return x * _sigmoid(x)


def _silu_grad(x):
  s = _sigmoid(x)
  return s * (1.0 + x * (1.0 - s))


def _normalize(z):
  return z / np.sqrt(z @ z + EPS)


def _mem(w, z):
  w2, w1 = w
  return z + w1 @ _silu(w2 @ z)


def _mem_grad(w, k, target):
  """Per layer (W_2, W_1): (∇_W of ½‖k + W_1 silu(W_2 k) − target‖², the layer's input), by hand."""
  w2, w1 = w
  a = w2 @ k
  r = _mem(w, k) - target
  h = _silu(a)
  return (np.outer((w1.T @ r) * _silu_grad(a), k), k), (np.outer(r, h), h)


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _gates(rule, base, outer, x):
  """(k, v, η, α) of one token from the chunk-start memories."""
  k = _normalize(_mem(base["k"], x))
  v = _normalize(_mem(base["v"], x))
  eta = rule.max_lr * _sigmoid(outer.eta_w @ _mem(base["eta"], x) + outer.eta_b)
  alpha = (
    _sigmoid(outer.alpha_w @ _mem(base["alpha"], x) + outer.alpha_b) if rule.retention else 1.0
  )
  return k, v, eta, alpha


def np_selfmod(rule, state, outer, x, q):
  """Token-serial self-modifying Titans in float64; ``state``: (weights, base, momentum, position)
  as nested dicts / tuples (momentum None without it) → (outputs [T, d], state)."""
  weights, base, mom, pos = _f64(tuple(state))
  weights, base = dict(weights), dict(base)
  mom = None if mom is None else dict(mom)
  outer = _f64(outer)
  mu = _sigmoid(outer.momentum)
  outs = []
  for xt, qt in zip(_f64(x), _f64(q), strict=True):
    k, v, eta, alpha = _gates(rule, base, outer, xt)
    outs.append(_mem(base["memory"], _normalize(qt)))
    for n in rule.adaptive:
      new_w, new_s = [], []
      for i, (g, xin) in enumerate(_mem_grad(base[n], k, _mem(base[n], v))):
        w = weights[n][i]
        if rule.dgd:
          r = eta / (1.0 + eta * (xin @ xin))
          kept = alpha * w - r * np.outer(w @ xin, xin)
        else:
          r, kept = eta, alpha * w
        if mom is None:
          new_w.append(kept - r * g)
        else:
          new_s.append(mu * mom[n][i] - r * g)
          new_w.append(kept + new_s[-1])
      weights[n] = tuple(new_w)
      if mom is not None:
        mom[n] = tuple(new_s)
    pos = pos + 1
    for n in MEMORIES:
      if pos % (rule.memory_chunk_size if n == "memory" else rule.chunk_size) == 0:
        base[n] = weights[n]
  return np.stack(outs), (weights, base, mom, int(pos))


# ---- inputs -------------------------------------------------------------------------------------
def _inputs(seed=0, t=T):
  rng = np.random.default_rng(seed)
  weights = {
    n: (rng.normal(size=(M, D)) / np.sqrt(D), 0.5 * rng.normal(size=(D, M)) / np.sqrt(M))
    for n in MEMORIES
  }
  outer = SelfModOuter(
    eta_w=0.5 * rng.normal(size=D), eta_b=np.asarray(0.0), alpha_w=0.5 * rng.normal(size=D),
    alpha_b=np.asarray(5.0), momentum=np.asarray(0.0),
  )  # fmt: skip
  x, q = rng.normal(size=(t, D)), rng.normal(size=(t, D))
  x[3::10] *= 1e-3 / np.linalg.norm(x[3::10], axis=-1, keepdims=True)  # ‖·‖² ~ eps: pins the eps
  q[7::10] *= 1e-3 / np.linalg.norm(q[7::10], axis=-1, keepdims=True)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return jax.tree.map(f32, weights), jax.tree.map(f32, outer), f32(x), f32(q)


def _assert_state_close(state, want, rtol=RTOL):
  weights, base, mom, pos = want
  for field, got, ref in (("weights", state.weights, weights), ("base", state.base, base)):
    for n in MEMORIES:
      for i, (g, r) in enumerate(zip(got[n], ref[n], strict=True)):
        np.testing.assert_allclose(
          np.asarray(g), r, rtol=rtol, atol=rtol, err_msg=f"{field}[{n!r}][{i}]"
        )
  assert (state.momentum is None) == (mom is None)
  if mom is not None:
    for n in MEMORIES:
      for g, r in zip(state.momentum[n], mom[n], strict=True):
        np.testing.assert_allclose(np.asarray(g), r, rtol=rtol, atol=rtol, err_msg=f"S[{n!r}]")
  assert int(state.position) == pos


_apply = jax.jit(selfmod_chunked, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _forms(rule, state, x, q, outer):
  """One program: ``selfmod_chunked`` on all tokens, two calls split at the unaligned position 5,
  and the token loop ``selfmod_recurrent``."""
  full = selfmod_chunked(rule, state, x, q, outer)
  y1, st1 = selfmod_chunked(rule, state, x[:5], q[:5], outer)
  y2, st2 = selfmod_chunked(rule, st1, x[5:], q[5:], outer)
  return full, (jnp.concatenate([y1, y2]), st2), selfmod_recurrent(rule, state, x, q, outer)


# (chunk_size, memory_chunk_size, flags): every flag off once, and subsets of adaptive memories
CONFIGS = {
  "c1_1": SelfModTitans(1, 1, MAX_LR),
  "c2_4": SelfModTitans(2, 4, MAX_LR),
  "c4_2": SelfModTitans(4, 2, MAX_LR),
  "c2_4_no_dgd": SelfModTitans(2, 4, MAX_LR, dgd=False),
  "c4_2_no_retention_adaptive_v_alpha_memory": SelfModTitans(
    4, 2, MAX_LR, retention=False, adaptive=("v", "alpha", "memory")
  ),
  "c2_4_no_momentum_adaptive_memory": SelfModTitans(
    2, 4, MAX_LR, momentum=False, adaptive=("memory",)
  ),
}
FORMS = ("c2_4", "c4_2")  # configurations also run in pieces and as the token loop


@functools.cache
def _run(name):
  rule = CONFIGS[name]
  weights, outer, x, q = _inputs()
  state = rule.init_state(weights)
  if name in FORMS:
    full, pieces, ref = _forms(rule, state, x, q, outer)
  else:
    full, pieces, ref = _apply(rule, state, x, q, outer), None, None
  return dict(
    rule=rule, weights=weights, outer=outer, x=x, q=q, state=state, full=full, pieces=pieces,
    ref=ref, want=np_selfmod(rule, state, outer, x, q),
  )  # fmt: skip


# ---- 1. the chunked form against the numpy token loop ---------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_selfmod_chunked_matches_the_numpy_token_loop(name):
  """Outputs and the final weights, bases, momenta and position equal the float64 token loop; the
  gradient writes must matter for the outputs (else the comparison is vacuous): the loop with
  max_lr → 0 (retention decay only) differs by more than 1e-2."""
  r = _run(name)
  want_o, want_state = r["want"]
  o, state = r["full"]
  np.testing.assert_allclose(np.asarray(o), want_o, rtol=RTOL, atol=RTOL)
  _assert_state_close(state, want_state)
  no_lr = dataclasses.replace(r["rule"], max_lr=1e-9)
  decay_only, _ = np_selfmod(no_lr, r["state"], r["outer"], r["x"], r["q"])
  assert np.max(np.abs(want_o - decay_only)) > 1e-2, "the gradient writes do not matter"


@pytest.mark.parametrize("name", FORMS)
def test_calls_in_pieces_equal_one_call(name):
  """5 then 17 tokens (the second call starts inside a chunk of both groups) equal one call."""
  r = _run(name)
  chex.assert_trees_all_close(r["pieces"], r["full"], rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("name", FORMS)
def test_chunked_equals_the_token_loop(name):
  """§8.7b: the chunked form (vmapped reads and gradients at the chunk-start state, then the write
  recurrence) equals ``selfmod_recurrent`` (one scan step per token); chunking does change the
  result compared with chunk sizes 1 (the frozen bases matter)."""
  r = _run(name)
  chex.assert_trees_all_close(r["ref"], r["full"], rtol=RTOL, atol=RTOL)
  assert not np.allclose(np.asarray(r["full"][0]), np.asarray(_run("c1_1")["full"][0]), atol=1e-3)


# ---- 2. one token with chunk sizes 1 is a DGD step ------------------------------------------------
# chunk sizes 1, no retention (α = 1): shared by the one-token test and the memorisation toy
TOKEN_RULE = SelfModTitans(1, 1, 0.5, retention=False)


def test_one_token_write_is_the_per_layer_dgd_proximal_step():
  """§3 / §8.2 flavour. Chunk sizes 1, α = 1, first token (S_0 = 0). Each layer W with input x
  (k for W_2, h = silu(W_2 k) for W_1) has the gradient δ xᵀ, δ = ∂ℓ/∂(W x); its write must be
  the proximal step argmin_W ½‖W x + δ‖² + ‖W − W_0‖²/(2η), solved directly
  (W(x xᵀ + I/η) = −δ xᵀ + W_0/η; the exact solution for any ‖x‖), and the momentum holds only the
  surprise S_1 = −η' δ xᵀ, η' = η/(1 + η‖x‖²); for every memory (each has its own δ)."""
  weights, outer, x, q = _inputs(seed=1, t=1)
  _, state = _apply(TOKEN_RULE, TOKEN_RULE.init_state(weights), x, q, outer)
  w, o, xt = _f64(weights), _f64(outer), _f64(x[0])
  k, v, eta, _ = _gates(TOKEN_RULE, w, o, xt)
  assert 0.05 < eta < 0.5 and abs(k @ k - 1.0) < 1e-5
  for n in MEMORIES:
    w2, w1 = w[n]
    pre = w2 @ k
    h = _silu(pre)
    e = k + w1 @ h - _mem(w[n], v)  # ∂ℓ/∂(W_1 h)
    delta2 = (w1.T @ e) * _silu_grad(pre)  # ∂ℓ/∂(W_2 k)
    for i, (w0, delta, xin) in enumerate(((w2, delta2, k), (w1, e, h))):
      lhs = np.outer(xin, xin) + np.eye(len(xin)) / eta
      want = np.linalg.solve(lhs.T, (np.outer(-delta, xin) + w0 / eta).T).T
      np.testing.assert_allclose(np.asarray(state.weights[n][i]), want, rtol=1e-5, atol=1e-6)
      surprise = -eta / (1.0 + eta * (xin @ xin)) * np.outer(delta, xin)
      np.testing.assert_allclose(np.asarray(state.momentum[n][i]), surprise, rtol=1e-5, atol=1e-6)
      assert np.max(np.abs(want - w0)) > 1e-3, (n, i)


# ---- 3. causality -------------------------------------------------------------------------------
def test_causal():
  """§8.7c: perturbing x_{t'}, q_{t'} for t' > t leaves o_{≤t} unchanged in the chunked form, the
  calls in pieces and the token loop; o_{t+1} does change."""
  r = _run("c2_4")
  rng = np.random.default_rng(5)
  for t in (2, 5, 9, 14):
    noise = jnp.asarray(rng.normal(size=(2, T - t - 1, D)), jnp.float32)
    x2, q2 = r["x"].at[t + 1 :].add(noise[0]), r["q"].at[t + 1 :].add(noise[1])
    out = _forms(r["rule"], r["state"], x2, q2, r["outer"])
    for name, (o2, _), (o, _) in zip(
      ("full", "pieces", "ref"), out, (r["full"], r["pieces"], r["ref"]), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(o2[: t + 1]), np.asarray(o[: t + 1]), name)
      assert not np.allclose(np.asarray(o2[t + 1]), np.asarray(o[t + 1])), name


# ---- 4. memories outside ``adaptive`` stay at their initial state -------------------------------------
@pytest.mark.parametrize(
  "name", ["c4_2_no_retention_adaptive_v_alpha_memory", "c2_4_no_momentum_adaptive_memory"]
)
def test_non_adaptive_memories_keep_their_initial_weights(name):
  """§8.7d: memories not in ``adaptive`` keep W_□,0 (bit-exact, weights, bases and momenta); the
  adaptive ones move."""
  r = _run(name)
  state = r["full"][1]
  for n in MEMORIES:
    if n in r["rule"].adaptive:
      assert not np.allclose(np.asarray(state.weights[n][0]), np.asarray(r["weights"][n][0]))
    else:
      chex.assert_trees_all_equal(state.weights[n], r["weights"][n])
      chex.assert_trees_all_equal(state.base[n], r["weights"][n])
      if state.momentum is not None:
        chex.assert_trees_all_equal(
          state.momentum[n], jax.tree.map(jnp.zeros_like, r["weights"][n])
        )


# ---- 5. memorisation toy --------------------------------------------------------------------------
def test_repeated_context_is_memorised():
  """§8.7e: x cycles through 3 fixed unit-norm inputs for 24 tokens (chunk sizes 1, one call per
  token). The inner loss of M_memory, ‖M_memory(k_t) − v̂_t‖ at the state token t reads, is much
  smaller in the last cycle than in the first. α = 1: with retention, decay alone would shrink every
  memory towards the identity, where k = v = normalize(x) and the loss vanishes without any write.
  (Observed with the numpy loop, max_lr 0.5: last/first 0.08–0.25 over 10 random seeds, while it
  stays put without writes; the drop comes from the k and v memories adapting, M_memory alone
  barely moves since its self-generated target M_memory(v) moves with it.)"""
  weights, outer, _, _ = _inputs(seed=0)
  rng = np.random.default_rng(100)
  x = rng.normal(size=(3, D))
  x = jnp.asarray(np.tile(x / np.linalg.norm(x, axis=-1, keepdims=True), (8, 1)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(24, D)), jnp.float32)
  state, losses = TOKEN_RULE.init_state(weights), []
  for t in range(24):
    w = _f64(state.base)
    k, v, _, _ = _gates(TOKEN_RULE, w, _f64(outer), np.asarray(x[t], np.float64))
    losses.append(np.linalg.norm(_mem(w["memory"], k) - _mem(w["memory"], v)))
    _, state = _apply(TOKEN_RULE, state, x[t : t + 1], q[t : t + 1], outer)
  early, late = np.mean(losses[:3]), np.mean(losses[-3:])
  assert late < 0.4 * early, f"inner loss: first cycle {early:.4f}, last cycle {late:.4f}"


# ---- 6. outer gradients; bad input ------------------------------------------------------------------
def test_outer_gradients_reach_every_memory_and_readout():
  """jax.grad of ⟨o, r⟩ w.r.t. every initial memory W_□,0 (both layers) and every outer readout
  (η and α readouts, momentum logit) is finite and nonzero, and its directional derivative equals
  central differences of the numpy token loop (second order through the writes)."""
  r = _run("c2_4")
  rule, x, q = r["rule"], r["x"], r["q"]
  cot = np.random.default_rng(6).normal(size=(T, D))

  def loss(weights, outer):
    o, _ = selfmod_chunked(rule, rule.init_state(weights), x, q, outer)
    return jnp.sum(o * jnp.asarray(cot, jnp.float32))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(r["weights"], r["outer"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 1e-6, name
  assert len(jax.tree.leaves(grads)) == 2 * len(MEMORIES) + 5

  def np_loss(weights, outer):
    state = (weights, weights, jax.tree.map(np.zeros_like, weights), 0)
    return np.sum(np_selfmod(rule, state, outer, x, q)[0] * cot)

  rng = np.random.default_rng(7)
  base = _f64((r["weights"], r["outer"]))
  direction = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), base)
  eps = 1e-5
  plus = np_loss(*jax.tree.map(lambda a, d: a + eps * d, base, direction))
  minus = np_loss(*jax.tree.map(lambda a, d: a - eps * d, base, direction))
  ad = sum(
    np.sum(np.asarray(g, np.float64) * d)
    for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
  )
  np.testing.assert_allclose(ad, (plus - minus) / (2 * eps), rtol=1e-3)


def test_bad_configuration_raises():
  for kwargs, arg in (
    (dict(chunk_size=0), "chunk_size must"),
    (dict(memory_chunk_size=2.0), "memory_chunk_size must"),
    (dict(chunk_size=2, memory_chunk_size=3), "chunk_size 2 and memory_chunk_size 3"),
    (dict(adaptive=("k", "q")), "adaptive"),
    (dict(max_lr=0.0), "max_lr"),
    (dict(activation="swish"), "activation"),
  ):
    with pytest.raises(ValueError, match=f"^{arg}"):
      SelfModTitans(**kwargs)


def test_bad_inputs_raise():
  weights, outer, x, q = _inputs()
  rule = SelfModTitans(2, 4)
  with pytest.raises(ValueError, match="^weights must"):
    rule.init_state({n: weights[n] for n in MEMORIES if n != "alpha"})
  with pytest.raises(ValueError, match=r"weights\['v'\]"):
    rule.init_state({**weights, "v": (weights["v"][0], weights["v"][1][:, :5])})
  state = rule.init_state(weights)
  assert isinstance(state, SelfModState)
  for bad_x, bad_q, arg in (
    (x[:, :3], q, "x"),
    (x[0], q, "x"),
    (x, q[:, :3], "q"),
    (x, q[:5], "q"),
  ):
    with pytest.raises(ValueError, match=f"^{arg} must"):
      selfmod_chunked(rule, state, bad_x, bad_q, outer)
    with pytest.raises(ValueError, match=f"^{arg} must"):
      selfmod_recurrent(rule, state, bad_x, bad_q, outer)
  with pytest.raises(ValueError, match="^state must"):
    selfmod_chunked(rule, tuple(state), x, q, outer)
  with pytest.raises(ValueError, match=r"outer\.eta_w"):
    selfmod_chunked(rule, state, x, q, outer._replace(eta_w=outer.eta_w[:3]))
  with pytest.raises(ValueError, match=r"outer\.alpha_w"):
    selfmod_chunked(rule, state, x, q, outer._replace(alpha_w=outer.alpha_w[:3]))
