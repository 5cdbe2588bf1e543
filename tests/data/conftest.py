"""Shared fixtures for the data tests: tiny prepared datasets, built once per test process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from configs import common
from miras_jax import data

TINY_SHAKESPEARE = Path(common.SHAKESPEARE) / "input.txt"  # resolved relative to the repository
MQAR_OPTIONS = dict(seq_len=32, vocab=64, num_pairs=4, train_size=96, test_size=40, seed=3)


def write_corpus(root: Path) -> dict[str, bytes]:
  """Writes a small corpus of .txt files (plus files the builder must ignore); returns its texts."""
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "γάμμα", "délta", "😀", "epsilon", "\n", "zeta.", "ηta"]
  texts = {
    "a.txt": " ".join(rng.choice(words, size=300)).encode(),
    "sub/b.txt": " ".join(rng.choice(words, size=120)).encode(),
    "sub/deeper/c.txt": b"short file\n",
  }
  for rel, content in texts.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(content)
  (root / "empty.txt").write_bytes(b"")  # skipped: no documents
  (root / "notes.md").write_text("not a .txt file")  # ignored
  return texts


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def mqar_builder(data_dir):
  return data.prepare("mqar", data_dir, **MQAR_OPTIONS)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
  root = tmp_path_factory.mktemp("corpus")
  return root, write_corpus(root)


@pytest.fixture(scope="session")
def text_builder(data_dir, corpus):
  return data.prepare("text_corpus", data_dir, corpus_dir=corpus[0], max_doc_bytes=64)
