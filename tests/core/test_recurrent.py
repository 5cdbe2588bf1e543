"""Properties of the token-serial form for every preset: causality, jit, outer gradients, calls in
pieces, long-sequence stability, and clear errors on bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from tests.core.inputs import PARAMETRIC, D, make_inputs


@pytest.mark.parametrize("name", mj.presets.names())
def test_causal(name):
  """Perturbing token t+1 (q, k, v and gates) leaves outputs ≤ t unchanged."""
  t, cut = 10, 6
  rule, state, q, k, v, g = make_inputs(name, t)
  _, _, q2, k2, v2, g2 = make_inputs(name, t, seed=1)
  splice = lambda a, b: None if a is None else a.at[cut:].set(b[cut:])
  ys, _ = mj.recurrent(rule, state, q, k, v, g)
  ys2, _ = mj.recurrent(
    rule, state, splice(q, q2), splice(k, k2), splice(v, v2), jax.tree.map(splice, g, g2)
  )
  chex.assert_trees_all_equal(ys[:cut], ys2[:cut])
  assert not np.allclose(ys[cut:], ys2[cut:]), "the later tokens should change the later outputs"


class JitTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    for name in ["gated_delta_net", "titans_lmm", "moneta", "softmax_attention"]:
      rule, state, q, k, v, g = make_inputs(name, 8)
      fn = self.variant(lambda s, q, k, v, g, rule=rule: mj.recurrent(rule, s, q, k, v, g))
      ys, st = fn(state, q, k, v, g)
      ys_ref, st_ref = mj.recurrent(rule, state, q, k, v, g)
      chex.assert_trees_all_close(ys, ys_ref, rtol=1e-6, atol=1e-6)
      chex.assert_trees_all_close(st, st_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", mj.presets.names())
def test_outer_gradients_flow(name):
  """Gradients of a loss on the outputs reach q, k, v, every used gate and the initial memory."""
  rule, state, q, k, v, g = make_inputs(name, 6)
  # Yaad's l1 branch (‖e‖ > δ) does not depend on v; a large δ keeps some tokens on the l2 branch.
  g = g._replace(delta=4.0 * g.delta)
  used = [f for f in mj.Gates._fields if f in rule.used_gates and getattr(g, f) is not None]
  if name == "softmax_attention":
    used = []

  def loss(state, q, k, v, g):
    ys, _ = mj.recurrent(rule, state, q, k, v, g)
    return jnp.sum(jnp.sin(ys))

  argnums = (1, 2, 3) if name == "softmax_attention" else (0, 1, 2, 3, 4)  # the KV cache is data
  grads = dict(zip(argnums, jax.grad(loss, argnums=argnums)(state, q, k, v, g), strict=True))
  named = {"q": grads[1], "v": grads[3]}
  if name != "hgrn2":  # hgrn2 ignores k: its key is 1 − α
    named["k"] = grads[2]
  if name != "softmax_attention":
    named["weights"] = grads[0].weights if not rule.retention.has_accum else grads[0].accum
  for f in used:
    named[f"gates.{f}"] = getattr(grads[4], f)
  for label, gr in named.items():
    leaves = jax.tree.leaves(gr)
    assert leaves, label
    assert all(np.all(np.isfinite(x)) for x in leaves), f"{label}: non-finite gradient"
    assert any(np.any(x != 0) for x in leaves), f"{label}: zero gradient"


@pytest.mark.parametrize("name", mj.presets.names())
def test_two_calls_equal_one(name):
  rule, state, q, k, v, g = make_inputs(name, 10)
  ys, final = mj.recurrent(rule, state, q, k, v, g)
  half = lambda x, s: None if x is None else x[s]
  a, b = slice(0, 4), slice(4, None)
  ys1, mid = mj.recurrent(rule, state, q[a], k[a], v[a], jax.tree.map(lambda x: half(x, a), g))
  ys2, end = mj.recurrent(rule, mid, q[b], k[b], v[b], jax.tree.map(lambda x: half(x, b), g))
  chex.assert_trees_all_close(jnp.concatenate([ys1, ys2]), ys, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(end, final, rtol=1e-6, atol=1e-6)


def test_read_before_write_reads_previous_state():
  rule, state, q, k, v, g = make_inputs("delta_net", 5)
  ys_after, _ = mj.recurrent(rule, state, q, k, v, g)
  ys_before, _ = mj.recurrent(rule, state, q, k, v, g, read_before_write=True)
  w0 = np.asarray(state.weights)
  np.testing.assert_allclose(ys_before[0], w0 @ np.asarray(q[0]), rtol=1e-6)
  _, st1 = mj.recurrent(rule, state, q[:1], k[:1], v[:1], jax.tree.map(lambda x: x[:1], g))
  np.testing.assert_allclose(ys_before[1], np.asarray(st1.weights) @ np.asarray(q[1]), rtol=1e-6)
  np.testing.assert_allclose(ys_after[0], np.asarray(st1.weights) @ np.asarray(q[0]), rtol=1e-6)


@pytest.mark.parametrize("name", mj.presets.names())
def test_long_sequence_stays_finite(name):
  """10 000 tokens with gates in their valid ranges: outputs and state stay finite.

  lr ∈ [0.15, 0.3] with unit keys. (Plain GD on an MLP memory with no retention, ttt_mlp, diverges
  when η exceeds the inverse curvature of the inner loss: at η = 0.5 it does so near token 2000.)
  """
  t = 10_000
  rule, state, q, k, v, g = make_inputs(name, t, lr=0.3, retention=(0.9, 1.0))
  if name == "softmax_attention":
    rule = mj.presets.get("softmax_attention", window=64)
    state = rule.init_state(D, D)
  ys, final = jax.jit(lambda s, q, k, v, g: mj.recurrent(rule, s, q, k, v, g))(state, q, k, v, g)
  assert np.all(np.isfinite(ys)), name
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final)), name


# ---- bad input -------------------------------------------------------------------------------
def _raises(match, fn, *args, **kw):
  with pytest.raises(ValueError, match=match):
    fn(*args, **kw)


@pytest.mark.parametrize("name", PARAMETRIC)
def test_missing_required_gate(name):
  rule, state, q, k, v, g = make_inputs(name, 4)
  for field in rule.required_gates:
    _raises(
      rf"gates\.{field} is required",
      mj.recurrent,
      rule,
      state,
      q,
      k,
      v,
      g._replace(**{field: None}),
    )


def test_wrong_ranks_and_shapes():
  rule, state, q, k, v, g = make_inputs("gated_delta_net", 6)
  _raises(r"q must have rank 2", mj.recurrent, rule, state, q[None], k, v, g)
  _raises(r"k must have rank 2", mj.recurrent, rule, state, q, k[0], v, g)
  _raises(r"v must have shape", mj.recurrent, rule, state, q, k, v[:, :3], g)
  _raises(r"k must have shape", mj.recurrent, rule, state, q, k[:5], v, g)
  _raises(r"q must have shape", mj.recurrent, rule, state, q[:, :2], k, v, g)
  _raises(r"gates\.lr must have shape", mj.recurrent, rule, state, q, k, v, g._replace(lr=g.lr[:5]))
  _raises(
    r"gates\.retention must have shape",
    mj.recurrent,
    rule,
    state,
    q,
    k,
    v,
    g._replace(retention=jnp.ones((6, D))),
  )
  _raises(r"weights", rule.init_state, jnp.zeros((D,)))
  _raises(r"state must be a MemoryState", mj.recurrent, rule, state.weights, q, k, v, g)
  _raises(r"gates must be", mj.recurrent, rule, state, q, k, v, {"lr": g.lr})
  _raises(r"q must be a floating", mj.recurrent, rule, state, q.astype(jnp.int32), k, v, g)
  dp, st, q, k, v, g = make_inputs("delta_product", 6)
  _raises(r"k must have rank 3", mj.recurrent, dp, st, q, k[:, 0], v, g)
  _raises(r"gates\.lr must have shape", mj.recurrent, dp, st, q, k, v, g._replace(lr=g.lr[:, 0]))


def test_bad_values():
  rule, state, q, k, v, g = make_inputs("titans_lmm", 6)
  _raises(
    r"gates\.retention", mj.recurrent, rule, state, q, k, v, g._replace(retention=g.retention + 1)
  )
  _raises(
    r"gates\.retention", mj.recurrent, rule, state, q, k, v, g._replace(retention=-g.retention)
  )
  _raises(
    r"gates\.momentum", mj.recurrent, rule, state, q, k, v, g._replace(momentum=g.momentum + 1)
  )
  _raises(r"gates\.lr", mj.recurrent, rule, state, q, k, v, g._replace(lr=-g.lr))
  _raises(
    r"gates\.lr.*non-finite",
    mj.recurrent,
    rule,
    state,
    q,
    k,
    v,
    g._replace(lr=g.lr.at[0].set(jnp.nan)),
  )
  rule, state, q, k, v, g = make_inputs("yaad", 6)
  _raises(r"gates\.delta", mj.recurrent, rule, state, q, k, v, g._replace(delta=0 * g.delta))
  memora = mj.presets.get("memora", memory="linear")
  _raises(r"positive", memora.init_state, jnp.zeros((D, D)))
  _raises(r"\bp\b", mj.presets.get, "moneta", p=0.5)
  _raises(r"unknown preset", mj.presets.get, "nope")
  _raises(r"invalid options", mj.presets.get, "delta_net", memory="linear")
  _raises(r"memory must be", mj.presets.get, "titans_lmm", memory="deep")
  _raises(
    r"implicit GD",
    mj.Rule,
    "x",
    mj.MLPMemory(),
    mj.biases.L2(),
    mj.retention.NoRetention(),
    mj.algorithms.ImplicitGD(),
  )
  _raises(r"no loss", mj.presets.get, "yaad", use_loss=True)


def test_value_checks_are_skipped_under_jit_but_shapes_are_not():
  rule, state, q, k, v, g = make_inputs("gated_delta_net", 6)
  fn = jax.jit(lambda s, q, k, v, g: mj.recurrent(rule, s, q, k, v, g))
  fn(state, q, k, v, g)  # traced gates: values cannot be checked, shapes can
  with pytest.raises(ValueError, match=r"k must have shape"):
    fn(state, q, k[:5], v, g)


def test_presets_options():
  assert isinstance(mj.presets.get("titans_lmm", memory="linear").memory, mj.LinearMemory)
  deep = mj.presets.get("titans_lmm", memory={"depth": 3, "expansion": 2, "activation": "gelu"})
  assert deep.memory == mj.MLPMemory(depth=3, expansion=2, activation="gelu")
  assert mj.presets.get("moneta", smooth=True).bias.smooth
  assert mj.presets.get("delta_product", n=3).algorithm.steps == 3
  assert mj.presets.get("moneta").memory.residual_ln
  expected = {
    "linear_attention",
    "retnet",
    "lightning",
    "mamba2",
    "gla",
    "dfw",
    "hgrn2",
    "delta_net",
    "gated_delta_net",
    "rwkv7",
    "delta_product",
    "longhorn",
    "ttt_linear",
    "ttt_mlp",
    "titans_lmm",
    "dgd",
    "moneta",
    "yaad",
    "memora",
    "softmax_attention",
  }
  assert set(mj.presets.names()) == expected


def test_core_does_not_import_flax():
  import pathlib

  root = pathlib.Path(mj.core.__file__).parent
  for path in root.glob("*.py"):
    text = path.read_text()
    assert "import flax" not in text and "from flax" not in text, path
    assert "import optax" not in text, path


def test_titans_ablation_options_drop_momentum_and_forgetting():
  """titans_lmm(momentum=False) writes W_t = α_t W_{t−1} − θ_t ∇ (gates without μ), forget=False
  writes W_t = W_{t−1} + S_t (no α): each equals the matching composed rule."""
  from miras_jax.core import algorithms, biases, retention

  for opts, ret_gate, algo in (
    ({"momentum": False}, retention.Decay("any"), algorithms.GD()),
    ({"forget": False}, retention.NoRetention(), algorithms.Momentum()),
  ):
    rule = mj.presets.get("titans_lmm", memory="linear", **opts)
    want = mj.Rule("ref", mj.LinearMemory(), biases.L2(), ret_gate, algo)
    assert rule.used_gates == want.used_gates
    _, state, q, k, v, g = make_inputs("titans_lmm", 6, rule=rule)
    ys, st = mj.recurrent(rule, state, q, k, v, g)
    ys_want, st_want = mj.recurrent(want, state, q, k, v, g)
    chex.assert_trees_all_close((ys, st), (ys_want, st_want))


@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_clipped_rule_outer_gradient_at_a_zero_inner_gradient(memory, form):
  """A token whose inner gradient is exactly 0 (key 0: the L2 gradient e kᵀ and, through SiLU(0)
  = 0, every MLP layer's gradient vanish) gives the clip factor's √‖∇‖² a 0/0 derivative. With a
  clip no token reaches, the clipped rule's outer gradients must equal the unclipped rule's."""
  t = 8
  plain = mj.presets.get("titans_lmm", memory=memory)
  clipped = mj.presets.get("titans_lmm", memory=memory, grad_clip=1e6)
  _, state, q, k, v, g = make_inputs("titans_lmm", t, rule=plain)
  k = k.at[3].set(0.0)

  def loss(rule, q, k, v):
    if form == "recurrent":
      ys, _ = mj.recurrent(rule, state, q, k, v, g)
    else:
      ys, _ = mj.chunked(rule, state, q, k, v, g, chunk_size=4)
    return jnp.sum(ys**2)

  grads = jax.grad(lambda *a: loss(clipped, *a), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_close(grads, want, rtol=1e-5, atol=1e-6)
