"""``core.blocks.remat_scan``: the two-level checkpointed scan gives the plain scan's values and
gradients, whatever the length (a divisor to group by, or a prime)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.core.blocks import remat_scan


def _run(xs, w, remat):
  def body(h, x):  # a nonlinear recurrence with a per-step output
    h = jnp.tanh(h * w + x)
    return h, h**2

  h, ys = remat_scan(body, jnp.zeros(3), xs, remat)
  return jnp.sum(h) + jnp.sum(jnp.sin(ys))


@pytest.mark.parametrize("n", [1, 7, 12, 16])  # 12 → groups of 4, 16 → of 4, 7 and 1 → one level
def test_remat_scan_equals_the_plain_scan(n):
  xs = jnp.asarray(np.random.default_rng(n).normal(size=(n, 3)), jnp.float32)
  w = jnp.asarray([0.9, -1.1, 0.5], jnp.float32)
  grad = jax.jit(jax.value_and_grad(_run, argnums=(0, 1)), static_argnums=2)
  chex.assert_trees_all_close(grad(xs, w, True), grad(xs, w, False), rtol=1e-6, atol=1e-6)


def test_remat_scan_groups_the_steps():
  """n = 16 runs as 4 groups of 4: an outer scan of length 4 around an inner one of length 4."""
  jaxpr = jax.make_jaxpr(lambda xs: _run(xs, jnp.ones(3), True))(jnp.ones((16, 3)))
  outer = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert [e.params["length"] for e in outer] == [4]
