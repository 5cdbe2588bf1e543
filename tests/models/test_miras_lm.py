"""miras_lm: shapes, causality, decode == forward, gradients, one compile per train step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax import models
from tests.streaming import assert_streams_like_forward

B, T = 2, 6


def _model(preset="titans_lmm", **kw):
  config = models.MirasLMConfig(
    vocab=32,
    dim=16,
    layers=2,
    heads=2,
    head_dim=8,
    mlp_hidden=32,
    preset=preset,
    chunk_size=4,
    gate_rank=4,
    **kw,
  )
  return models.get("miras_lm", config, rngs=nnx.Rngs(0))


def _tokens(seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 32, size=(B, T)), jnp.int32)


@pytest.mark.parametrize("preset", ["titans_lmm", "gated_delta_net"])
def test_decode_equals_forward_and_is_causal(preset):
  model = _model(preset)
  x = _tokens()
  logits = assert_streams_like_forward(model, x, model.init_cache(B), split=4)
  chex.assert_shape(logits, (B, T, 32))
  later, _ = model(x.at[:, 4:].set(_tokens(1)[:, 4:]))
  np.testing.assert_allclose(later[:, :4], logits[:, :4], rtol=1e-6, atol=1e-6)


def test_train_step_compiles_once_and_reaches_every_parameter():
  model = _model()
  x = _tokens()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grads(state, x):
    m = nnx.merge(graphdef, state)
    return nnx.grad(lambda m: jnp.mean(m(x)[0] ** 2))(m)

  graphdef, state = nnx.split(model)
  g = grads(state, x)
  g = grads(state, _tokens(1))  # same shapes: no second trace
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(g, nnx.Param)):
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), path


def test_registry_and_bad_input():
  assert "miras_lm" in models.names()
  with pytest.raises(ValueError, match="unknown model"):
    models.get("nope", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="MirasLMConfig"):
    models.get("miras_lm", {"dim": 4}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="tokens"):
    _model()(jnp.zeros((B, T)))
