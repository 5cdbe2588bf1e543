"""grain loaders: determinism, exact resumption, sharding, packing and argument checks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from miras_jax import data


def _records(n: int, width: int = 3) -> list[dict[str, np.ndarray]]:
  return [{"index": np.int32(i), "x": np.full(width, i, np.float32)} for i in range(n)]


def _docs(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """Documents of varying lengths with distinct token ranges (tokens never equal EOS_ID = 0)."""
  rng = np.random.default_rng(seed)
  return [
    {"tokens": np.arange(100 * i + 1, 100 * i + 1 + rng.integers(1, 30), dtype=np.int32)}
    for i in range(n)
  ]


def _take(loader, k: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(loader, k))


def _assert_same(a: list[dict], b: list[dict]):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batches_shapes_and_determinism():
  source = _records(40)
  a = _take(data.make_loader(source, batch_size=8, seed=1), 12)  # crosses epoch boundaries
  b = _take(data.make_loader(source, batch_size=8, seed=1), 12)
  c = _take(data.make_loader(source, batch_size=8, seed=2), 12)
  _assert_same(a, b)
  assert a[0]["x"].shape == (8, 3) and a[0]["index"].shape == (8,)
  assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))


def test_dict_of_arrays_source_matches_records():
  arrays = data.mqar(0, n=20, seq_len=16, vocab=32, num_pairs=2)
  records = [{k: v[i] for k, v in arrays.items()} for i in range(20)]
  a = list(data.make_loader(arrays, batch_size=5, seed=2, num_epochs=1))
  _assert_same(a, list(data.make_loader(records, batch_size=5, seed=2, num_epochs=1)))
  with pytest.raises(ValueError, match="^source:"):
    data.make_loader({"a": np.zeros(3), "b": np.zeros(4)}, batch_size=1, seed=0)


def test_epochs_are_permutations_and_reshuffled():
  loader = data.make_loader(_records(24), batch_size=6, seed=0, num_epochs=2)
  idx = np.concatenate([b["index"] for b in loader])
  assert len(idx) == 48
  first, second = idx[:24], idx[24:]
  assert sorted(first) == sorted(second) == list(range(24))
  assert not np.array_equal(first, second)
  ordered = data.make_loader(_records(24), batch_size=6, seed=0, num_epochs=1, shuffle=False)
  assert np.concatenate([b["index"] for b in ordered]).tolist() == list(range(24))


def test_drop_remainder():
  kept = list(data.make_loader(_records(10), batch_size=4, seed=0, num_epochs=1))
  assert [len(b["index"]) for b in kept] == [4, 4]
  kept = list(
    data.make_loader(_records(10), batch_size=4, seed=0, num_epochs=1, drop_remainder=False)
  )
  assert [len(b["index"]) for b in kept] == [4, 4, 2]


@pytest.mark.parametrize("k", [0, 1, 4, 7])
def test_resume_unpacked(mqar_builder, k):
  """State saved after k batches, restored into a new loader: the same next batches."""
  source = mqar_builder.as_data_source()["train"]  # 96 records: 4 batches of 24 per epoch
  make = lambda: data.make_loader(source, batch_size=24, seed=5, num_epochs=3)
  original = make()
  _take(original, k)
  state = json.loads(json.dumps(original.get_state()))
  expected = list(original)
  restored = make()
  restored.set_state(state)
  _assert_same(list(restored), expected)
  assert len(expected) == 12 - k
  assert restored.batches_yielded == 12


@pytest.mark.parametrize("k", [0, 1, 3, 10])
def test_resume_packed(k):
  make = lambda: data.make_loader(_docs(30), batch_size=3, seed=4, pack_len=7)
  original = make()
  _take(original, k)
  state = original.get_state()
  expected = _take(original, 6)
  restored = make()
  restored.set_state(json.dumps(state))
  _assert_same(_take(restored, 6), expected)


def test_resume_packed_text_corpus(text_builder):
  source = text_builder.as_data_source()["train"]
  make = lambda: data.make_loader(source, batch_size=2, seed=0, pack_len=50)
  original = make()
  _take(original, 5)
  state = original.get_state()
  expected = _take(original, 4)
  restored = make()
  restored.set_state(state)
  _assert_same(_take(restored, 4), expected)


def test_state_from_other_options_is_rejected():
  state = data.make_loader(_records(16), batch_size=4, seed=0).get_state()
  with pytest.raises(ValueError, match="^state:.*seed"):
    data.make_loader(_records(16), batch_size=4, seed=1).set_state(state)
  with pytest.raises(ValueError, match="^state:"):
    data.make_loader(_records(16), batch_size=4, seed=0).set_state({"grain": {}})


@pytest.mark.parametrize("n", [24, 25])
def test_shards_are_disjoint_and_cover_an_epoch(n):
  shards = [
    np.concatenate(
      [
        b["index"]
        for b in data.make_loader(
          _records(n), batch_size=4, seed=3, num_epochs=1, shard_index=i, shard_count=2
        )
      ]
    )
    for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 12
  assert not set(shards[0]) & set(shards[1])
  union = set(shards[0]) | set(shards[1])
  assert union == set(range(24)) if n == 24 else len(union) == 24


def test_default_shard_is_the_jax_process():
  loader = data.make_loader(_records(8), batch_size=4, seed=0)
  assert (loader.options["shard_index"], loader.options["shard_count"]) == (0, 1)


def test_packing_concatenates_and_shifts():
  docs, pack_len, bs = _docs(12), 9, 2
  batches = list(
    data.make_loader(docs, batch_size=bs, seed=0, shuffle=False, num_epochs=1, pack_len=pack_len)
  )
  stream = np.concatenate([np.append(d["tokens"], data.EOS_ID) for d in docs])
  windows = len(stream) // (pack_len + 1)
  assert len(batches) == windows // bs
  for j, batch in enumerate(batches):
    assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape == (bs, pack_len)
    assert batch["inputs"].dtype == np.int32 and batch["mask"].all()
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    for r in range(bs):
      w = stream[(j * bs + r) * (pack_len + 1) :][: pack_len + 1]
      np.testing.assert_array_equal(batch["inputs"][r], w[:-1])
      np.testing.assert_array_equal(batch["targets"][r], w[1:])


def test_packing_text_feature_is_byte_tokenized():
  docs = [{"text": b"hello world"}, {"text": "more text here"}] * 4
  batch = next(data.make_loader(docs, batch_size=2, seed=0, pack_len=8, pack_feature="text"))
  assert batch["inputs"].max() < 256
  text = data.ByteTokenizer().decode_bytes(batch["inputs"][0])
  assert text.replace(b"\0", b" ").strip() in b"hello world more text here hello world " * 2


def test_too_small_for_one_batch():
  with pytest.raises(ValueError, match=r"^source:.*batch_size=8"):
    data.make_loader(_records(7), batch_size=8, seed=0)
  with pytest.raises(ValueError, match=r"^source:.*shard_count=2.*batch_size=4"):
    data.make_loader(_records(7), batch_size=4, seed=0, shard_index=0, shard_count=2)
  tiny = data.make_loader(_docs(2), batch_size=8, seed=0, num_epochs=1, pack_len=16)
  with pytest.raises(ValueError, match=r"^source:.*batch_size=8"):
    next(tiny)


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    (dict(batch_size=0), "batch_size"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**32), "seed"),
    (dict(shard_index=2, shard_count=2), "shard_index"),
    (dict(shard_index=0, shard_count=0), "shard_count"),
    (dict(num_epochs=0), "num_epochs"),
    (dict(pack_len=0), "pack_len"),
  ],
)
def test_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.make_loader(_records(16), **(dict(batch_size=4, seed=0) | kwargs))


def test_bad_source():
  with pytest.raises(ValueError, match="^source:"):
    data.make_loader(iter(_records(16)), batch_size=4, seed=0)
  with pytest.raises(ValueError, match="^pack_feature:"):
    next(data.make_loader(_records(16), batch_size=4, seed=0, pack_len=4))
