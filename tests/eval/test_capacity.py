"""The recall-capacity probe against numpy: writes, reads and scores recomputed independently."""

import chex
import jax
import numpy as np
import pytest

from miras_jax.eval import capacity


def _pairs(n, d, seed=0):
  rng = np.random.default_rng(seed)
  k = rng.normal(size=(n, d))
  return (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32), rng.normal(
    size=(n, d)
  ).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 4])
def test_delta_rule_reads_match_numpy(chunk):
  """delta_net: W_i = W_{i−1} − η (W_{i−1} k_i − v_i) k_iᵀ from the block's W_0, then W_n k_i."""
  block = capacity.block_memory("delta_net", 8)
  k, v = _pairs(6, 8)
  lr = 0.7
  w = np.asarray(block.initial_weights()[0], np.float64)
  for ki, vi in zip(k, v, strict=True):
    w = w - lr * np.outer(w @ ki - vi, ki)
  got = capacity.read_back(block, k, v, lr, chunk_size=chunk)
  chex.assert_trees_all_close(np.asarray(got), (k @ w.T).astype(np.float32), atol=1e-5)


def test_titans_reads_use_the_blocks_momentum_at_init():
  """titans_lmm, token-serial: S_i = μ S_{i−1} − η ∇, W_i = W_{i−1} + S_i with μ = σ(2) (the
  momentum gate's initial bias) on the block's 2-layer SiLU memory, gradients by hand."""
  block = capacity.block_memory("titans_lmm", 4)
  k, v = _pairs(5, 4, seed=1)
  lr, mu = 0.05, 1 / (1 + np.exp(-2.0))
  w1, w2 = (np.asarray(w[0], np.float64) for w in block.initial_weights())
  s1, s2 = np.zeros_like(w1), np.zeros_like(w2)
  silu = lambda x: x / (1 + np.exp(-x))
  dsilu = lambda x: (1 + np.exp(-x) + x * np.exp(-x)) / (1 + np.exp(-x)) ** 2
  for ki, vi in zip(k, v, strict=True):
    z = w1 @ ki
    e = w2 @ silu(z) - vi
    g2 = np.outer(e, silu(z))
    g1 = np.outer((w2.T @ e) * dsilu(z), ki)
    s1, s2 = mu * s1 - lr * g1, mu * s2 - lr * g2
    w1, w2 = w1 + s1, w2 + s2
  want = silu(k @ w1.T) @ w2.T
  got = capacity.read_back(block, k, v, lr, chunk_size=1)
  chex.assert_trees_all_close(np.asarray(got), want.astype(np.float32), atol=1e-5)


def test_scores_match_numpy():
  y, v = _pairs(7, 5, seed=2)
  y = y + 0.8 * _pairs(7, 5, seed=3)[1]
  cos = np.mean(np.sum(y * v, -1) / (np.linalg.norm(y, axis=-1) * np.linalg.norm(v, axis=-1)))
  near = np.argmin(((y[:, None] - v[None]) ** 2).sum(-1), axis=-1) == np.arange(7)
  got_cos, got_acc = capacity.scores(y, v)
  np.testing.assert_allclose(float(got_cos), cos, rtol=1e-5)
  np.testing.assert_allclose(float(got_acc), near.mean())


def test_recall_of_orthonormal_writes_is_perfect_for_the_delta_rule():
  """With η = 1 and n ≤ d the delta rule stores every pair exactly when keys are orthonormal; with
  random unit keys it is close: an end-to-end check of ``recall``'s averaging."""
  block = capacity.block_memory("delta_net", 16)
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))
  k, v = q[:4].astype(np.float32), _pairs(4, 16)[1]
  np.testing.assert_allclose(np.asarray(capacity.read_back(block, k, v, 1.0)), v, atol=1e-5)
  one, small = capacity.recall(block, 1, [1.0, 0.1], trials=4)
  assert one["accuracy"] == 1.0 and one["cosine"] > 0.999
  assert small["cosine"] < one["cosine"]  # η = 0.1 writes a tenth of the value over W_0


def test_recall_rejects_bad_arguments():
  block = capacity.block_memory("delta_net", 4)
  with pytest.raises(ValueError, match="n must be"):
    capacity.recall(block, 0, 0.1)
  with pytest.raises(ValueError, match="lrs must be"):
    capacity.recall(block, 2, [0.1, -1.0])


def test_pairs_are_unit_keys():
  k, v = capacity.draw_pairs(jax.random.key(0), 3, 6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(k), axis=-1), 1.0, rtol=1e-6)
  assert v.shape == (3, 6)
