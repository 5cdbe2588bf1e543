"""``miras_jax.surprise``: the loss and inner-gradient norm of each pair at a fixed memory state
(Titans Eq 12–13), against numpy (the hand-written backprop of tests/core/test_presets_reference.py)
and the delta rule's closed form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from tests.core import test_presets_reference as ref

T, D = 5, 4


def _pairs(seed):
  rng = np.random.default_rng(seed)
  k = rng.normal(size=(T, D))
  return k / np.linalg.norm(k, axis=1, keepdims=True), rng.normal(size=(T, D))


def _mlp_case(preset, seed):
  rule = mj.presets.get(preset)
  state = rule.init_state(rule.memory.init(jax.random.key(seed), D, D, scale=1.0))
  # the memory's weights W (Moneta's are derived from its A_0 by the ℓq map)
  return rule, state, [np.asarray(w, np.float64) for w in state.weights]


def _norm(grads):
  return np.sqrt(sum(np.sum(g * g) for g in grads))


def test_linear_l2_memory_is_the_closed_form():
  """Delta rule: ℓ = ½‖Wk − v‖², ∇ = (Wk − v) kᵀ, so ‖∇‖ = ‖e‖ ‖k‖."""
  rule = mj.presets.get("delta_net")
  w = np.random.default_rng(0).normal(size=(D, D))
  k, v = _pairs(1)
  loss, norm = jax.jit(lambda s, k, v: mj.surprise(rule, s, k, v))(
    rule.init_state(jnp.asarray(w, jnp.float32)),
    jnp.asarray(k, jnp.float32),
    jnp.asarray(v, jnp.float32),
  )
  e = k @ w.T - v
  chex.assert_trees_all_close(np.asarray(loss), 0.5 * np.sum(e * e, 1), rtol=1e-5)
  chex.assert_trees_all_close(np.asarray(norm), np.linalg.norm(e, axis=1), rtol=1e-5)


@pytest.mark.parametrize(
  "preset,mem,loss_np,grad_np",
  [
    ("titans_lmm", ref.TITANS_MLP, lambda e: 0.5 * np.sum(e * e), lambda e: e),
    (
      "moneta",
      ref.MIRAS_MLP,
      lambda e: np.sum(np.abs(e) ** 3),
      lambda e: ref._lp_grad(e, 3.0, False),
    ),
  ],
)
def test_mlp_memories_match_numpy_backprop(preset, mem, loss_np, grad_np):
  rule, state, ws = _mlp_case(preset, 2)
  k, v = _pairs(3)
  loss, norm = mj.surprise(rule, state, jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32))
  for t in range(T):
    e = mem.apply(ws, k[t]) - v[t]
    np.testing.assert_allclose(float(loss[t]), loss_np(e), rtol=1e-4)
    np.testing.assert_allclose(float(norm[t]), _norm(mem.pullback(ws, k[t], grad_np(e))), rtol=1e-4)


def test_yaad_has_no_loss_and_its_norm_follows_the_huber_switch():
  """Yaad's mixture is defined by its update only: NaN loss; the norm takes the ℓ2 branch for a
  large δ and the δ·sign branch for a small one."""
  rule, state, ws = _mlp_case("yaad", 4)
  k, v = _pairs(5)
  for delta in (1e3, 0.05):
    gates = mj.Gates(delta=jnp.full((T,), delta, jnp.float32))
    loss, norm = mj.surprise(
      rule, state, jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), gates
    )
    assert np.all(np.isnan(np.asarray(loss)))
    for t in range(T):
      e = ref.MIRAS_MLP.apply(ws, k[t]) - v[t]
      want = _norm(ref.MIRAS_MLP.pullback(ws, k[t], ref._huber_mixture_grad(e, delta)))
      np.testing.assert_allclose(float(norm[t]), want, rtol=1e-4)


def test_a_delta_rule_write_at_lr_one_removes_the_surprise_of_its_pair():
  """With a unit key, W + (v − Wk) kᵀ maps k to v exactly: the pair's surprise after the write is 0,
  and that of an orthogonal key is unchanged."""
  rule = mj.presets.get("delta_net")
  state = rule.init_state(jnp.asarray(np.random.default_rng(6).normal(size=(D, D)), jnp.float32))
  eye = jnp.eye(D)
  k, v = eye[:2], jnp.asarray(np.random.default_rng(7).normal(size=(2, D)), jnp.float32)
  before = mj.surprise(rule, state, k, v)
  _, after_state = mj.recurrent(rule, state, k[:1], k[:1], v[:1], mj.Gates(lr=jnp.ones((1,))))
  after = mj.surprise(rule, after_state, k, v)
  assert float(before[0][0]) > 0.01
  np.testing.assert_allclose(np.asarray(after[0][0]), 0.0, atol=1e-10)
  np.testing.assert_allclose(np.asarray(after[1][0]), 0.0, atol=1e-5)
  chex.assert_trees_all_close(after[0][1], before[0][1], rtol=1e-5)


def test_bad_input_is_named():
  rule = mj.presets.get("delta_net")
  state = rule.init_state(jnp.zeros((D, D)))
  k, v = jnp.zeros((T, D)), jnp.zeros((T, D))
  with pytest.raises(ValueError, match="rule must be a parametric Rule"):
    mj.surprise(mj.presets.get("softmax_attention"), state, k, v)
  with pytest.raises(ValueError, match="k must have rank 2"):
    mj.surprise(rule, state, k[0], v)
  with pytest.raises(ValueError, match="same length T"):
    mj.surprise(rule, state, k[:2], v)
  with pytest.raises(ValueError, match=r"k must be \[T, 4\]"):
    mj.surprise(rule, state, jnp.zeros((T, 3)), v)
  with pytest.raises(ValueError, match="gates.delta is required"):
    yaad, yaad_state, _ = _mlp_case("yaad", 0)
    mj.surprise(yaad, yaad_state, k, v)
