"""The Nested Learning layers against their documented equations (``tests/nn/reference.py``):
the CMS layer (every variant) in numpy token by token, and self-modifying Titans (numpy around the
core's token-serial ``selfmod_recurrent``, with the documented gate biases)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax.core import selfmod as sm
from miras_jax.nn.nested import CMSLayer, SelfModifyingTitans
from tests.nn import reference as ref

B, T, E, H, D = 2, 12, 16, 2, 8
TOL = 1e-4
CHUNKS, LRS = (1, 2, 4), (0.5, 0.3, 0.2)  # large rates: every update shows in the outputs


def _x(seed=0):
  return np.random.default_rng(seed).normal(size=(B, T, E))


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_cms_layer_matches_the_documented_chain(variant):
  layer = CMSLayer(E, 24, chunk_sizes=CHUNKS, lrs=LRS, variant=variant, rngs=nnx.Rngs(2))
  rng = np.random.default_rng(7)
  for v in layer.values:  # meta-learned value maps (zeros at init): give the levels a target
    v[...] = jnp.asarray(rng.normal(size=v.shape) / np.sqrt(E), jnp.float32)
  if layer.mix is not None:
    layer.mix[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=layer.mix.shape), jnp.float32)
  x = _x()
  got, _ = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
  want = ref.cms(layer, x, chunk_sizes=CHUNKS, lrs=LRS, variant=variant)
  chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=TOL, atol=TOL)


def test_self_modifying_titans_matches_the_documented_data_flow():
  rule = sm.SelfModTitans(chunk_size=2, memory_chunk_size=4, max_lr=0.5)
  mixer = SelfModifyingTitans(E, H, D, rule=rule, expansion=2, conv_kernel=4, rngs=nnx.Rngs(3))
  ref.randomize_norm_scales(mixer)
  x = _x(1)
  got, _ = nnx.jit(lambda m, x: m(x))(mixer, jnp.asarray(x, jnp.float32))
  want = ref.self_modifying_titans(mixer, x, rule, heads=H, head_dim=D)
  chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=TOL, atol=TOL)
