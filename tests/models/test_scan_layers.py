"""``scan_layers``: the blocks stored stacked and run as one ``lax.scan`` give the logits, the
gradients and the decode of the unrolled stack (same parameters, converted by
``models.stacked_params``), and trace the block once."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax import models
from tests.models.test_models import _EXTRA, _TINY, _tokens

LAYERS = 3
SPLIT = 5  # prefill 5 tokens, then decode 2 (from the prefill cache, then from a decode cache)


def _pair(name, **fields):
  fields = {**_TINY, **_EXTRA[name], "layers": LAYERS, **fields}
  unrolled = models.get(name, models.config(name, "tiny", **fields), rngs=nnx.Rngs(0))
  scanned = models.get(
    name, models.config(name, "tiny", **fields, scan_layers=True), rngs=nnx.Rngs(0)
  )
  return unrolled, scanned


def _run(model, tokens, split):
  """Logits, the gradient of a loss on them, and prefill + token-by-token decode from ``split``."""
  graphdef, params = nnx.split(model)

  def loss(p):
    return jnp.mean(nnx.merge(graphdef, p)(tokens)[0] ** 2)

  logits, _ = nnx.merge(graphdef, params)(tokens)
  grads = jax.grad(loss)(params)
  m = nnx.merge(graphdef, params)
  _, cache = m(tokens[:, :split])
  steps = []
  for i in range(split, tokens.shape[1]):
    y, cache = m.decode(tokens[:, i : i + 1], cache)
    steps.append(y)
  return logits, grads, jnp.concatenate(steps, 1)


# MAC and Hope compile their segment / token scans inside the layer scan (~40-55 s each on 2 cores)
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  "name",
  [
    "miras_lm",
    "transformer",
    pytest.param("titans_mac", marks=_SLOW),
    pytest.param("hope", marks=_SLOW),
  ],
)
def test_scanned_equals_unrolled(name):
  unrolled, scanned = _pair(name, layers=2)
  tokens = _tokens()
  run = jax.jit(lambda a, b: (_run(a, tokens, SPLIT), _run(b, tokens, SPLIT)))
  (l1, g1, d1), (l2, g2, d2) = run(unrolled, scanned)
  np.testing.assert_allclose(l2, l1, rtol=1e-5, atol=1e-5)
  g1 = models.stacked_params(g1.to_pure_dict())
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), g1, g2.to_pure_dict()
  )
  np.testing.assert_allclose(d2, l1[:, SPLIT:], rtol=1e-4, atol=1e-4)  # decode == forward
  np.testing.assert_allclose(d2, d1, rtol=1e-5, atol=1e-5)


def test_the_block_is_traced_once():
  unrolled, scanned = _pair("miras_lm")
  tokens = _tokens()

  def size(model):
    graphdef, params = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens)[0])(params)
    return len(jaxpr.jaxpr.eqns) + sum(
      len(e.params["jaxpr"].jaxpr.eqns) for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"
    )

  assert size(scanned) < size(unrolled) / 2  # one block body instead of LAYERS


def test_the_scanned_model_holds_the_unrolled_parameters_stacked():
  unrolled, scanned = _pair("miras_lm")
  params = nnx.state(unrolled, nnx.Param).to_pure_dict()
  stacked = nnx.state(scanned, nnx.Param).to_pure_dict()
  assert "blocks" not in stacked
  chex.assert_trees_all_equal(models.stacked_params(params), stacked)
  chex.assert_trees_all_equal(models.unstacked_params(stacked), params)
  spec = nnx.get_partition_spec(nnx.state(scanned, nnx.Param)).to_pure_dict()
  assert spec["stack"]["mlp"]["up"]["kernel"] == jax.sharding.PartitionSpec(
    "layers", "embed", "mlp"
  )
  with pytest.raises(ValueError, match="expected the unrolled layout"):
    models.stacked_params(stacked)


def test_scan_layers_needs_identical_blocks():
  with pytest.raises(ValueError, match="scan_layers needs identical blocks"):
    _pair("hybrid_lm", memory_layers=(1,))


def test_paper_sizes_scan_their_layers():
  """The default at the paper sizes (with block remat): measured 4.5× (Gated DeltaNet) to 11×
  (Transformer) less XLA temp at 340M (docs/training.md, "Scan over layers")."""
  for name in models.names():
    assert models.config(name, "340m").scan_layers, name
    assert not models.config(name, "tiny").scan_layers, name


def test_the_gate_probe_reads_a_scanned_model_as_its_unrolled_twin():
  from miras_jax.train.loop import _gate_probe

  tokens = _tokens()
  got = []
  for model in _pair("miras_lm"):
    params = nnx.state(model, nnx.Param).to_pure_dict()
    got.append(jax.jit(_gate_probe("miras_lm", model.config))(params, {"inputs": tokens}))
  assert set(got[0]) == {"lr", "momentum", "retention"}
  chex.assert_trees_all_close(got[1], got[0], rtol=1e-6, atol=1e-7)
  scanned = _pair("miras_lm")[1]
  scanned.stack.memory.record_gates = True
  with pytest.raises(ValueError, match="needs the blocks unrolled"):
    scanned(tokens)
