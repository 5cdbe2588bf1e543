"""NNX building blocks: shapes, logical axis names, RoPE, streaming conv, attention decode."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import miras_jax as mj
from miras_jax import nn

B, T, E, H, D = 2, 9, 16, 2, 8


def _x(seed=0, t=T):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, t, E)), jnp.float32)


def test_every_param_has_logical_axes():
  rngs = nnx.Rngs(0)
  modules = [
    nn.Linear(E, 8, rngs=rngs),
    nn.RMSNorm(E, rngs=rngs),
    nn.SwiGLU(E, 32, rngs=rngs),
    nn.ShortConv(E, rngs=rngs),
    nn.LowRankGate(E, H, rank=4, rngs=rngs),
    nn.Attention(E, H, D, window=4, n_persistent=2, rngs=rngs),
  ]
  for m in modules:
    for path, p in nnx.iter_graph(m):
      if isinstance(p, nnx.Param):
        axes = p.get_metadata()["out_sharding"]
        assert len(axes) == p[...].ndim, (type(m).__name__, path, axes)


def test_shapes_and_rmsnorm():
  rngs = nnx.Rngs(0)
  x = _x()
  chex.assert_shape(nn.SwiGLU(E, 32, rngs=rngs)(x), (B, T, E))
  chex.assert_shape(nn.LowRankGate(E, H, rank=4, rngs=rngs)(x), (B, T, H))
  y = nn.RMSNorm(E, rngs=rngs)(x)
  np.testing.assert_allclose(np.mean(np.asarray(y) ** 2, -1), 1.0, rtol=1e-4)
  z = nn.l2_normalize(x)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, rtol=1e-5)


def test_rope_is_relative_and_norm_preserving():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, D)), jnp.float32)
  dot = lambda i, j: float(jnp.sum(nn.rope(q, jnp.array([i])) * nn.rope(k, jnp.array([j]))))
  assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-5)
  assert dot(5, 2) != pytest.approx(dot(5, 3), rel=1e-3)
  np.testing.assert_allclose(
    jnp.linalg.norm(nn.rope(q, jnp.array([7]))), jnp.linalg.norm(q), rtol=1e-6
  )
  with pytest.raises(ValueError, match="even"):
    nn.rope(jnp.ones((1, 1, 3)), jnp.array([0]))


def test_short_conv_is_causal_depthwise_and_streams():
  conv = nn.ShortConv(E, kernel=4, rngs=nnx.Rngs(0))
  x = _x()
  y, state = conv(x)
  w, xn = np.asarray(conv.weight[...]), np.asarray(x)
  want = np.zeros_like(xn)
  for t in range(T):
    for j in range(4):
      if t - j >= 0:
        want[:, t] += w[j] * xn[:, t - j]
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  y1, s1 = conv(x[:, :4])
  y2, s2 = conv(x[:, 4:], s1)
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s2, state)


def _attention_reference(layer, x, window):
  """Per head: q, k, v from the layer's projections and RoPE, then the core's softmax attention."""
  pos = jnp.arange(x.shape[1])
  split = lambda y: y.reshape(*y.shape[:-1], H, D)
  q = nn.rope(split(layer.q(x)), pos)
  k = nn.rope(split(layer.k(x)), pos)
  v = split(layer.v(x))
  per_head = jax.vmap(
    lambda q, k, v: mj.softmax_attention(q, k, v, window=window), in_axes=(1, 1, 1), out_axes=1
  )
  y = jax.vmap(per_head)(q, k, v)
  return layer.o(y.reshape(*x.shape[:2], H * D))


@pytest.mark.parametrize("window", [None, 3])
def test_attention_matches_core_softmax_attention(window):
  layer = nn.Attention(E, H, D, window=window, rngs=nnx.Rngs(1))
  x = _x()
  y, _ = layer(x)
  np.testing.assert_allclose(y, _attention_reference(layer, x, window), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "window,persistent,conv", [(None, 0, 0), (3, 0, 0), (None, 2, 0), (4, 3, 0), (None, 0, 3)]
)
def test_attention_decode_and_prefill_equal_full_forward(window, persistent, conv):
  layer = nn.Attention(
    E,
    H,
    D,
    window=window,
    n_persistent=persistent,
    capacity=None if window else T,
    conv_kernel=conv,
    rngs=nnx.Rngs(2),
  )
  x = _x(1)
  call = nnx.jit(lambda m, x, cache: m(x, cache))
  full, _ = call(layer, x, None)
  cache = layer.init_cache(B)
  outs = []
  for t in range(T):
    y, cache = call(layer, x[:, t : t + 1], cache)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)
  y1, cache = call(layer, x[:, :5], None)  # prefill without a cache returns one
  y2, cache = call(layer, x[:, 5:], cache)
  np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=1e-5, atol=1e-5)


def test_attention_is_causal_and_windowed():
  window = 3
  layer = nn.Attention(E, H, D, window=window, n_persistent=1, rngs=nnx.Rngs(3))
  x, x2 = _x(0), _x(1)
  y, _ = layer(x)
  later, _ = layer(x.at[:, 6:].set(x2[:, 6:]))
  np.testing.assert_allclose(later[:, :6], y[:, :6], rtol=1e-6, atol=1e-6)
  earlier, _ = layer(x.at[:, :4].set(x2[:, :4]))  # tokens ≤ 3 are outside the window of t ≥ 7
  np.testing.assert_allclose(earlier[:, 7:], y[:, 7:], rtol=1e-6, atol=1e-6)
  assert not np.allclose(earlier[:, 4:7], y[:, 4:7])
  with pytest.raises(ValueError, match="capacity"):
    nn.Attention(E, H, D, rngs=nnx.Rngs(0)).init_cache(B)
  with pytest.raises(ValueError, match="conv_kernel must be an int >= 0"):
    nn.Attention(E, H, D, conv_kernel=-1, rngs=nnx.Rngs(0))


def _cached_attention(window, persistent, seed, **options):
  """An attention layer with a cache of T tokens, the given window, persistent tokens, options."""
  return nn.Attention(
    E, H, D, window=window, n_persistent=persistent, capacity=T, rngs=nnx.Rngs(seed), **options
  )


@pytest.mark.parametrize("window,persistent", [(None, 0), (3, 2)])
def test_dot_product_attention_equals_the_written_out_reference(window, persistent):
  """The default path (jax.nn.dot_product_attention) against implementation="reference" with the
  same parameters: a fresh call, and a prefill continued from its cache."""
  make = lambda impl: _cached_attention(window, persistent, 4, implementation=impl)  # noqa: E731
  x = _x(2)

  @nnx.jit
  def run(layer, x):
    full, _ = layer(x)
    y1, cache = layer(x[:, :5], None)
    y2, _ = layer(x[:, 5:], cache)
    return full, jnp.concatenate([y1, y2], 1)

  for got, want in zip(run(make("auto"), x), run(make("reference"), x), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="implementation must be one of"):
    make("flash")


@pytest.mark.parametrize("window,persistent", [(None, 0), (3, 2)])
def test_attention_by_query_blocks_equals_all_queries_at_once(window, persistent):
  """query_chunk=2 over T = 9 (the last block padded), fresh and continued from a cache, and the
  gradients with respect to the input and the parameters."""
  make = lambda chunk: _cached_attention(window, persistent, 5, query_chunk=chunk)  # noqa: E731
  x = _x(3)

  @nnx.jit
  def run(layer, x):
    def loss(layer, x):
      return jnp.sum(jnp.sin(layer(x)[0]))

    (value, (g_layer, g_x)) = nnx.value_and_grad(loss, argnums=(0, 1))(layer, x)
    y1, cache = layer(x[:, :4], None)
    y2, _ = layer(x[:, 4:], cache)
    return layer(x)[0], jnp.concatenate([y1, y2], 1), g_x, nnx.state(g_layer)

  got, want = run(make(2), x), run(make(0), x)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="query_chunk must be an int >= 0"):
    make(-1)
