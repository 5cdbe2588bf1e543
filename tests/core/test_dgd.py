"""Delta Gradient Descent (Nested Learning notes §3, test criteria §8.1–8.3).

References are independent: a direct linear solve of the proximal problem, an iterative minimiser
of the proximal objectives, and closed forms of the overwrite / superposition behaviour.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from miras_jax.core import algorithms as algos


def _dgd_write(w, x, u, lr):
  """One DGD write through the library: a linear memory with the dot-product target u.

  The ``dgd`` preset's bias is ℓ2; to isolate the algorithm we call it with a gradient
  ∇_W = −u xᵀ (the dot-product objective ⟨Wx, −u⟩, whose output gradient is −u)."""
  g = mj.Gates(lr=jnp.asarray(lr, jnp.float64))
  step, _ = algos.DGD().step(-jnp.outer(u, x), None, g, x, w, (x,))
  return w + step


def test_dgd_equals_the_direct_solve_of_the_proximal_problem():
  """§8.2: W(xxᵀ + I/η) = u xᵀ + W_t/η solved directly equals W_t(I − η'xxᵀ) + η' u xᵀ."""
  with jax.enable_x64():
    rng = np.random.default_rng(0)
    for lr, scale in ((0.3, 2.5), (2.0, 0.4), (10.0, 1.0)):
      w = rng.normal(size=(3, 5))
      x = scale * rng.normal(size=5)  # not a unit vector
      u = rng.normal(size=3)
      a = np.outer(x, x) + np.eye(5) / lr
      want = np.linalg.solve(a.T, (np.outer(u, x) + w / lr).T).T
      got = _dgd_write(jnp.asarray(w), jnp.asarray(x), jnp.asarray(u), lr)
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
      lr_k = lr / (1.0 + lr * x @ x)
      closed = w @ (np.eye(5) - lr_k * np.outer(x, x)) + lr_k * np.outer(u, x)
      np.testing.assert_allclose(want, closed, rtol=1e-10, atol=1e-12)


def test_gd_and_momentum_are_proximal_steps():
  """§8.1: argmin ⟨Wx, u⟩ + ‖W − W_t‖²/(2η) = W_t − η u xᵀ (minimised iteratively), and the
  momentum argmin of −⟨m, g⟩ + ‖m − m_t‖²/(2η) is m_t + η g."""
  with jax.enable_x64():
    rng = np.random.default_rng(1)
    w_t, x, u, lr = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=3), 0.7

    def objective(w):
      return jnp.dot(w @ x, u) + jnp.sum((w - w_t) ** 2) / (2 * lr)

    w = jnp.zeros((3, 4))
    for _ in range(200):  # the objective is 1/η-strongly convex: GD with step η/2 contracts
      w = w - 0.5 * lr * jax.grad(objective)(w)
    np.testing.assert_allclose(np.asarray(w), w_t - lr * np.outer(u, x), atol=1e-6)
    g = mj.Gates(lr=jnp.asarray(lr))
    step, _ = algos.GD().step(jnp.outer(u, x), None, g, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(w_t + step), np.asarray(w), atol=1e-6)

    m_t, grad = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    m = jnp.zeros((3, 4))
    mom = lambda m: -jnp.sum(m * grad) + jnp.sum((m - m_t) ** 2) / (2 * lr)  # noqa: E731
    for _ in range(200):
      m = m - 0.5 * lr * jax.grad(mom)(m)
    np.testing.assert_allclose(np.asarray(m), m_t + lr * grad, atol=1e-6)


def test_dgd_overwrites_where_gd_superposes():
  """§8.3: two writes to one unit key with targets u1 then u2."""
  with jax.enable_x64():
    rng = np.random.default_rng(2)
    w0 = jnp.asarray(rng.normal(size=(3, 4)))
    x = rng.normal(size=4)
    x = jnp.asarray(x / np.linalg.norm(x))
    z = rng.normal(size=4)
    z = jnp.asarray(z - (z @ x) * x)  # z ⊥ x
    u1, u2 = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))
    big = 1e9
    w = _dgd_write(_dgd_write(w0, x, u1, big), x, u2, big)
    np.testing.assert_allclose(np.asarray(w @ x), np.asarray(u2), atol=1e-7)  # only u2 is left
    np.testing.assert_allclose(np.asarray(w @ z), np.asarray(w0 @ z), atol=1e-9)  # ⊥ untouched
    # one DGD step on a unit key: W x = (1 − η')W_t x + η' u
    lr = 0.8
    lr_k = lr / (1.0 + lr)
    w1 = _dgd_write(w0, x, u1, lr)
    np.testing.assert_allclose(
      np.asarray(w1 @ x), np.asarray((1 - lr_k) * (w0 @ x) + lr_k * u1), atol=1e-12
    )
    # GD on the dot-product objective ⟨Wx, −u⟩ superposes: W x = W_0 x + η (u1 + u2)
    g = mj.Gates(lr=jnp.asarray(lr))
    w = w0
    for u in (u1, u2):
      step, _ = algos.GD().step(-jnp.outer(u, x), None, g, x)
      w = w + step
    np.testing.assert_allclose(np.asarray(w @ x), np.asarray(w0 @ x + lr * (u1 + u2)), atol=1e-12)


def test_dgd_preset_is_eq_93():
  """The linear ``dgd`` preset (ℓ2 bias, keys of any norm) is [ARX] Eq 93 with the exact η',
  written out in numpy: W_t = W_{t−1}(α_t I − η'_t k kᵀ) − η'_t (W_{t−1}k − v) kᵀ."""
  rng = np.random.default_rng(3)
  t, d = 9, 4
  k = rng.normal(size=(t, d)) * rng.uniform(0.5, 1.5, (t, 1))
  v, q = rng.normal(size=(t, d)), rng.normal(size=(t, d))
  lr, alpha = rng.uniform(0.1, 0.6, t), rng.uniform(0.8, 1.0, t)
  w0 = 0.3 * rng.normal(size=(d, d))
  rule = mj.presets.get("dgd")
  ys, state = mj.recurrent(
    rule,
    rule.init_state(jnp.asarray(w0, jnp.float32)),
    *(jnp.asarray(a, jnp.float32) for a in (q, k, v)),
    mj.Gates(lr=jnp.asarray(lr, jnp.float32), retention=jnp.asarray(alpha, jnp.float32)),
  )
  w, want = w0, []
  for i in range(t):
    lr_k = lr[i] / (1 + lr[i] * k[i] @ k[i])
    w = w @ (alpha[i] * np.eye(d) - lr_k * np.outer(k[i], k[i])) - lr_k * np.outer(
      w @ k[i] - v[i], k[i]
    )
    want.append(w @ q[i])
  np.testing.assert_allclose(np.asarray(ys), np.stack(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(state.weights), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_dgd_chunked_is_the_chunk_reference_and_chunk_one_is_recurrent(memory):
  rule = mj.presets.get("dgd", memory=memory, momentum=True)
  rng = np.random.default_rng(4)
  t, d = 10, 4
  f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  k = rng.normal(size=(t, d))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  q, v = f(rng.normal(size=(t, d))), f(rng.normal(size=(t, d)))
  g = mj.Gates(
    lr=f(rng.uniform(0.1, 0.4, t)), retention=f(rng.uniform(0.9, 1, t)),
    momentum=f(rng.uniform(0, 0.9, t)),
  )  # fmt: skip
  w0 = 0.3 * rng.normal(size=(d, d)) if memory == "linear" else None
  w0 = f(w0) if w0 is not None else rule.memory.init(jax.random.key(0), d, d)
  state = rule.init_state(w0)
  ys1, _ = mj.recurrent(rule, state, q, f(k), v, g)
  ys_c1, _ = mj.chunked(rule, state, q, f(k), v, g, chunk_size=1)
  chex.assert_trees_all_close(ys_c1, ys1, rtol=1e-5, atol=1e-6)
  ys4, _ = mj.chunked(rule, state, q, f(k), v, g, chunk_size=4)
  ref4, _ = mj.chunk_reference(rule, state, q, f(k), v, g, chunk_size=4)
  chex.assert_trees_all_close(ys4, ref4, rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(ys4), np.asarray(ys1), atol=1e-4)  # chunking changes the base


def test_dgd_needs_the_base_weights():
  with pytest.raises(ValueError, match="inputs"):
    algos.DGD().step(jnp.zeros((2, 2)), None, mj.Gates(lr=jnp.asarray(0.1)), jnp.ones(2))
