"""NeuralMemory: decoding token by token and prefill + continue equal the full forward; causality;
gradients reach every parameter; logical axis names; a Rule instance as the preset."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import miras_jax as mj
from miras_jax.nn.memory import NeuralMemory
from tests.streaming import assert_streams_like_forward

B, T, E, H, D = 2, 7, 16, 2, 8
CASES = [
  ("titans_lmm", {}),
  ("moneta", {}),
  ("memora", {"memory": "linear"}),
  ("yaad", {"memory": "linear"}),
  ("gated_delta_net", {}),
  ("gla", {}),
]


def _x(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, E)), jnp.float32)


def _layer(preset, opts):
  return NeuralMemory(
    E, H, D, preset=preset, preset_options=opts, chunk_size=3, gate_rank=4, rngs=nnx.Rngs(0)
  )


@pytest.mark.parametrize("preset,opts", CASES, ids=[c[0] for c in CASES])
def test_decode_and_prefill_equal_forward(preset, opts):
  layer = _layer(preset, opts)
  assert_streams_like_forward(layer, _x(), layer.init_state(B), split=4)


def test_causal():
  layer = _layer("titans_lmm", {})
  x, x2 = _x(0), _x(1)
  call = nnx.jit(lambda m, x: m(x))
  y, _ = call(layer, x)
  y2, _ = call(layer, x.at[:, 4:].set(x2[:, 4:]))
  np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(y2[:, 4:], y[:, 4:])


@pytest.mark.parametrize("preset,opts", [("titans_lmm", {}), ("gla", {})])
def test_gradients_reach_every_parameter(preset, opts):
  layer = _layer(preset, opts)
  x = _x()
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2)))(layer)
  for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param)):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


def test_params_have_logical_axes_and_bad_presets_raise():
  layer = _layer("titans_lmm", {})
  for _, p in nnx.iter_graph(layer):
    if isinstance(p, nnx.Param):
      assert len(p.get_metadata()["out_sharding"]) == p[...].ndim
  with pytest.raises(ValueError, match="parametric"):
    _layer("softmax_attention", {})
  with pytest.raises(ValueError, match="delta_product"):
    _layer("delta_product", {})


def test_a_rule_instance_is_used_as_given():
  """A ``Rule`` passed as ``preset`` gives the layer of the preset it equals (same parameters, same
  outputs); here a composed rule that is Gated DeltaNet, and one that is not."""
  x = _x(3)
  call = nnx.jit(lambda m, x: m(x)[0])
  by_name = call(_layer("gated_delta_net", {}), x)
  rule = mj.Rule(
    "my_gdn",
    mj.LinearMemory(),
    mj.biases.L2(),
    mj.retention.Decay("scalar"),
    mj.algorithms.GD(),
    grad_at="decayed",
  )
  np.testing.assert_allclose(call(_layer(rule, {}), x), by_name, rtol=1e-6, atol=1e-6)
  other = dataclasses.replace(rule, grad_at="previous")  # the gradient at W_{t−1}
  assert not np.allclose(call(_layer(other, {}), x), by_name, atol=1e-4)
  with pytest.raises(ValueError, match="preset_options apply to a preset name"):
    _layer(rule, {"grad_clip": 1.0})
