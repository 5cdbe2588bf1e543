"""MQAR (``miras_jax.data.synthetic.mqar``): determinism, correctness by construction, validation."""

from __future__ import annotations

import numpy as np
import pytest

from miras_jax.data import mqar

ARGS = dict(n=64, seq_len=48, vocab=40, num_pairs=6)


def test_deterministic_by_seed():
  a, b, c = mqar(0, **ARGS), mqar(0, **ARGS), mqar(1, **ARGS)
  assert a.keys() == {"inputs", "targets", "mask"}
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_shapes_and_dtypes():
  out = mqar(0, **ARGS)
  for k, dtype in [("inputs", np.int32), ("targets", np.int32), ("mask", np.bool_)]:
    assert out[k].shape == (ARGS["n"], ARGS["seq_len"])
    assert out[k].dtype == dtype


@pytest.mark.parametrize(
  "args",
  [ARGS, dict(n=32, seq_len=16, vocab=10, num_pairs=4), dict(n=8, seq_len=9, vocab=6, num_pairs=2)],
)
def test_correct_by_construction(args):
  """Recomputes every masked target from the prompt, independently of the generator."""
  out = mqar(7, **args)
  p, half, vocab = args["num_pairs"], args["vocab"] // 2, args["vocab"]
  for x, y, m in zip(out["inputs"], out["targets"], out["mask"], strict=True):
    keys, values = x[0 : 2 * p : 2], x[1 : 2 * p : 2]
    assert np.all((keys >= 1) & (keys < half)), "keys from [1, vocab // 2)"
    assert np.all((values >= half) & (values < vocab)), "values from [vocab // 2, vocab)"
    assert len(set(keys.tolist())) == p, "keys within a sequence are distinct"
    assert len(set(values.tolist())) == p
    assert m.sum() == p, "one query per key"
    assert not m[: 2 * p].any(), "queries come after the prompt"
    query_pos = np.flatnonzero(m)
    assert np.all((query_pos - 2 * p) % 2 == 0), "queries sit on the even slots"
    assert sorted(x[query_pos].tolist()) == sorted(keys.tolist()), "each key is queried once"
    for t in query_pos:
      prompt_index = [j for j in range(0, 2 * p, 2) if x[j] == x[t]]
      assert len(prompt_index) == 1
      assert y[t] == x[prompt_index[0] + 1], "target is the value paired with the query key"
      assert x[t + 1] == 0, "the value is never shown after the query"
    query_region = x[2 * p :].copy()
    query_region[query_pos - 2 * p] = 0
    assert not query_region.any(), "non-query positions of the query region are the filler 0"
    np.testing.assert_array_equal(y[~m][:-1], x[1:][~m[:-1]], "next-token targets elsewhere")


def test_single_pair_gap_follows_power_law():
  """With one pair the query slot g has exactly p(g) ∝ (g + 1) ** (a - 1)."""
  slots, a, n = 8, 0.5, 20000
  out = mqar(0, n=n, seq_len=2 + 2 * slots, vocab=8, num_pairs=1, power_a=a)
  g = (np.flatnonzero(out["mask"].reshape(-1)) % (2 + 2 * slots) - 2) // 2
  freq = np.bincount(g, minlength=slots) / n
  p = np.arange(1, slots + 1) ** (a - 1.0)
  p /= p.sum()
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / n).max())


def test_small_power_a_queries_early():
  out = mqar(0, n=400, seq_len=128, vocab=64, num_pairs=4, power_a=0.01)
  slots = (np.nonzero(out["mask"])[1] - 8) // 2
  assert np.mean(slots < 15) > 0.5 > np.mean(slots >= 30)


@pytest.mark.parametrize(
  ("override", "name"),
  [
    (dict(seq_len=23), "seq_len"),  # < 4 * num_pairs = 24
    (dict(vocab=13), "vocab"),  # vocab // 2 - 1 = 5 < 6 keys
    (dict(num_pairs=0), "num_pairs"),
    (dict(n=0), "n"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(power_a=0.0), "power_a"),
    (dict(power_a=float("nan")), "power_a"),
    (dict(seq_len=48.0), "seq_len"),
  ],
)
def test_bad_arguments(override, name):
  kwargs = dict(seed=0, **ARGS) | override
  with pytest.raises(ValueError, match=rf"^{name}:"):
    mqar(**kwargs)


def test_tightest_valid_sizes():
  out = mqar(0, n=4, seq_len=8, vocab=6, num_pairs=2)  # every query slot used, 2 keys from {1, 2}
  assert out["mask"].sum(axis=1).tolist() == [2, 2, 2, 2]
