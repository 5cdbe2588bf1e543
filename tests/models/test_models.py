"""Every model of the registry: shapes, causality, decode == forward, gradients, one compile,
paper-size parameter counts, generation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax import models
from tests.streaming import assert_streams_like_forward

B, T, V = 2, 7, 32
_TINY = dict(vocab=V, dim=16, layers=2, heads=2, head_dim=8, mlp_hidden=32)
_MEMORY = dict(chunk_size=4, gate_rank=4)
_EXTRA = {
  "miras_lm": _MEMORY,
  "hybrid_lm": dict(_MEMORY, window=3),
  "titans_mac": dict(_MEMORY, segment=3, persistent=2),
  "titans_mag": dict(_MEMORY, window=3, persistent=2),
  "titans_mal": dict(_MEMORY, window=3, persistent=2),
  "transformer": dict(max_len=16),
  "hope": dict(chunk_size=2, memory_chunk_size=4, cms_chunk_sizes=(1, 2, 4), cms_lrs=(0.1,) * 3),
  "hope_attention": dict(max_len=16, cms_chunk_sizes=(1, 3), cms_lrs=(0.1, 0.05)),
}


def _model(name, seed=0, **overrides):
  config = models.config(name, "tiny", **{**_TINY, **_EXTRA[name], **overrides})
  return models.get(name, config, rngs=nnx.Rngs(seed))


def _tokens(seed=0, t=T):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(B, t)), jnp.int32)


# Every model; hybrid_lm with a layer without memory (and Moneta's memory).
_CASES = [(name, {}) for name in models.names() if name != "hybrid_lm"]
_CASES.append(("hybrid_lm", {"memory_layers": (1,), "preset": "moneta"}))
# The CMS in place of the MLP of another model (Nested Learning §7), here MAC's segment blocks.
# (slow: the CMS's own decode is tested in tests/nn, MAC's in the case without it)
_CASES.append(
  pytest.param(
    "titans_mac",
    {"cms": True, "cms_chunk_sizes": (1, 2), "cms_lrs": (0.1, 0.2)},
    marks=pytest.mark.slow,
  )
)
_call = nnx.jit(lambda m, x, s: m(x, s))


# One block per model (a block's own cache is what decoding continues), two where the layers'
# caches must be kept apart: miras_lm, and hybrid_lm whose second layer alone has a memory.
_TWO_LAYERS = ("miras_lm", "hybrid_lm")


@pytest.mark.parametrize("name,overrides", _CASES, ids=lambda c: str(c))
def test_decode_and_prefill_equal_forward_and_causal(name, overrides):
  layers = 2 if name in _TWO_LAYERS else 1
  model = _model(name, **{"layers": layers, **overrides})
  x = _tokens()
  logits = assert_streams_like_forward(model, x, model.init_cache(B), split=4)
  chex.assert_shape(logits, (B, T, V))
  chex.assert_tree_all_finite(logits)
  later, _ = _call(model, x.at[:, 4:].set(_tokens(1)[:, 4:]), None)
  np.testing.assert_allclose(later[:, :4], logits[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(later[:, 4:], logits[:, 4:])


@pytest.mark.parametrize("name", models.names())
def test_train_step_compiles_once_and_reaches_every_parameter(name):
  chex.clear_trace_counter()
  model = _model(name, layers=1)
  graphdef, state = nnx.split(model)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grads(state, x):
    m = nnx.merge(graphdef, state)
    return nnx.grad(lambda m: jnp.mean(jax.nn.log_softmax(m(x)[0])[..., 0]))(m)

  grads(state, _tokens(t=6))
  g = grads(state, _tokens(1, t=6))  # same shapes: no second trace
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(g, nnx.Param)):
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), (name, path)


def _rope(x, positions):
  """Rotate-half RoPE in numpy, ``x: [B, S, H, D]``, ``positions: [S]``."""
  d = x.shape[-1]
  freq = 10000.0 ** (-np.arange(0, d // 2) * 2.0 / d)
  angle = np.asarray(positions, np.float64)[:, None] * freq[None, :]
  cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
  x1, x2 = x[..., : d // 2], x[..., d // 2 :]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@pytest.mark.slow  # tests/models/test_blocks_reference.py checks MAC against Eq 21-25 as well
def test_mac_block_follows_the_paper_data_flow():
  """MACBlock against Eq 21–25 written out: per segment, S̃ = [p ‖ h ‖ S] built in model space,
  one numpy attention over it with the causal mask, then the memory written with y."""
  seg, n_seg = 3, 2
  model = _model("titans_mac", segment=seg, layers=1, writes="attention")  # the paper's Eq 24
  block = model.blocks[0]
  x = jnp.asarray(np.random.default_rng(5).normal(size=(B, seg * n_seg, 16)), jnp.float32)
  got, _ = nnx.jit(lambda b, x: b(x))(block, x)

  att, mem = block.attention, block.memory
  w = {n: np.asarray(getattr(att, n).kernel[...], np.float64) for n in "qkvo"}
  p = np.asarray(att.persistent[...], np.float64)
  n_p, h_dim = p.shape[0], att.head_dim
  z = block.norm(x)
  state = mem.init_state(B, grid=False)
  read_conv = jnp.zeros_like(state.conv_q)
  out = []
  for s in range(n_seg):
    zs = z[:, s * seg : (s + 1) * seg]
    h, read_conv = mem.read(zs, state.memory, read_conv)  # (21): M*_{t-1}(q)
    tilde = np.concatenate(
      [np.broadcast_to(p, (B, n_p, 16)), np.asarray(h), np.asarray(zs)], 1
    )  # (22)
    split = lambda a: a.reshape(B, a.shape[1], -1, h_dim)
    pos = np.concatenate([np.arange(seg), seg + np.arange(seg)])
    q = _rope(split(tilde[:, n_p + seg :] @ w["q"]), seg + np.arange(seg))
    k, v = split(tilde @ w["k"]), split(tilde @ w["v"])
    k = np.concatenate([k[:, :n_p], _rope(k[:, n_p:], pos)], 1)
    allowed = np.zeros((seg, n_p + 2 * seg), bool)
    for i in range(seg):
      allowed[i, :n_p] = True
      for j in range(i + 1):
        allowed[i, n_p + j] = allowed[i, n_p + seg + j] = True
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(h_dim)
    scores = np.where(allowed[None, None], scores, -np.inf)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    y = np.einsum("bhts,bshd->bthd", a, v).reshape(B, seg, -1) @ w["o"]  # (23)
    m, state = mem(jnp.asarray(y, jnp.float32), state)  # (24) write y; (25) read M_t(y)
    out.append(y * jax.nn.sigmoid(np.asarray(m, np.float64)))
  ref = x + np.concatenate(out, 1)
  ref = ref + block.mlp(block.norm_mlp(jnp.asarray(ref, jnp.float32)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _count(name, size):
  """Parameters of the ``size`` preset, from abstract models of 1 and 2 blocks (blocks are equal)."""

  def params(layers):
    config = models.config(name, size, layers=layers)
    abstract = nnx.eval_shape(lambda: models.get(name, config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))

  one, two = params(1), params(2)
  return one + (models.config(name, size).layers - 1) * (two - one)


_NOMINAL = {"170m": 170e6, "340m": 340e6, "760m": 760e6, "1.3b": 1.3e9}


@pytest.mark.parametrize("name", models.names())
def test_paper_size_parameter_counts_within_5_percent(name):
  for size, nominal in _NOMINAL.items():
    n = _count(name, size)
    assert abs(n / nominal - 1) < 0.05, (name, size, n)


def test_block_count_extrapolation_matches_a_full_model():
  config = models.config("titans_mac", "tiny", layers=3)
  model = models.get("titans_mac", config, rngs=nnx.Rngs(0))
  full = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  one = models.get("titans_mac", models.config("titans_mac", "tiny", layers=1), rngs=nnx.Rngs(0))
  two = models.get("titans_mac", models.config("titans_mac", "tiny", layers=2), rngs=nnx.Rngs(0))
  n1, n2 = (sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param))) for m in (one, two))
  assert full == n1 + 2 * (n2 - n1)


@pytest.mark.parametrize(
  "name", [pytest.param("titans_mac", marks=pytest.mark.slow), "transformer"]
)
def test_greedy_generation_equals_argmax_of_full_forwards(name):
  model = _model(name)
  prompt, steps = _tokens(2, t=4), 4
  out = models.generate(model, prompt, steps)
  chex.assert_shape(out, (B, steps))
  # Independent: the full forward of the whole sequence so far (zero-padded to one length; the
  # model is causal, so the padding cannot change the logits before it), argmax of the last.
  seq = jnp.zeros((B, 4 + steps), jnp.int32).at[:, :4].set(prompt)
  for t in range(4, 4 + steps):
    logits, _ = _call(model, seq, None)
    seq = seq.at[:, t].set(jnp.argmax(logits[:, t - 1], -1).astype(jnp.int32))
  np.testing.assert_array_equal(out, seq[:, 4:])


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
  model = _model("transformer")
  prompt = _tokens(3, t=3)
  a = models.generate(model, prompt, 4, rng=jax.random.key(1), temperature=1.0, top_p=0.9)
  b = models.generate(model, prompt, 4, rng=jax.random.key(1), temperature=1.0, top_p=0.9)
  np.testing.assert_array_equal(a, b)
  # probabilities 0.5, 0.3, 0.15, 0.05: top_p = 0.7 keeps the first two, 0.85 the first three
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  keys = jax.random.split(jax.random.key(0), 2000)
  for top_p, allowed in [(0.7, {1, 3}), (0.85, {1, 2, 3}), (1e-3, {1})]:
    draws = jax.vmap(lambda k, p=top_p: models.sample_logits(logits, k, 1.0, p))(keys)
    assert set(np.unique(np.asarray(draws))) == allowed, top_p
  draws = np.asarray(jax.vmap(lambda k: models.sample_logits(logits, k, 1.0, 0.7))(keys))
  np.testing.assert_allclose(np.mean(draws == 1), 0.5 / 0.8, atol=0.04)  # renormalised nucleus
  np.testing.assert_array_equal(models.sample_logits(logits, None), [1])  # greedy


def test_registry_configs_and_bad_input():
  assert set(models.names()) == {
    "miras_lm",
    "hybrid_lm",
    "titans_mac",
    "titans_mag",
    "titans_mal",
    "transformer",
    "hope",
    "hope_attention",
  }
  assert models.config("titans_mal", "340m").window == 2048
  assert models.config("titans_mac", "1.3b").dim == 2048
  with pytest.raises(ValueError, match="unknown model"):
    models.get("nope", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="size must be one of"):
    models.config("miras_lm", "7b")
  with pytest.raises(ValueError, match="MirasLMConfig"):
    models.get("miras_lm", models.TransformerConfig(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="memory_layers"):
    models.config("hybrid_lm", memory_layers=(5,))
  with pytest.raises(ValueError, match="dim"):
    models.config("transformer", dim=0)
  with pytest.raises(ValueError, match="gate_init must be a tuple of"):
    models.config("miras_lm", gate_init={"lr": 0.5})
  model = _model("transformer")
  with pytest.raises(ValueError, match="tokens"):
    model(jnp.zeros((B, T)))
  with pytest.raises(ValueError, match="max_len"):
    models.generate(model, _tokens(), 10)
  with pytest.raises(ValueError, match="rng"):
    models.generate(model, _tokens(), 2, temperature=0.5)
  with pytest.raises(ValueError, match="top_p"):
    models.generate(model, _tokens(), 2, top_p=0.0)
