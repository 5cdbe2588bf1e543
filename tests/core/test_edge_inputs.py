"""Inputs at the edges of the contract (issue 15): empty sequences, non-finite tokens, half precision.

Every form of every preset: ``recurrent`` (the token-serial ground truth), ``chunked`` (exact or
mini-batch), ``chunked(write="chunk")`` and ``chunk_reference`` where the composition has them.
References come from ``recurrent`` on clean (or float32-cast) inputs.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from miras_jax.core.attention import softmax_attention
from miras_jax.core.cms import CMS, CMSOuter, cms_chunked, cms_recurrent
from miras_jax.core.exact import exact_form_applies
from miras_jax.core.selfmod import (
  MEMORIES,
  SelfModOuter,
  SelfModTitans,
  selfmod_chunked,
  selfmod_recurrent,
)
from tests.core.inputs import D, call_form, form_cases, used_inputs

NAMES = mj.presets.names()
B = 4  # chunk size; T = 8 puts the last token at the end of the second chunk
CASES = form_cases()


def test_every_preset_has_at_least_two_forms():
  for name in NAMES:
    assert sum(n == name for n, _ in CASES) >= 2, name


# ---- T = 0 -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "form"), CASES)
def test_empty_sequence_returns_empty_outputs_and_the_state(name, form):
  rule, state, q, k, v, g = used_inputs(name, 3)
  empty = lambda x: x[:0]
  ys, end = call_form(form, rule, state, q[:0], k[:0], v[:0], jax.tree.map(empty, g))
  assert ys.shape == (0, D) and ys.dtype == jnp.float32
  # the state is unchanged (the mini-batch forms add their chunk grid: phase 0 at the state)
  for field in ("weights", "accum", "momentum") if name != "softmax_attention" else end._fields:
    chex.assert_trees_all_equal(getattr(end, field), getattr(state, field))
  if getattr(end, "chunk_phase", None) is not None:
    assert int(end.chunk_phase) == 0
    chex.assert_trees_all_equal(end.chunk_base.weights, state.weights)


def test_empty_sequence_continues_a_chunk_left_open():
  rule, state, q, k, v, g = used_inputs("titans_lmm", 3)
  _, mid = mj.chunked(rule, state, q, k, v, g, chunk_size=B)
  ys, end = mj.chunked(
    rule, mid, q[:0], k[:0], v[:0], jax.tree.map(lambda x: x[:0], g), chunk_size=B
  )
  assert ys.shape == (0, D)
  chex.assert_trees_all_equal(end, mid)


def test_other_sequence_entry_points_take_an_empty_sequence():
  x = jnp.zeros((0, D))
  assert softmax_attention(x, x, x).shape == (0, D)
  key = jax.random.key(0)
  for variant in ("sequential", "independent"):
    cms = CMS(chunk_sizes=(2, 4), lrs=(0.1, 0.1), variant=variant)
    params = [(0.3 * jax.random.normal(key, (8, D)), 0.3 * jax.random.normal(key, (D, 8)))] * 2
    state = cms.init_state(params)
    outer = CMSOuter(values=[jnp.eye(D)] * 2, mix=jnp.ones(2))
    for fn in (cms_chunked, cms_recurrent):
      y, end = fn(cms, state, x, outer)
      assert y.shape == (0, D)
      chex.assert_trees_all_equal(end, state)
  rule = SelfModTitans(chunk_size=2, memory_chunk_size=2)
  w = {
    n: (0.3 * jax.random.normal(key, (8, D)), 0.3 * jax.random.normal(key, (D, 8)))
    for n in MEMORIES
  }
  state = rule.init_state(w)
  z = jnp.zeros(())
  outer = SelfModOuter(jnp.ones(D), z, jnp.ones(D), z, z)
  for fn in (selfmod_chunked, selfmod_recurrent):
    o, end = fn(rule, state, x, x, outer)
    assert o.shape == (0, D)
    chex.assert_trees_all_equal(end, state)


# ---- a non-finite token never reaches earlier outputs --------------------------------------------
def _corruptions(g):
  """Every input whose tokens can be made non-finite: the key, the value and each used gate."""
  return ["k", "v"] + [f"gates.{f}" for f in mj.Gates._fields if getattr(g, f) is not None]


def _corrupt(args, field, pos, value):
  q, k, v, g = args
  if field == "k":
    return q, k.at[pos].set(value), v, g
  if field == "v":
    return q, k, v.at[pos].set(value), g
  name = field.split(".")[1]
  return q, k, v, g._replace(**{name: getattr(g, name).at[pos].set(value)})


@functools.cache
def _jitted(name, form):
  rule = mj.presets.get(name)
  return jax.jit(lambda s, q, k, v, g: call_form(form, rule, s, q, k, v, g))


@pytest.mark.parametrize(("name", "form"), CASES)
def test_non_finite_token_leaves_earlier_outputs_exact(name, form):
  """NaN and inf (under jit: gate values are not checked there) at token 5 and at the last token
  7, in the key, the value or one gate: outputs before it equal the clean run's; the token's own
  output (write="chunk": its chunk's last) is non-finite exactly when ``recurrent``'s is."""
  t = 8
  rule, state, q, k, v, g = used_inputs(name, t)
  fn, ground = _jitted(name, form), _jitted(name, "recurrent")
  clean, _ = fn(state, q, k, v, g)
  assert np.all(np.isfinite(clean))
  for pos in (5, t - 1):
    for field in _corruptions(g):
      for value in (jnp.nan, jnp.inf):
        bad = _corrupt((q, k, v, g), field, pos, value)
        ys, _ = fn(state, *bad)
        ref, _ = ground(state, *bad)
        msg = f"{field}={value} at {pos}"
        # write="chunk": the first read of token pos's write is at its chunk's last token
        first = (pos // B + 1) * B - 1 if form == "chunked_write_chunk" else pos
        chex.assert_trees_all_close(
          ys[:first], clean[:first], rtol=1e-6, atol=1e-7, custom_message=msg
        )
        assert np.all(np.isfinite(ys[first])) == np.all(np.isfinite(ref[pos])), msg


def test_non_finite_value_stays_out_of_attention_it_is_hidden_from():
  """A NaN value row enters no query that the causal mask or the window hides it from (0 · NaN in
  the softmax-weighted sum of values would reach them)."""
  _, _, q, k, v, _ = used_inputs("softmax_attention", 8)
  bad = v.at[2].set(jnp.nan)
  y = softmax_attention(q, k, bad, window=3)
  want = softmax_attention(q, k, v, window=3)
  keep = np.array([0, 1, 5, 6, 7])  # queries that do not see token 2
  chex.assert_trees_all_close(y[keep], want[keep], rtol=1e-6)
  assert not np.any(np.isfinite(y[2:5]))
  rule = mj.presets.get("softmax_attention", window=3)
  ys, _ = mj.chunked(rule, rule.init_state(D, D), q, k, bad, mj.Gates(), chunk_size=4)
  chex.assert_trees_all_close(ys[keep], want[keep], rtol=1e-6)


# ---- half precision -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "form"), CASES)
def test_half_precision_inputs_are_computed_in_the_float32_state(name, form):
  """q, k, v and gates in float16 / bfloat16 with a float32 state: the result is the float32
  computation of the rounded inputs (``recurrent`` on them cast to float32, to round-off), in
  float32. Against the unrounded float32 inputs the outputs differ by the input rounding only:
  measured here at most 1.0e-3 (float16) and 1.1e-2 (bfloat16) relative; asserted below 1e-2 and
  5e-2."""
  rule, state, q, k, v, g = used_inputs(name, 8)
  full, _ = call_form("recurrent", rule, state, q, k, v, g)
  for dtype, tol in ((jnp.float16, 1e-2), (jnp.bfloat16, 5e-2)):
    half = jax.tree.map(lambda x, dtype=dtype: x.astype(dtype), (q, k, v, g))
    ys, end = call_form(form, rule, state, *half)
    assert ys.dtype == jnp.float32
    chex.assert_trees_all_equal_dtypes(
      end.weights if name != "softmax_attention" else end,
      state.weights if name != "softmax_attention" else state,
    )
    rounded = jax.tree.map(lambda x: x.astype(jnp.float32), half)
    # the ground truth of the form's semantics: recurrent, or for the chunk semantics (mini-batch,
    # write="chunk") the form itself on float32 inputs
    exact = form == "chunked" and (name == "softmax_attention" or exact_form_applies(rule))
    ref_form = "recurrent" if form == "recurrent" or exact else form
    want, _ = call_form(ref_form, rule, state, *rounded)
    chex.assert_trees_all_close(ys, want, rtol=1e-5, atol=1e-6)
    err = np.linalg.norm(ys - call_form(ref_form, rule, state, q, k, v, g)[0]) / np.linalg.norm(
      full
    )
    assert err < tol, (dtype, err)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_state_is_refused_naming_it(dtype):
  rule, state, q, k, v, g = used_inputs("delta_net", 4)
  half = state._replace(weights=state.weights.astype(dtype))
  with pytest.raises(ValueError, match=f"state.weights .*{jnp.dtype(dtype).name}"):
    mj.recurrent(rule, half, q, k, v, g)
  attn = mj.presets.get("softmax_attention")
  cache = attn.init_state(D, D, capacity=4)
  cache = cache._replace(keys=cache.keys.astype(dtype))
  with pytest.raises(ValueError, match="state.keys"):
    mj.recurrent(attn, cache, q, k, v, mj.Gates())
