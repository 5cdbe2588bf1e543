"""Attentional biases (MIRAS §5.1, CONVENTIONS §3).

- Linear memory: ``biases.weight_grad`` (closed-form rule path and ``jax.grad``-of-loss path) equals
  the paper's closed forms, written here in numpy float64 (MIRAS Eq 11/25, 12, 14, 15, 16, 17).
- MLP memories: the ``jax.grad``-of-loss path equals central finite differences of the loss in
  float64 (``jax.enable_x64``), and the closed-form rule path (vjp of ``output_grad``) equals it.
- Smooth lp (Remark 5), argument validation and user-defined biases.

Test points are built as ``v = M(W, k) − e`` for a chosen error ``e``, so that every ``|e_i|`` and
``‖e‖`` sits far from the kinks of sign/abs/Huber, and the Huber thresholds δ exercise both branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import miras_jax as mj
from miras_jax.core import biases as B

D_K, D_V = 4, 3
# The error e = M(k) − v at every test point: |e_i| ∈ {0.4, 0.7, 1.3}, ‖e‖₂ ≈ 1.530.
E = np.array([0.7, -1.3, 0.4])
NORM_E = float(np.linalg.norm(E))
# Huber thresholds: coord δ=1.0 splits the coordinates (0.4, 0.7 quadratic; 1.3 linear), δ=0.2 puts
# every coordinate on the linear branch, δ=2.0 every one on the quadratic branch. norm / mixture:
# δ=0.5 < ‖e‖ (outer branch), δ=3.0 > ‖e‖ (inner branch).
COORD_DELTAS = (1.0, 0.2, 2.0)
NORM_DELTAS = (0.5, 3.0)
RTOL = 1e-5  # exact forms in float32 (CONVENTIONS §6)


# ---------------------------------------------------------------------------------------------
# The paper's closed forms for a linear memory M(k) = W k, as weight gradients [d_v, d_k].
# Each takes float64 (e, k, v, δ) with e = W k − v.
def _ref_dot(e, k, v, delta):
  return -np.outer(v, k)  # −v kᵀ


def _ref_l2(e, k, v, delta):
  return np.outer(e, k)  # e kᵀ


def _ref_lp(p):
  def ref(e, k, v, delta):  # Eq 11/25: p (sign(e) ⊙ |e|^{p−1}) kᵀ
    return p * np.outer(np.sign(e) * np.abs(e) ** (p - 1.0), k)

  return ref


def _ref_l1(e, k, v, delta):
  return np.outer(np.sign(e), k)  # Eq 12: sign(e) kᵀ


def _ref_huber_coord(e, k, v, delta):
  # Eq 14: (e kᵀ) ⊙ I(|e| ≤ δ)1ᵀ + (δ sign(e) kᵀ) ⊙ I(|e| > δ)1ᵀ
  small = (np.abs(e) <= delta).astype(np.float64)[:, None]
  return np.outer(e, k) * small + delta * np.outer(np.sign(e), k) * (1.0 - small)


def _ref_huber_norm(e, k, v, delta):
  # Eq 15: e kᵀ if ‖e‖ ≤ δ else δ (e/‖e‖) kᵀ
  n = np.linalg.norm(e)
  return np.outer(e, k) if n <= delta else delta * np.outer(e / n, k)


def _ref_huber_mixture(e, k, v, delta):
  # Eq 16 (Yaad): ∇ℓ2 = e kᵀ if ‖e‖ ≤ δ else δ ∇ℓ1 = δ sign(e) kᵀ
  return np.outer(e, k) if np.linalg.norm(e) <= delta else delta * np.outer(np.sign(e), k)


def _ref_robust(radius):
  def ref(e, k, v, delta):  # Eq 17: (e + Δ e/‖e‖) kᵀ
    return np.outer(e + radius * e / np.linalg.norm(e), k)

  return ref


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  bias: object
  ref: Callable
  delta: float | None = None


CASES = [
  Case("dot_product", B.DotProduct(), _ref_dot),
  Case("l2", B.L2(), _ref_l2),
  *[Case(f"lp{p:g}", B.Lp(p=p), _ref_lp(p)) for p in (1.0, 1.5, 2.0, 3.0, 4.0)],
  Case("l1", B.L1(), _ref_l1),
  *[Case(f"huber_coord_d{d:g}", B.Huber("coord"), _ref_huber_coord, d) for d in COORD_DELTAS],
  *[Case(f"huber_norm_d{d:g}", B.Huber("norm"), _ref_huber_norm, d) for d in NORM_DELTAS],
  *[Case(f"huber_mix_d{d:g}", B.Huber("mixture"), _ref_huber_mixture, d) for d in NORM_DELTAS],
  Case("robust_l2_r0.3", B.RobustL2(radius=0.3), _ref_robust(0.3)),
  Case("robust_l2_r0", B.RobustL2(radius=0.0), _ref_robust(0.0)),
]
LOSS_CASES = [c for c in CASES if c.bias.loss is not None]
BOTH_CASES = [c for c in LOSS_CASES if c.bias.output_grad is not None]


def _ids(cases):
  return [c.id for c in cases]


def _delta(case, dtype=jnp.float32):
  return None if case.delta is None else jnp.asarray(case.delta, dtype)


def _linear_point(seed=0):
  """float32 (W, k, v) with W k − v ≈ E, and the float64 e computed from the float32 inputs."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D_V, D_K)).astype(np.float32)
  k = rng.normal(size=D_K).astype(np.float32)
  v = (w.astype(np.float64) @ k - E).astype(np.float32)
  e = w.astype(np.float64) @ k.astype(np.float64) - v.astype(np.float64)
  return w, k, v, e


def _assert_close(actual, expected, rtol):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------
def test_test_points_exercise_every_huber_branch():
  """Guards the test design: the chosen δ cover both branches of every Huber variant."""
  _, _, _, e = _linear_point()
  small = np.abs(e)[None, :] <= np.array(COORD_DELTAS)[:, None]
  assert small.all(axis=1).any() and (~small).all(axis=1).any()  # all-quadratic, all-linear
  assert (small.any(axis=1) & (~small).any(axis=1)).any()  # mixed coordinates
  assert min(NORM_DELTAS) < NORM_E < max(NORM_DELTAS)
  # and far from every kink
  assert np.abs(np.abs(e)[None, :] - np.array(COORD_DELTAS)[:, None]).min() > 0.1
  assert np.abs(NORM_E - np.array(NORM_DELTAS)).min() > 0.5
  assert np.abs(e).min() > 0.3


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_linear_rule_path_matches_closed_form(case):
  w, k, v, e = _linear_point()
  got = B.weight_grad(mj.LinearMemory(), case.bias, jnp.asarray(w), k, v, _delta(case))
  chex.assert_shape(got, (D_V, D_K))
  chex.assert_tree_all_finite(got)
  _assert_close(got, case.ref(e, k.astype(np.float64), v.astype(np.float64), case.delta), RTOL)


@pytest.mark.parametrize("case", LOSS_CASES, ids=_ids(LOSS_CASES))
def test_linear_loss_path_matches_closed_form(case):
  w, k, v, e = _linear_point(seed=1)
  got = B.weight_grad(
    mj.LinearMemory(), case.bias, jnp.asarray(w), k, v, _delta(case), use_loss=True
  )
  chex.assert_shape(got, (D_V, D_K))
  _assert_close(got, case.ref(e, k.astype(np.float64), v.astype(np.float64), case.delta), RTOL)


def test_l1_is_lp1_and_mixture_has_no_loss():
  assert B.L1() == B.Lp(p=1.0)
  assert B.L1(smooth=True) == B.Lp(p=1.0, smooth=True)
  mixture = B.Huber("mixture")
  assert mixture.loss is None and mixture.output_grad is not None
  w, k, v, _ = _linear_point()
  with pytest.raises(ValueError, match="no loss"):
    B.weight_grad(mj.LinearMemory(), mixture, jnp.asarray(w), k, v, 1.0, use_loss=True)


def test_huber_losses_match_eq_13_to_15():
  """The Huber losses themselves: H(a) = ½a² if |a| ≤ δ else δ(|a| − ½δ) (Eq 13)."""

  def h(a, d):
    return np.where(np.abs(a) <= d, 0.5 * a * a, d * (np.abs(a) - 0.5 * d))

  pred, v = jnp.asarray(E, jnp.float32), jnp.zeros(D_V, jnp.float32)
  for d in COORD_DELTAS:
    got = B.Huber("coord").loss(pred, v, jnp.float32(d))
    np.testing.assert_allclose(got, h(E, d).sum(), rtol=RTOL)
  for d in NORM_DELTAS:
    got = B.Huber("norm").loss(pred, v, jnp.float32(d))
    np.testing.assert_allclose(got, h(NORM_E, d), rtol=RTOL)
  r = 0.3
  got = B.RobustL2(radius=r).loss(pred, v)
  np.testing.assert_allclose(got, 0.5 * NORM_E**2 + r * NORM_E + 0.5 * r**2, rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# MLP memories, float64.
MLP_MEMORIES = {
  "mlp_gelu": mj.MLPMemory(depth=2, expansion=2, activation="gelu"),
  "mlp_silu": mj.MLPMemory(depth=2, expansion=2, activation="silu"),
  "residual_ln": mj.MLPMemory(depth=2, expansion=2, activation="gelu", residual_ln=True),
}
D_MLP = 3  # d_k = d_v (the residual_ln form needs it); E has 3 entries


def _mlp_point(memory, seed=0):
  """float64 (weights, k, v) with M(W, k) − v = E exactly (up to float64 round-off)."""
  rng = np.random.default_rng(seed)
  h = memory.expansion * D_MLP
  sizes = [D_MLP] + [h] * (memory.depth - 1) + [D_MLP]
  weights = tuple(
    jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), jnp.float64)
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
  )
  k = jnp.asarray(rng.normal(size=D_MLP), jnp.float64)
  v = memory.apply(weights, k) - jnp.asarray(E, jnp.float64)
  return weights, k, v


def _central_fd(fn, flat, h=1e-6):
  eye = h * jnp.eye(flat.shape[0], dtype=flat.dtype)
  return (jax.vmap(fn)(flat + eye) - jax.vmap(fn)(flat - eye)) / (2 * h)


@pytest.mark.parametrize("mem_id", list(MLP_MEMORIES))
@pytest.mark.parametrize("case", LOSS_CASES, ids=_ids(LOSS_CASES))
def test_mlp_loss_path_matches_finite_differences_f64(mem_id, case):
  memory = MLP_MEMORIES[mem_id]
  with jax.enable_x64(True):
    weights, k, v = _mlp_point(memory)
    delta = _delta(case, jnp.float64)
    np.testing.assert_allclose(memory.apply(weights, k) - v, E, atol=1e-12)
    got = B.weight_grad(memory, case.bias, weights, k, v, delta, use_loss=True)
    chex.assert_trees_all_equal_shapes(got, weights)
    flat, unravel = ravel_pytree(weights)
    assert flat.dtype == jnp.float64

    def loss(f):
      return case.bias.loss(memory.apply(unravel(f), k), v, delta)

    fd = _central_fd(loss, flat)
    got_flat = ravel_pytree(got)[0]
    np.testing.assert_allclose(got_flat, fd, rtol=1e-6, atol=1e-8)
    assert np.abs(got_flat).max() > 1e-3  # a non-trivial gradient


@pytest.mark.parametrize("mem_id", list(MLP_MEMORIES))
@pytest.mark.parametrize("case", BOTH_CASES, ids=_ids(BOTH_CASES))
def test_mlp_rule_path_matches_loss_path(mem_id, case):
  memory = MLP_MEMORIES[mem_id]
  with jax.enable_x64(True):
    weights, k, v = _mlp_point(memory, seed=2)
    delta = _delta(case, jnp.float64)
    rule = B.weight_grad(memory, case.bias, weights, k, v, delta)
    loss = B.weight_grad(memory, case.bias, weights, k, v, delta, use_loss=True)
    chex.assert_trees_all_close(rule, loss, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mem_id", list(MLP_MEMORIES))
def test_mlp_huber_mixture_is_l2_or_delta_l1(mem_id):
  """Eq 16 through an MLP: δ·∇ℓ1 outside the ball, ∇ℓ2 inside (vjp of the rule)."""
  memory = MLP_MEMORIES[mem_id]
  with jax.enable_x64(True):
    weights, k, v = _mlp_point(memory, seed=3)
    mix = B.Huber("mixture")
    for d in NORM_DELTAS:
      got = B.weight_grad(memory, mix, weights, k, v, jnp.float64(d))
      if NORM_E <= d:
        want = B.weight_grad(memory, B.L2(), weights, k, v, use_loss=True)
      else:
        g1 = B.weight_grad(memory, B.L1(), weights, k, v, use_loss=True)
        want = jax.tree.map(lambda x, d=d: d * x, g1)
      chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Smooth lp (MIRAS Remark 5): sign(x) ≈ tanh(a x), |x| ≈ √(x² + ε).
SMOOTH_PS = (1.0, 1.5, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("p", SMOOTH_PS)
def test_smooth_lp_finite_at_zero_error(p):
  bias = B.Lp(p=p, smooth=True)
  memory = mj.LinearMemory()
  w = jnp.zeros((D_V, D_K), jnp.float32)
  k = jnp.asarray([0.5, -1.0, 2.0, 0.25], jnp.float32)
  for v in (jnp.zeros(D_V, jnp.float32), jnp.asarray([0.0, 2.0, -3.0], jnp.float32)):
    e = np.asarray(memory.apply(w, k) - v)
    assert e[0] == 0.0  # an exactly-zero error coordinate
    for use_loss in (False, True):
      got = B.weight_grad(memory, bias, w, k, v, use_loss=use_loss)
      chex.assert_tree_all_finite(got)
      np.testing.assert_array_equal(np.asarray(got)[0], 0.0)  # zero error, zero gradient
  # through an MLP as well, at e = 0 exactly
  mlp = MLP_MEMORIES["mlp_gelu"]
  weights = mlp.init(jax.random.key(0), D_MLP, D_MLP)
  kk = jnp.ones(D_MLP, jnp.float32)
  vv = mlp.apply(weights, kk)
  for use_loss in (False, True):
    chex.assert_tree_all_finite(B.weight_grad(mlp, bias, weights, kk, vv, use_loss=use_loss))


@pytest.mark.parametrize("p", SMOOTH_PS)
def test_smooth_lp_rule_is_remark_5_formula(p):
  bias = B.Lp(p=p, smooth=True, sharpness=10.0, eps=1e-6)
  k = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
  w = jnp.zeros((D_V, D_K), jnp.float32)  # M(k) = 0, so e = −v exactly in float32
  v = -np.array([0.05, -0.02, 0.0], np.float32)  # errors at the 1/sharpness scale, and exactly 0
  e = -v.astype(np.float64)
  sign = np.tanh(10.0 * e)
  g = sign if p == 1.0 else p * sign * np.sqrt(e**2 + 1e-6) ** (p - 1.0)
  got = B.weight_grad(mj.LinearMemory(), bias, w, k, v)
  np.testing.assert_allclose(got, np.outer(g, k), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("p", SMOOTH_PS)
@pytest.mark.parametrize("sharpness", [10.0, 100.0])
def test_smooth_lp_close_to_exact_for_large_errors(p, sharpness):
  """|e_i| ≥ 0.4 ≫ 1/sharpness: tanh(a e) ≈ sign(e) and √(e² + ε) ≈ |e|."""
  w, k, v, e = _linear_point()
  if sharpness == 10.0:  # |e| ≥ 1 ≫ 0.1
    v = (w.astype(np.float64) @ k - 2.5 * E).astype(np.float32)
    e = w.astype(np.float64) @ k.astype(np.float64) - v.astype(np.float64)
  assert np.abs(e).min() * sharpness >= 10.0
  smooth = B.Lp(p=p, smooth=True, sharpness=sharpness)
  exact_ref = _ref_lp(p)(e, k.astype(np.float64), v, None)
  for use_loss in (False, True):
    got = B.weight_grad(mj.LinearMemory(), smooth, jnp.asarray(w), k, v, use_loss=use_loss)
    np.testing.assert_allclose(got, exact_ref, rtol=1e-4, atol=1e-4 * np.abs(exact_ref).max())


# ---------------------------------------------------------------------------------------------
def test_invalid_arguments_raise_value_error_naming_them():
  with pytest.raises(ValueError, match=r"\bp\b"):
    B.Lp(p=0.5)
  with pytest.raises(ValueError, match=r"\bp\b"):
    B.Lp(p=float("nan"))
  with pytest.raises(ValueError, match="variant"):
    B.Huber("bogus")
  with pytest.raises(ValueError, match="radius"):
    B.RobustL2(radius=-1)
  with pytest.raises(ValueError, match=r"\bp\b"):
    mj.presets.get("moneta", p=0.5)


def test_valid_edge_arguments_are_accepted():
  assert B.Lp(p=1.0).p == 1.0
  assert B.RobustL2(radius=0.0).radius == 0.0
  for variant in B.HUBER_VARIANTS:
    assert B.Huber(variant).needs_delta


# ---------------------------------------------------------------------------------------------
# User-defined biases.
def _l2_loss(pred, v, delta):
  return 0.5 * jnp.sum(jnp.square(pred - v))


def _l2_rule(pred, v, delta):
  return pred - v


def _coord_huber_loss(pred, v, delta):
  a = pred - v
  return jnp.sum(jnp.where(jnp.abs(a) <= delta, 0.5 * a * a, delta * (jnp.abs(a) - 0.5 * delta)))


def test_from_loss_and_from_output_grad_match_l2():
  from_loss, from_rule = B.FromLoss(_l2_loss), B.FromOutputGrad(_l2_rule)
  assert from_loss.output_grad is None and from_rule.loss is None
  w, k, v, e = _linear_point()
  want_np = np.outer(e, k.astype(np.float64))
  for custom in (from_loss, from_rule):
    got = B.weight_grad(mj.LinearMemory(), custom, jnp.asarray(w), k, v)
    _assert_close(got, want_np, RTOL)
  mlp = MLP_MEMORIES["residual_ln"]
  weights = mlp.init(jax.random.key(1), D_MLP, D_MLP)
  kk = jnp.asarray([0.3, -0.8, 1.1], jnp.float32)
  vv = jnp.asarray([1.0, 0.5, -0.5], jnp.float32)
  want = B.weight_grad(mlp, B.L2(), weights, kk, vv)
  for custom in (from_loss, from_rule):
    chex.assert_trees_all_close(B.weight_grad(mlp, custom, weights, kk, vv), want, rtol=RTOL)
  with pytest.raises(ValueError, match="no loss"):
    B.weight_grad(mlp, from_rule, weights, kk, vv, use_loss=True)


def test_from_loss_with_delta_matches_coord_huber():
  custom = B.FromLoss(_coord_huber_loss, needs_delta=True)
  w, k, v, e = _linear_point()
  for d in COORD_DELTAS:
    got = B.weight_grad(mj.LinearMemory(), custom, jnp.asarray(w), k, v, jnp.float32(d))
    _assert_close(got, _ref_huber_coord(e, k.astype(np.float64), v, d), RTOL)


def test_custom_biases_in_a_rule_match_the_builtin_presets():
  """A ``Rule`` with a user bias runs through ``recurrent`` like the built-in one."""
  rng = np.random.default_rng(4)
  t, d = 12, 3
  q, k, v = (jnp.asarray(rng.normal(size=(t, d)), jnp.float32) for _ in range(3))
  lr = jnp.asarray(rng.uniform(0.1, 0.5, size=t), jnp.float32)
  w0 = jnp.asarray(rng.normal(size=(d, d)) * 0.3, jnp.float32)
  linear, gd = mj.LinearMemory(), mj.algorithms.GD()

  delta_net = mj.presets.get("delta_net")
  ys_ref, st_ref = mj.recurrent(delta_net, delta_net.init_state(w0), q, k, v, mj.Gates(lr=lr))
  for custom in (B.FromLoss(_l2_loss), B.FromOutputGrad(_l2_rule)):
    rule = mj.Rule("custom", linear, custom, mj.retention.NoRetention(), gd)
    ys, st = mj.recurrent(rule, rule.init_state(w0), q, k, v, mj.Gates(lr=lr))
    chex.assert_trees_all_close((ys, st), (ys_ref, st_ref), rtol=RTOL, atol=1e-6)

  # a delta-reading rule (Yaad's Eq 16 as a user gradient rule) needs gates.delta like yaad
  def mixture(pred, v, delta):
    e = pred - v
    return jnp.where(jnp.linalg.norm(e) <= delta, e, delta * jnp.sign(e))

  custom = B.FromOutputGrad(mixture, needs_delta=True)
  rule = mj.Rule("custom_yaad", linear, custom, mj.retention.Decay("any"), gd)
  assert "delta" in rule.required_gates
  yaad = mj.presets.get("yaad", memory="linear")
  gates = mj.Gates(
    lr=lr,
    retention=jnp.asarray(rng.uniform(0.8, 1.0, size=t), jnp.float32),
    delta=jnp.asarray(rng.uniform(0.2, 3.0, size=t), jnp.float32),
  )
  ys_ref, st_ref = mj.recurrent(yaad, yaad.init_state(w0), q, k, v, gates)
  ys, st = mj.recurrent(rule, rule.init_state(w0), q, k, v, gates)
  chex.assert_trees_all_close((ys, st), (ys_ref, st_ref), rtol=RTOL, atol=1e-6)
  with pytest.raises(ValueError, match="delta"):
    mj.recurrent(rule, rule.init_state(w0), q, k, v, gates._replace(delta=None))
