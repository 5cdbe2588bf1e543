"""M3 and Newton–Schulz against the criteria of nested-learning-notes §8.4–8.5."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from miras_jax.optim import m3, newton_schulz, scale_by_m3


def _gauss(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("shape", [(256, 64), (64, 256)])
def test_cubic_newton_schulz_orthogonalises_and_matches_the_polar_factor(shape):
  g = _gauss(shape)
  o = newton_schulz(g, steps=10)
  chex.assert_shape(o, shape)
  small = o.T @ o if shape[0] > shape[1] else o @ o.T
  assert float(jnp.linalg.norm(small - jnp.eye(min(shape)))) < 1e-3
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  np.testing.assert_allclose(o, u @ vt, atol=1e-3)
  few = newton_schulz(g, steps=5)  # the notes: T = 5 is not enough for the cubic
  assert (
    float(jnp.linalg.norm((few.T @ few if shape[0] > shape[1] else few @ few.T) - jnp.eye(64)))
    > 1e-3
  )


def test_quintic_singular_values_and_zero_input():
  s = np.linalg.svd(
    np.asarray(newton_schulz(_gauss((256, 64)), steps=5, kind="quintic")), compute_uv=False
  )
  assert 0.6 < s.min() and s.max() < 1.25
  z = newton_schulz(jnp.zeros((8, 4)))
  assert np.all(np.isfinite(z)) and np.all(z == 0)
  with pytest.raises(ValueError, match="matrix"):
    newton_schulz(jnp.zeros(3))


def _run(tx, grads):
  params = jax.tree.map(jnp.zeros_like, grads[0])
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(g, state)
    out.append((u, state))
  return out


def test_slow_momentum_schedule():
  f, b3 = 3, 0.7
  grads = [{"w": _gauss((6, 4), i)} for i in range(2 * f + 1)]
  out = _run(scale_by_m3(b3=b3, frequency=f), grads)
  for t, (_, st) in enumerate(out, start=1):
    o2 = np.asarray(st.o2["w"])
    if t < f:
      assert np.all(o2 == 0), t
    if t in (f, 2 * f):  # refreshed after steps f, 2f: M2 = β3 · Σ all gradients so far
      total = sum(np.asarray(g["w"], np.float64) for g in grads[:t])
      np.testing.assert_allclose(st.m2["w"], b3 * total, rtol=1e-5)
      np.testing.assert_allclose(o2, newton_schulz(jnp.asarray(b3 * total, jnp.float32)), atol=1e-5)
    if t not in (f, 2 * f) and t > 1:
      np.testing.assert_array_equal(o2, out[t - 2][1].o2["w"])  # unchanged between boundaries


def test_f_infinite_alpha_zero_closed_form_and_lr():
  b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.1
  grads = [{"w": _gauss((5, 3), i), "b": _gauss((3,), 10 + i)} for i in range(4)]
  (u, _), *_ = _run(m3(lr, b1=b1, b2=b2, eps=eps, alpha=0.0, frequency=None), grads)[-1:]
  sums = {k: sum(np.asarray(g[k], np.float64) for g in grads) for k in ("w", "b")}
  sq = {k: sum(np.asarray(g[k], np.float64) ** 2 for g in grads) for k in ("w", "b")}
  w = (
    -lr
    * np.asarray(newton_schulz(jnp.asarray(b1 * sums["w"], jnp.float32)))
    / (np.sqrt(b2 * sq["w"]) + eps)
  )
  b = (
    -lr * (sums["b"] / np.linalg.norm(sums["b"])) / (np.sqrt(b2 * sq["b"]) + eps)
  )  # 1 × n polar factor
  np.testing.assert_allclose(u["w"], w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(u["b"], b, rtol=1e-4, atol=1e-6)


def test_constant_gradient_step_shrinks_like_inverse_sqrt_t():
  g = {"w": _gauss((4, 4), 3), "b": _gauss((4,), 4)}
  out = _run(scale_by_m3(frequency=None, alpha=0.0), [g] * 16)
  for k in ("w", "b"):
    n1, n4, n16 = (float(jnp.linalg.norm(out[t - 1][0][k])) for t in (1, 4, 16))
    np.testing.assert_allclose([n4 / n1, n16 / n1], [0.5, 0.25], rtol=1e-3)


def test_inject_hyperparams_and_bad_arguments():
  static = ("frequency", "ns_steps", "ns")
  tx = optax.inject_hyperparams(m3, static_args=static)(learning_rate=0.05, frequency=2)
  ((u, st),) = _run(tx, [{"w": _gauss((3, 2))}])
  assert float(st.hyperparams["learning_rate"]) == pytest.approx(0.05)
  with pytest.raises(ValueError, match="frequency"):
    scale_by_m3(frequency=0)
  with pytest.raises(ValueError, match="ns"):
    scale_by_m3(ns="septic")
