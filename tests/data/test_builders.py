"""tfds builders (array_record, read back with tfds.data_source) and ``prepare``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from miras_jax import data

from .conftest import MQAR_OPTIONS, TINY_SHAKESPEARE, write_corpus


def _rows(arrays: dict[str, np.ndarray]) -> list[bytes]:
  """Each example as bytes, sorted: an order-independent fingerprint of a split."""
  keys = ("inputs", "targets", "mask")
  return sorted(
    b"".join(np.asarray(arrays[k][i]).tobytes() for k in keys) for i in range(len(arrays["inputs"]))
  )


def _read_all(source) -> dict[str, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def test_mqar_round_trip(mqar_builder, data_dir):
  cfg = mqar_builder.builder_config
  assert mqar_builder.data_path == data_dir / "mqar" / cfg.name / "1.0.0"
  assert mqar_builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  gen = {k: v for k, v in MQAR_OPTIONS.items() if k not in ("train_size", "test_size", "seed")}
  for split, seed, n in [
    ("train", 2 * cfg.seed, cfg.train_size),
    ("test", 2 * cfg.seed + 1, cfg.test_size),
  ]:
    source = tfds.data_source(f"mqar/{cfg.name}", split=split, data_dir=data_dir)
    assert len(source) == n
    stored = _read_all(source)
    assert stored["inputs"].dtype == np.int32 and stored["mask"].dtype == np.bool_
    assert stored["inputs"].shape == (n, cfg.seq_len)
    assert _rows(stored) == _rows(data.mqar(seed, n, **gen))
  train = _read_all(mqar_builder.as_data_source()["train"])
  test = _read_all(mqar_builder.as_data_source()["test"])
  assert not set(_rows(train)) & set(_rows(test))


def test_mqar_options_get_their_own_directory(mqar_builder, data_dir):
  other = data.prepare("mqar", data_dir, **(MQAR_OPTIONS | dict(power_a=0.5)))
  assert other.data_path != mqar_builder.data_path
  assert other.data_path.exists() and mqar_builder.data_path.exists()
  again = data.prepare("mqar", data_dir, **MQAR_OPTIONS)  # reuses the prepared files
  assert again.data_path == mqar_builder.data_path
  names = {
    data.mqar_config(**(MQAR_OPTIONS | {k: v})).name
    for k, v in [
      ("seed", 4),
      ("seq_len", 40),
      ("vocab", 80),
      ("num_pairs", 3),
      ("train_size", 97),
      ("test_size", 41),
      ("power_a", 0.02),
    ]
  }
  assert len(names | {mqar_builder.builder_config.name}) == 8


@pytest.mark.parametrize(
  ("options", "name"),
  [
    (dict(num_pairs=9), "seq_len"),
    (dict(train_size=0), "train_size"),
    (dict(seed=-1), "seed"),
    (dict(sequence=3), "options"),
  ],
)
def test_mqar_bad_options(tmp_path, options, name):
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.prepare("mqar", tmp_path, **(MQAR_OPTIONS | options))


def _reassemble(builder) -> tuple[dict[str, bytes], dict[str, set]]:
  """Concatenates each file's pieces in order across both splits; also returns the split keys."""
  pieces, keys = {}, {}
  for split, source in builder.as_data_source().items():
    keys[split] = set()
    for i in range(len(source)):
      r = source[i]
      file, piece = r["file"].decode(), int(r["piece"])
      assert r["tokens"].dtype == np.int32
      pieces.setdefault(file, {})[piece] = data.ByteTokenizer().decode_bytes(r["tokens"])
      keys[split].add((file, piece))
  files = {f: b"".join(p[i] for i in range(len(p))) for f, p in pieces.items()}
  return files, keys


def test_text_corpus_round_trip(text_builder, corpus):
  root, texts = corpus
  assert set(text_builder.as_data_source()) == {"train", "validation"}
  files, keys = _reassemble(text_builder)
  assert files == texts  # empty.txt and notes.md are not documents
  assert keys["train"] and keys["validation"] and not keys["train"] & keys["validation"]
  for source in text_builder.as_data_source().values():
    assert all(1 <= len(source[i]["tokens"]) <= 64 for i in range(len(source)))


def test_text_corpus_split_is_deterministic(text_builder, corpus, tmp_path):
  """The split depends on (file, piece) only: a copy of the corpus elsewhere splits the same way."""
  copy = tmp_path / "copy"
  shutil.copytree(corpus[0], copy)
  other = data.prepare("text_corpus", tmp_path / "tfds", corpus_dir=copy, max_doc_bytes=64)
  assert other.builder_config.name != text_builder.builder_config.name
  assert _reassemble(other)[1] == _reassemble(text_builder)[1]


def test_text_corpus_one_document_per_file(tmp_path):
  texts = write_corpus(tmp_path / "corpus")
  builder = data.prepare("text_corpus", tmp_path / "tfds", corpus_dir=tmp_path / "corpus")
  files, keys = _reassemble(builder)
  assert files == texts
  assert {p for _, p in keys["train"] | keys["validation"]} == {0}


def test_text_corpus_config_tracks_the_corpus(tmp_path):
  write_corpus(tmp_path)
  before = data.text_corpus_config(corpus_dir=tmp_path, max_doc_bytes=64).name
  assert data.text_corpus_config(corpus_dir=tmp_path, max_doc_bytes=32).name != before
  (tmp_path / "a.txt").write_bytes(b"edited")
  assert data.text_corpus_config(corpus_dir=tmp_path, max_doc_bytes=64).name != before


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason="Tiny Shakespeare not available")
def test_tiny_shakespeare_round_trip(data_dir):
  builder = data.prepare(
    "text_corpus", data_dir, corpus_dir=TINY_SHAKESPEARE.parent, max_doc_bytes=1 << 15
  )
  files, keys = _reassemble(builder)
  assert files == {"input.txt": TINY_SHAKESPEARE.read_bytes()}
  assert keys["validation"] and not keys["train"] & keys["validation"]
  assert len(keys["validation"]) < len(keys["train"])


@pytest.mark.parametrize(
  ("options", "name"),
  [
    (dict(), "corpus_dir"),
    (dict(corpus_dir="/nonexistent/dir"), "corpus_dir"),
    (dict(corpus_dir=".", max_doc_bytes=0), "max_doc_bytes"),
    (dict(corpus_dir=".", validation_fraction=1.0), "validation_fraction"),
    (dict(corpus_dir=".", tokenizer="spm"), "options"),
  ],
)
def test_text_corpus_bad_options(tmp_path, options, name):
  options = {k: tmp_path if v == "." else v for k, v in options.items()}
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.prepare("text_corpus", tmp_path, **options)


def test_text_corpus_needs_two_documents(tmp_path):
  (tmp_path / "one.txt").write_text("tiny")
  with pytest.raises(ValueError, match="^corpus_dir:.*at least 2"):
    data.prepare("text_corpus", tmp_path / "tfds", corpus_dir=tmp_path)


def test_missing_catalog_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="lm1b") as info:
    data.prepare("lm1b", tmp_path)
  assert str(tmp_path) in str(info.value) and "not prepared" in str(info.value)
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    data.prepare("no_such_dataset_xyz", tmp_path)


def test_a_builder_given_another_tasks_config_names_the_function_to_call(tmp_path):
  wrong = data.s_niah_config(context_len=400, train_size=4, test_size=2)
  with pytest.raises(ValueError, match=r"expected MQARConfig \(see mqar_config\)"):
    _ = data.MQARBuilder(data_dir=str(tmp_path), config=wrong).info
