"""Mixed precision (``LMConfig.dtype``): every model's bfloat16 forward computes its projections in
bfloat16, keeps its logits and memory states in float32, and stays within a stated tolerance of
the float32 forward of the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax import models
from tests.models.test_models import _EXTRA, _TINY, _tokens

# Relative RMS error of the bfloat16 logits against float32 (same parameters, T = 7): measured
# 0.5–1.0 % for every model at these shapes (bfloat16 keeps 8 bits of mantissa, 0.4 %).
REL_TOL = 3e-2


def _dot_dtypes(fn, *args):
  """The operand dtypes of every matmul in ``fn``'s program (sub-programs included)."""
  seen = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        seen.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for p in eqn.params.values():
        for j in p if isinstance(p, (tuple, list)) else (p,):
          if hasattr(j, "eqns"):
            walk(j)
          elif hasattr(j, "jaxpr") and hasattr(j.jaxpr, "eqns"):
            walk(j.jaxpr)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return seen


@pytest.mark.parametrize("name", models.names())
def test_bfloat16_forward_is_close_to_float32(name):
  fields = {**_TINY, **_EXTRA[name]}
  m32 = models.get(name, models.config(name, "tiny", **fields), rngs=nnx.Rngs(0))
  m16 = models.get(name, models.config(name, "tiny", **fields, dtype="bfloat16"), rngs=nnx.Rngs(0))
  tokens = _tokens()
  graph16, params16 = nnx.split(m16)

  def forward(params, tokens):
    return nnx.merge(graph16, params)(tokens)

  (y32, _), (y16, _) = nnx.jit(lambda a, t: a(t))(m32, tokens), jax.jit(forward)(params16, tokens)
  assert y16.dtype == jnp.float32  # the logits are float32 for the loss
  a, b = np.asarray(y32), np.asarray(y16)
  rel = np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2))
  assert 0 < rel < REL_TOL, rel  # > 0: the bfloat16 model did not run in float32
  dots = _dot_dtypes(forward, params16, tokens)
  assert any(d == ("bfloat16", "bfloat16") for d in dots), dots  # projections in bfloat16


def test_memory_state_and_gates_stay_float32_under_bfloat16():
  fields = {**_TINY, **_EXTRA["miras_lm"], "dtype": "bfloat16"}
  model = models.get("miras_lm", models.config("miras_lm", "tiny", **fields), rngs=nnx.Rngs(0))
  block = model.blocks[0].memory
  block.record_gates = True
  _, cache = model(_tokens())
  for leaf in jax.tree.leaves(cache[0].memory.memory):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  gates = nnx.pop(model, nnx.Intermediate)
  for leaf in jax.tree.leaves(gates):
    assert leaf.dtype == jnp.float32


def test_dtype_is_checked():
  with pytest.raises(ValueError, match="dtype must be one of"):
    models.config("transformer", "tiny", dtype="float16")


@pytest.mark.slow  # 600 steps of the make-train run, in bfloat16 (several minutes on 2 CPU cores)
def test_a_bfloat16_model_learns_mqar(tmp_path):
  """``make train``'s MQAR run (Titans LMM, 600 steps; 1.000 / 0.999 / 1.000 in float32 over three
  seeds, docs/results.md) with ``dtype="bfloat16"`` learns the task too."""
  from configs import mqar
  from miras_jax.train.loop import train

  c = mqar.get_config()
  with c.unlocked():
    c.model.overrides.dtype = "bfloat16"
  c.data.data_dir = str(tmp_path / "tfds")
  c.train.eval_every = 0
  summary = train(c, str(tmp_path / "run"))
  assert summary["status"] == "completed"
  assert summary["eval/accuracy"] >= 0.95, summary["eval/accuracy"]
