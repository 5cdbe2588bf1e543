"""Remat policies (``remat_policy``), the memory's per-chunk checkpoint (``chunk_remat``) and MAC's
per-segment checkpoint (``segment_remat``) change
what the backward pass keeps, not what it computes: equal losses and gradients, and a policy that
saves more holds more temporary memory (so the policy reaches the compiled step)."""

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from miras_jax import models
from tests.models.test_models import _EXTRA, _TINY, _tokens

FIELDS = {**_TINY, **_EXTRA["miras_lm"], "preset": "titans_lmm"}


def _loss_and_grads(tokens, name="miras_lm", **fields):
  base = FIELDS if name == "miras_lm" else {**_TINY, **_EXTRA[name]}
  config = models.config(name, "tiny", **base, **fields)
  model = models.get(name, config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  value, grads = compiled(params)
  temp = compiled.memory_analysis().temp_size_in_bytes
  if fields.get("scan_layers"):
    grads = models.unstacked_params(grads.to_pure_dict())
  else:
    grads = grads.to_pure_dict()
  return value, grads, temp


@pytest.mark.slow  # five fwd + bwd compiles (~36 s cold on 2 cores)
def test_remat_policies_and_chunk_remat_give_equal_gradients():
  tokens = _tokens()
  want_value, want, _ = _loss_and_grads(tokens)  # no remat at all
  temps = {}
  for name, fields in {
    "nothing": dict(remat=True, remat_policy="nothing", scan_layers=True),
    "dots": dict(remat=True, remat_policy="dots", scan_layers=True),
    "unrolled dots_no_batch": dict(remat=True, remat_policy="dots_no_batch"),
    "no chunk remat": dict(chunk_remat=False),
  }.items():
    value, grads, temps[name] = _loss_and_grads(tokens, **fields)
    chex.assert_trees_all_close(value, want_value, rtol=1e-6, atol=1e-7, custom_message=name)
    chex.assert_trees_all_close(grads, want, rtol=1e-4, atol=1e-6, custom_message=name)
  assert temps["dots"] > temps["nothing"], temps


@pytest.mark.slow  # MAC's fwd + bwd compiles twice (~20 s on 2 cores)
def test_mac_segment_remat_gives_equal_gradients():
  tokens = _tokens()
  want_value, want, _ = _loss_and_grads(tokens, "titans_mac", segment_remat=False)
  value, grads, _ = _loss_and_grads(tokens, "titans_mac", segment_remat=True)
  chex.assert_trees_all_close((value, grads), (want_value, want), rtol=1e-4, atol=1e-6)


def test_remat_policy_is_checked():
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    models.config("miras_lm", "tiny", remat_policy="everything")
