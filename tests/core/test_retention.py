"""Retention gates (MIRAS §5.2, CONVENTIONS §4): Memora's KL/softmax, the Bregman sigmoid map,
elastic net (Eq 22–23), Moneta's ℓq normalisation (Eq 24), multiplicative decay, and the argument
checks that guard them.

Rules are composed with ``mj.Rule`` or taken from ``mj.presets`` and run with ``mj.recurrent``; the
references are token-serial numpy loops in float64. Per-token states come from calling
``recurrent`` one token at a time (the calls compose, CONVENTIONS §5).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from miras_jax.core import retention as R

RTOL = 1e-5  # exact forms in float32 (CONVENTIONS §6)
D = 4
T = 24

LINEAR = mj.LinearMemory()
GD = mj.algorithms.GD()


def _stream(seed, t=T, d_k=D, d_v=D, k_scale=0.5, v_scale=1.0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(t, d_k)).astype(np.float32)
  k = (k_scale * rng.normal(size=(t, d_k))).astype(np.float32)
  v = (v_scale * rng.normal(size=(t, d_v))).astype(np.float32)
  return q, k, v, rng


def _gates(**fields):
  return mj.Gates(
    **{n: None if x is None else jnp.asarray(x, jnp.float32) for n, x in fields.items()}
  )


def _per_token_states(rule, state, q, k, v, gates):
  """The state after every token: ``recurrent`` called on one token at a time (jitted once)."""
  step = jax.jit(lambda s, q_t, k_t, v_t, g_t: mj.recurrent(rule, s, q_t, k_t, v_t, g_t))
  states = []
  for t in range(q.shape[0]):
    g_t = jax.tree.map(lambda x, t=t: x[t : t + 1], gates)
    _, state = step(state, q[t : t + 1], k[t : t + 1], v[t : t + 1], g_t)
    states.append(state)
  return states


def _assert_close(actual, expected, rtol=RTOL):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  np.testing.assert_allclose(
    actual, expected, rtol=rtol, atol=rtol * max(np.abs(expected).max(), 1e-3)
  )


def _softmax_rows(z):
  z = z - z.max(axis=-1, keepdims=True)
  ez = np.exp(z)
  return ez / ez.sum(axis=-1, keepdims=True)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _soft_threshold_np(z, gamma):
  return np.sign(z) * np.maximum(0.0, np.abs(z) - gamma)


def _l2_grad(w, k, v):
  return np.outer(w @ k - v, k)  # ∇ℓ2 = (W k − v) kᵀ


def _f64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


# ---------------------------------------------------------------------------------------------
# Memora: W_t = c · softmax_rows(α_t log W_{t−1} − η_t ∇ℓ2(W_{t−1})) (MIRAS Eq 21/27).
@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("c", [1.0, 2.5])
def test_memora_rows_stay_on_the_scaled_simplex_after_every_token(memory, c):
  rule = mj.presets.get("memora", memory=memory, c=c)
  q, k, v, rng = _stream(seed=0)
  if memory == "linear":
    w0 = rng.uniform(0.05, 1.0, size=(D, D)).astype(np.float32)
  else:
    w0 = rule.memory.init(jax.random.key(0), D, D)
    w0 = tuple(np.abs(np.asarray(w)) + 0.05 for w in w0)  # positive, rows not normalised
  gates = _gates(lr=rng.uniform(0.1, 1.0, size=T), retention=rng.uniform(0.5, 1.0, size=T))
  state = rule.init_state(w0)
  states = _per_token_states(rule, state, q, k, v, gates)
  assert len(states) == T
  for t, st in enumerate(states):
    for w in jax.tree.leaves(st.weights):
      w = np.asarray(w)
      assert np.all(np.isfinite(w)), t
      assert np.all(w >= 0.0), t
      np.testing.assert_allclose(w.sum(axis=-1), c, rtol=RTOL, err_msg=f"token {t}")
  # one call over the whole sequence ends where the token-by-token calls end
  _, final = mj.recurrent(rule, state, q, k, v, gates)
  chex.assert_trees_all_close(final, states[-1], rtol=RTOL, atol=1e-7)


def test_memora_linear_matches_numpy():
  c = 2.5
  rule = mj.presets.get("memora", memory="linear", c=c)
  q, k, v, rng = _stream(seed=1)
  w0 = rng.uniform(0.05, 1.0, size=(D, D)).astype(np.float32)
  lr, alpha = rng.uniform(0.1, 1.0, size=T), rng.uniform(0.5, 1.0, size=T)
  ys, st = mj.recurrent(rule, rule.init_state(w0), q, k, v, _gates(lr=lr, retention=alpha))
  w, q64, k64, v64, lr, alpha = _f64(w0, q, k, v, lr.astype(np.float32), alpha.astype(np.float32))
  ys_ref = []
  for t in range(T):
    w = c * _softmax_rows(alpha[t] * np.log(w) - lr[t] * _l2_grad(w, k64[t], v64[t]))
    ys_ref.append(w @ q64[t])
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


def test_memora_floor_matches_numpy_where_weights_fall_below_it():
  """With ``eps``, log W is taken of max(W, ε): a sharp stream (large η) drives some weights
  below ε, where the reference floors them too; the default floor (1e-30) is not reached."""
  c, eps = 1.0, 0.02
  rule = mj.presets.get("memora", memory="linear", c=c, eps=eps)
  q, k, v, rng = _stream(seed=14, v_scale=3.0)
  w0 = rng.uniform(0.05, 1.0, size=(D, D)).astype(np.float32)
  w0 /= w0.sum(axis=-1, keepdims=True)
  lr, alpha = rng.uniform(0.5, 1.5, size=T), rng.uniform(0.1, 1.0, size=T)
  ys, st = mj.recurrent(rule, rule.init_state(w0), q, k, v, _gates(lr=lr, retention=alpha))
  w, q64, k64, v64, lr, alpha = _f64(w0, q, k, v, lr.astype(np.float32), alpha.astype(np.float32))
  ys_ref, floored = [], 0
  for t in range(T):
    floored += int(np.sum(w < eps))
    logits = alpha[t] * np.log(np.maximum(w, eps)) - lr[t] * _l2_grad(w, k64[t], v64[t])
    w = c * _softmax_rows(logits)
    ys_ref.append(w @ q64[t])
  assert 0 < floored < T * D * D, floored
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


# ---------------------------------------------------------------------------------------------
# Bregman divergence with the logit mirror map: W_t = σ(logit(W_{t−1}) − η_t ∇ℓ(W_{t−1})).
BREGMAN = mj.Rule("bregman", LINEAR, mj.biases.L2(), R.BregmanSigmoid(), GD)


def test_bregman_sigmoid_weights_stay_in_open_unit_interval():
  t_len = 200
  q, k, v, rng = _stream(seed=2, t=t_len)
  w0 = rng.uniform(0.2, 0.8, size=(D, D)).astype(np.float32)
  gates = _gates(lr=rng.uniform(0.2, 1.0, size=t_len))
  state = BREGMAN.init_state(w0)
  states = _per_token_states(BREGMAN, state, q, k, v, gates)
  ws = np.stack([np.asarray(s.weights) for s in states])
  assert ws.shape == (t_len, D, D)
  assert np.all(np.isfinite(ws))
  assert np.all(ws > 0.0) and np.all(ws < 1.0), (ws.min(), ws.max())
  assert np.abs(ws[-1] - w0).max() > 0.05  # the memory did move
  _, final = mj.recurrent(BREGMAN, state, q, k, v, gates)
  chex.assert_trees_all_close(final, states[-1], rtol=RTOL, atol=1e-7)


def test_bregman_sigmoid_matches_numpy():
  t_len = 6
  q, k, v, rng = _stream(seed=3, t=t_len)
  w0 = rng.uniform(0.1, 0.9, size=(D, D)).astype(np.float32)
  lr = rng.uniform(0.2, 1.0, size=t_len).astype(np.float32)
  ys, st = mj.recurrent(BREGMAN, BREGMAN.init_state(w0), q, k, v, _gates(lr=lr))
  w, q64, k64, v64, lr = _f64(w0, q, k, v, lr)
  ys_ref = []
  for t in range(t_len):
    w = _sigmoid(np.log(w / (1.0 - w)) - lr[t] * _l2_grad(w, k64[t], v64[t]))
    ys_ref.append(w @ q64[t])
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


# ---------------------------------------------------------------------------------------------
# Elastic net (MIRAS Eq 22–23).
@pytest.mark.parametrize("smooth", [False, True])
def test_soft_threshold_of_zero_is_zero(smooth):
  for gamma in (1e-3, 0.05, 0.2):
    assert float(R.soft_threshold(jnp.float32(0.0), gamma, smooth)) == 0.0
    out = R.soft_threshold(jnp.zeros((3, 2), jnp.float32), gamma, smooth)
    np.testing.assert_array_equal(out, np.zeros((3, 2)))


@pytest.mark.parametrize("gamma", [0.05, 0.3])
def test_soft_threshold_matches_formula(gamma):
  z = np.concatenate([np.linspace(-1.0, 1.0, 41), [gamma, -gamma, 0.0]]).astype(np.float32)
  got = np.asarray(R.soft_threshold(jnp.asarray(z), gamma))
  z64 = z.astype(np.float64)
  np.testing.assert_allclose(got, _soft_threshold_np(z64, gamma), rtol=1e-6, atol=1e-7)
  assert np.all(got[np.abs(z64) <= gamma] == 0.0)  # hard forgetting: exactly zero
  smooth = np.asarray(R.soft_threshold(jnp.asarray(z), gamma, smooth=True))
  want = np.abs(z64) * np.arctan(z64 / gamma) / (np.pi / 2)
  np.testing.assert_allclose(smooth, want, rtol=1e-5, atol=1e-7)


def _elastic_rule(gamma, ftrl=False):
  return mj.Rule("elastic", LINEAR, mj.biases.L2(), R.ElasticNet(gamma=gamma, ftrl=ftrl), GD)


def test_elastic_net_sparsity_increases_with_gamma():
  q, k, v, rng = _stream(seed=0, t=32)
  gates = _gates(lr=np.full(32, 0.5), retention=np.full(32, 0.95))
  sparsity = []
  for gamma in (0.001, 0.05, 0.2):
    rule = _elastic_rule(gamma)
    states = _per_token_states(rule, rule.init_state(np.zeros((D, D), np.float32)), q, k, v, gates)
    ws = np.stack([np.asarray(s.weights) for s in states])
    sparsity.append(float(np.mean(ws == 0.0)))
  assert sparsity[0] < sparsity[1] < sparsity[2], sparsity
  assert sparsity[0] < 0.05 and sparsity[2] > 0.3, sparsity


@pytest.mark.parametrize("ftrl", [False, True])
@pytest.mark.parametrize("with_retention", [False, True])
def test_elastic_net_matches_numpy(ftrl, with_retention):
  """Eq 22: W_t = S_γ(α_t W_{t−1} − η_t ∇_t); Eq 23 (FTRL): A_t = α_t A_{t−1} − η_t ∇_t, W_t = S_γ(A_t)."""
  gamma = 0.05
  rule = _elastic_rule(gamma, ftrl)
  q, k, v, rng = _stream(seed=4)
  a0 = (0.2 * rng.normal(size=(D, D))).astype(np.float32)
  lr = rng.uniform(0.1, 0.8, size=T).astype(np.float32)
  alpha = rng.uniform(0.7, 1.0, size=T).astype(np.float32)
  gates = _gates(lr=lr, retention=alpha if with_retention else None)
  state = rule.init_state(a0)
  if ftrl:
    _assert_close(state.weights, _soft_threshold_np(a0.astype(np.float64), gamma))
    _assert_close(state.accum, a0)
  else:
    assert state.accum is None
  ys, st = mj.recurrent(rule, state, q, k, v, gates)

  a, q64, k64, v64, lr, alpha = _f64(a0, q, k, v, lr, alpha if with_retention else np.ones(T))
  w = _soft_threshold_np(a, gamma) if ftrl else a
  ys_ref = []
  for t in range(T):
    grad = _l2_grad(w, k64[t], v64[t])
    if ftrl:
      a = alpha[t] * a - lr[t] * grad
      w = _soft_threshold_np(a, gamma)
    else:
      w = _soft_threshold_np(alpha[t] * w - lr[t] * grad, gamma)
    ys_ref.append(w @ q64[t])
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)
  if ftrl:
    _assert_close(st.accum, a)
  assert np.mean(np.asarray(st.weights) == 0.0) > 0.0  # the threshold bites on this stream


# ---------------------------------------------------------------------------------------------
# ℓq normalisation (Moneta, MIRAS Eq 24): A_t = α_t A_{t−1} − η_t ∇ℓp(W_{t−1}); W_t = A_t/‖A_t‖_q^{q−2}.
def _lq_np(a, q):
  return a / np.sum(np.abs(a) ** q) ** ((q - 2.0) / q)


def _lp_grad(w, k, v, p):
  e = w @ k - v
  return p * np.outer(np.sign(e) * np.abs(e) ** (p - 1.0), k)


def test_lq_q2_is_the_identity_map():
  a = jnp.asarray(np.random.default_rng(5).normal(size=(D, D)), jnp.float32)
  w, accum = R.LqNormalization(q=2.0).init(a)
  np.testing.assert_array_equal(w, a)
  np.testing.assert_array_equal(accum, a)


def test_moneta_q2_is_decayed_gd_on_lp():
  """Moneta with q = 2 is TTT-linear with decay on the ℓp bias: W_t = α_t W_{t−1} − η_t ∇ℓp."""
  p = 3.0
  moneta = mj.presets.get("moneta", memory="linear", p=p, q=2.0)
  decayed = mj.Rule("ttt_decay", LINEAR, mj.biases.Lp(p=p), R.Decay("scalar"), GD)
  q, k, v, rng = _stream(seed=6, v_scale=0.5)
  w0 = (0.3 * rng.normal(size=(D, D))).astype(np.float32)
  lr = rng.uniform(0.02, 0.1, size=T).astype(np.float32)
  alpha = rng.uniform(0.7, 1.0, size=T).astype(np.float32)
  gates = _gates(lr=lr, retention=alpha)
  ys, st = mj.recurrent(moneta, moneta.init_state(w0), q, k, v, gates)
  ys_d, st_d = mj.recurrent(decayed, decayed.init_state(w0), q, k, v, gates)
  chex.assert_trees_all_close(ys, ys_d, rtol=RTOL, atol=1e-6)
  chex.assert_trees_all_close(st.weights, st_d.weights, rtol=RTOL, atol=1e-6)

  w, q64, k64, v64, lr, alpha = _f64(w0, q, k, v, lr, alpha)
  ys_ref = []
  for t in range(T):
    w = alpha[t] * w - lr[t] * _lp_grad(w, k64[t], v64[t], p)
    ys_ref.append(w @ q64[t])
  assert np.abs(w).max() < 10.0  # a stable stream
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


@pytest.mark.parametrize("q", [1.5, 3.0, 4.0])
def test_lq_normalisation_matches_formula(q):
  rng = np.random.default_rng(7)
  a = rng.normal(size=(D, 3)).astype(np.float32)
  w, accum = R.LqNormalization(q=q).init(jnp.asarray(a))
  _assert_close(w, _lq_np(a.astype(np.float64), q))
  np.testing.assert_array_equal(accum, a)
  # an MLP memory: each weight matrix is normalised by its own norm
  tree = (
    rng.normal(size=(8, D)).astype(np.float32),
    3.0 * rng.normal(size=(D, 8)).astype(np.float32),
  )
  w_tree, _ = R.LqNormalization(q=q).init(tuple(map(jnp.asarray, tree)))
  for got, leaf in zip(w_tree, tree, strict=True):
    _assert_close(got, _lq_np(leaf.astype(np.float64), q))


def test_moneta_linear_matches_numpy():
  p, qn = 3.0, 4.0
  rule = mj.presets.get("moneta", memory="linear", p=p, q=qn)
  q, k, v, rng = _stream(seed=8)
  a0 = (0.5 * rng.normal(size=(D, D))).astype(np.float32)
  lr = rng.uniform(0.05, 0.3, size=T).astype(np.float32)
  alpha = rng.uniform(0.7, 1.0, size=T).astype(np.float32)
  state = rule.init_state(a0)
  _assert_close(state.weights, _lq_np(a0.astype(np.float64), qn))  # W_0 from A_0
  ys, st = mj.recurrent(rule, state, q, k, v, _gates(lr=lr, retention=alpha))
  a, q64, k64, v64, lr, alpha = _f64(a0, q, k, v, lr, alpha)
  w = _lq_np(a, qn)
  ys_ref = []
  for t in range(T):
    a = alpha[t] * a - lr[t] * _lp_grad(w, k64[t], v64[t], p)
    w = _lq_np(a, qn)
    ys_ref.append(w @ q64[t])
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)
  _assert_close(st.accum, a)


def _lq_floor_np(a, q, eps):
  return a / max(np.sum(np.abs(a) ** q) ** (1.0 / q), eps) ** (q - 2.0)


@pytest.mark.parametrize("q", [1.5, 4.0])
def test_lq_floor_matches_formula_on_both_sides_of_eps(q):
  """W = A / max(‖A‖_q, ε)^{q−2}: the paper's map above ε, A / ε^{q−2} below it."""
  a = np.random.default_rng(11).normal(size=(D, 3))
  norm = np.sum(np.abs(a) ** q) ** (1.0 / q)
  for scale, eps in ((1.0, 0.5 * norm), (1e-3, 0.5 * norm)):
    w, _ = R.LqNormalization(q=q, eps=eps).init(jnp.asarray(scale * a, jnp.float32))
    _assert_close(w, _lq_floor_np(scale * a, q, eps))
  w, _ = R.LqNormalization(q=q, eps=0.5 * norm).init(jnp.asarray(1e-3 * a, jnp.float32))
  _assert_close(w, 1e-3 * a / (0.5 * norm) ** (q - 2.0))  # the floored branch, written out


def test_moneta_with_floor_matches_numpy_as_the_accumulator_empties():
  """Moneta with ε: retention gates near 0 on some tokens empty A below ε there, so the stream
  takes both branches of the floor."""
  p, qn, eps = 3.0, 4.0, 0.3
  rule = mj.presets.get("moneta", memory="linear", p=p, q=qn, eps=eps)
  q, k, v, rng = _stream(seed=12)
  a0 = (0.5 * rng.normal(size=(D, D))).astype(np.float32)
  lr = rng.uniform(0.01, 0.05, size=T).astype(np.float32)
  alpha = np.where(np.arange(T) % 3 == 2, 1e-3, 0.95).astype(np.float32)
  ys, st = mj.recurrent(rule, rule.init_state(a0), q, k, v, _gates(lr=lr, retention=alpha))
  a, q64, k64, v64, lr, alpha = _f64(a0, q, k, v, lr, alpha)
  w = _lq_floor_np(a, qn, eps)
  ys_ref, floored = [], []
  for t in range(T):
    a = alpha[t] * a - lr[t] * _lp_grad(w, k64[t], v64[t], p)
    floored.append(np.sum(np.abs(a) ** qn) ** (1.0 / qn) < eps)
    w = _lq_floor_np(a, qn, eps)
    ys_ref.append(w @ q64[t])
  assert 0 < sum(floored) < T, floored
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


def test_moneta_floor_keeps_outer_gradients_finite_when_the_accumulator_empties():
  """α ≈ 0 with a tiny η leaves ‖A‖_4 near 1e-8 (as measured in a Moneta training run that went
  NaN): without the floor the normaliser's derivative overflows float32; with ε it stays finite."""
  q, k, v, rng = _stream(seed=13, t=6)
  gates = _gates(lr=np.full(6, 1e-8), retention=np.full(6, 1e-7))
  w0 = jnp.asarray(0.5 * rng.normal(size=(D, D)), jnp.float32)

  def grads(eps):
    rule = mj.presets.get("moneta", memory="linear", eps=eps)
    loss = lambda w0, k, v: jnp.sum(mj.recurrent(rule, rule.init_state(w0), q, k, v, gates)[0] ** 2)
    return jax.grad(loss, argnums=(0, 1, 2))(w0, k, v)

  chex.assert_tree_all_finite(grads(0.01))
  unfloored = grads(0.0)
  assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(unfloored))


@pytest.mark.parametrize("q", [1.5, 3.0, 4.0])
def test_lq_zero_accumulator_gives_zero_weights(q):
  lq = R.LqNormalization(q=q)
  w, _ = lq.init(jnp.zeros((D, D), jnp.float32))
  np.testing.assert_array_equal(w, np.zeros((D, D)))
  jac = jax.jacobian(lambda a: lq.init(a)[0])(jnp.zeros((D, D), jnp.float32))
  chex.assert_tree_all_finite(jac)
  # through moneta: α = 0 and η = 0 make A_t = 0 (and stay finite at A_0 = 0 too)
  rule = mj.presets.get("moneta", memory="linear", q=q)
  q_, k, v, _ = _stream(seed=9, t=4)
  for a0 in (np.zeros((D, D), np.float32), np.ones((D, D), np.float32)):
    ys, st = mj.recurrent(
      rule, rule.init_state(a0), q_, k, v, _gates(lr=np.zeros(4), retention=np.zeros(4))
    )
    np.testing.assert_array_equal(st.weights, np.zeros((D, D)))
    np.testing.assert_array_equal(ys, np.zeros((4, D)))


# ---------------------------------------------------------------------------------------------
# Multiplicative decay: W ← α W, W diag(α), diag(β) W diag(α).
def test_decay_shapes_act_on_the_right_axes():
  rng = np.random.default_rng(10)
  d_v, d_k = 3, 4
  w = rng.normal(size=(d_v, d_k)).astype(np.float32)
  step = rng.normal(size=(d_v, d_k)).astype(np.float32)
  a_s = np.float32(0.7)
  a_k = rng.uniform(0.2, 1.0, size=d_k).astype(np.float32)
  b_v = rng.uniform(0.2, 1.0, size=d_v).astype(np.float32)
  w64, s64 = _f64(w, step)
  cases = [
    ("scalar", _gates(retention=a_s), a_s * w64),
    ("key", _gates(retention=a_k), w64 @ np.diag(a_k)),
    ("any", _gates(retention=a_s), a_s * w64),
    ("any", _gates(retention=a_k), w64 @ np.diag(a_k)),
    ("key_value", _gates(retention=a_k, retention_value=b_v), np.diag(b_v) @ w64 @ np.diag(a_k)),
  ]
  for channels, g, want in cases:
    decay = R.Decay(channels)
    _assert_close(decay.decay(jnp.asarray(w), g), want)
    new, accum = decay.write(jnp.asarray(w), None, jnp.asarray(step), g)
    assert accum is None
    _assert_close(new, want + s64)
    _assert_close(R.scale_by_retention(jnp.asarray(w), g), want)
  # a scalar scales every matrix of an MLP memory
  tree = (jnp.asarray(w), jnp.asarray(w.T))
  scaled = R.scale_by_retention(tree, _gates(retention=a_s))
  _assert_close(scaled[0], a_s * w64)
  _assert_close(scaled[1], a_s * w64.T)
  # no gate: required raises naming the gate, optional is the identity
  with pytest.raises(ValueError, match="retention"):
    R.scale_by_retention(tree, mj.Gates())
  assert R.scale_by_retention(tree, mj.Gates(), required=False) is tree
  new, _ = R.NoRetention().write(jnp.asarray(w), None, jnp.asarray(step), mj.Gates())
  _assert_close(new, w64 + s64)


@pytest.mark.parametrize("preset", ["mamba2", "gla", "dfw"])
def test_hebbian_decay_presets_match_numpy(preset):
  rule = mj.presets.get(preset)
  q, k, v, rng = _stream(seed=11)
  lr = rng.uniform(0.5, 1.0, size=T).astype(np.float32)
  if preset == "mamba2":
    alpha = rng.uniform(0.7, 1.0, size=T).astype(np.float32)
    gates = _gates(lr=lr, retention=alpha)
  else:
    alpha = rng.uniform(0.7, 1.0, size=(T, D)).astype(np.float32)
    beta = rng.uniform(0.7, 1.0, size=(T, D)).astype(np.float32)
    gates = _gates(lr=lr, retention=alpha, retention_value=beta if preset == "dfw" else None)
  w0 = (0.3 * rng.normal(size=(D, D))).astype(np.float32)
  ys, st = mj.recurrent(rule, rule.init_state(w0), q, k, v, gates)
  w, q64, k64, v64, lr, alpha = _f64(w0, q, k, v, lr, alpha)
  ys_ref = []
  for t in range(T):
    if preset == "mamba2":
      w = alpha[t] * w
    elif preset == "gla":
      w = w @ np.diag(alpha[t])
    else:
      w = np.diag(beta[t].astype(np.float64)) @ w @ np.diag(alpha[t])
    w = w + lr[t] * np.outer(v64[t], k64[t])
    ys_ref.append(w @ q64[t])
  _assert_close(ys, np.array(ys_ref))
  _assert_close(st.weights, w)


# ---------------------------------------------------------------------------------------------
# Bad input raises ValueError naming the argument.
def _run(name, gates, w0=None, **options):
  rule = mj.presets.get(name, **options)
  q, k, v, _ = _stream(seed=12, t=4, d_k=3, d_v=3)
  w0 = np.full((3, 3), 0.3, np.float32) if w0 is None else w0
  return mj.recurrent(rule, rule.init_state(w0), q, k, v, gates)


def test_gate_values_out_of_range_raise():
  ok = np.full(4, 0.5)
  for bad in (1.5, -0.1):
    with pytest.raises(ValueError, match="retention"):
      _run("gated_delta_net", _gates(lr=ok, retention=np.full(4, bad)))
  with pytest.raises(ValueError, match=r"\blr\b"):
    _run("delta_net", _gates(lr=np.array([0.5, -0.1, 0.5, 0.5])))
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match="delta"):
      _run("yaad", _gates(lr=ok, retention=ok, delta=np.full(4, bad)), memory="linear")
  with pytest.raises(ValueError, match="momentum"):
    _run(
      "titans_lmm",
      _gates(lr=ok, retention=ok, momentum=np.full(4, 1.5)),
      memory="linear",
    )
  # the boundary values are valid
  _run("gated_delta_net", _gates(lr=np.zeros(4), retention=np.array([0.0, 1.0, 0.5, 1.0])))
  _run("titans_lmm", _gates(lr=ok, retention=ok, momentum=np.ones(4)), memory="linear")


def test_memora_and_bregman_initial_weights_are_checked():
  memora = mj.presets.get("memora", memory="linear")
  for bad in (0.0, -0.2):
    w = np.full((3, 3), 0.3, np.float32)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="positive"):
      memora.init_state(w)
  mlp = mj.presets.get("memora")
  tree = tuple(np.abs(np.asarray(x)) + 0.1 for x in mlp.memory.init(jax.random.key(0), 3, 3))
  mlp.init_state(tree)  # valid
  with pytest.raises(ValueError, match="positive"):
    mlp.init_state((tree[0], _with_zero(tree[1])))
  for bad in (0.0, 1.0, 1.5, -0.5):
    w = np.full((3, 3), 0.5, np.float32)
    w[0, 1] = bad
    with pytest.raises(ValueError, match="weights"):
      BREGMAN.init_state(w)
  BREGMAN.init_state(np.full((3, 3), 0.5, np.float32))  # valid


def _with_zero(x):
  x = np.array(x)
  x[0, 0] = 0.0
  return x


def test_retention_constructor_arguments_are_checked():
  with pytest.raises(ValueError, match=r"\bq\b"):
    R.LqNormalization(q=1.0)
  with pytest.raises(ValueError, match=r"\bq\b"):
    mj.presets.get("moneta", q=0.5)
  with pytest.raises(ValueError, match="eps"):
    mj.presets.get("moneta", eps=-1e-3)
  with pytest.raises(ValueError, match="gamma"):
    R.ElasticNet(gamma=0.0)
  with pytest.raises(ValueError, match="gamma"):
    R.ElasticNet(gamma=-0.1)
  with pytest.raises(ValueError, match=r"\bc\b"):
    R.KLSoftmax(c=0.0)
  with pytest.raises(ValueError, match=r"\bc\b"):
    mj.presets.get("memora", c=-1.0)
  with pytest.raises(ValueError, match="eps"):
    mj.presets.get("memora", eps=0.0)
  with pytest.raises(ValueError, match="channels"):
    R.Decay("rows")


def test_bregman_sigmoid_recovers_from_float32_saturation():
  """Logits live in the state, so a weight that rounds to 1.0 can come back when the data turn."""
  rule = mj.Rule(
    "bregman", mj.LinearMemory(), mj.biases.L2(), mj.retention.BregmanSigmoid(), mj.algorithms.GD()
  )
  t = 40
  k = jnp.ones((t, 2), jnp.float32)
  v = jnp.concatenate([jnp.full((20, 2), 10.0), jnp.full((20, 2), -10.0)]).astype(jnp.float32)
  state = rule.init_state(jnp.full((2, 2), 0.5, jnp.float32))
  _, mid = mj.recurrent(rule, state, k[:20], k[:20], v[:20], mj.Gates(lr=jnp.ones((20,))))
  assert np.all(np.asarray(mid.weights) == 1.0)  # saturated in float32
  _, end = mj.recurrent(rule, mid, k[20:], k[20:], v[20:], mj.Gates(lr=jnp.ones((20,))))
  assert np.all(np.asarray(end.weights) < 0.5)
  assert np.all(np.isfinite(np.asarray(end.accum)))


def test_memora_zero_weight_with_zero_retention_is_finite():
  """α log W with α = 0 and W = 0 must not give 0·(−∞) = NaN."""
  rule = mj.presets.get("memora", memory="linear")
  w = jnp.asarray([[0.0, 1.0], [0.5, 0.5]], jnp.float32)
  g = mj.Gates(lr=jnp.asarray(0.1), retention=jnp.asarray(0.0))
  new = rule.write(mj.MemoryState(w), jnp.ones(2), jnp.ones(2), g)
  assert np.all(np.isfinite(np.asarray(new.weights)))
  np.testing.assert_allclose(np.asarray(new.weights).sum(-1), 1.0, rtol=1e-6)
