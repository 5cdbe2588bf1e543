"""A local directory of ``.txt`` files as a byte-level tfds dataset (splits ``train`` and
``validation``): ``prepare("text_corpus", data_dir, corpus_dir=…)``, read packed by the loaders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from miras_jax.data.builders import (
  VERSION,
  TaskBuilder,
)
from miras_jax.data.registry import register_dataset
from miras_jax.data.tokenizers import ByteTokenizer


@dataclasses.dataclass(kw_only=True)
class TextCorpusConfig(tfds.core.BuilderConfig):
  """Options of ``TextCorpusBuilder``: the corpus directory, document size cap, held-out fraction."""

  corpus_dir: str = ""
  max_doc_bytes: int | None = None
  validation_fraction: float = 0.05


def _corpus_files(corpus_dir: Path) -> list[tuple[str, Path]]:
  """``(relative posix path, path)`` of every non-empty ``*.txt`` under ``corpus_dir``, sorted."""
  files = [p for p in corpus_dir.rglob("*.txt") if p.is_file() and p.stat().st_size > 0]
  return sorted((p.relative_to(corpus_dir).as_posix(), p) for p in files)


def _unit_hash(*parts: Any) -> float:
  """A deterministic number in [0, 1) from ``parts`` (sha256, independent of PYTHONHASHSEED)."""
  digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def _assign_splits(
  pieces: list[tuple[str, int]], validation_fraction: float
) -> dict[tuple[str, int], str]:
  """Maps each ``(file, piece)`` to ``"train"`` or ``"validation"``, deterministically.

  A piece goes to validation iff ``_unit_hash(file, piece) < validation_fraction``. With at least
  two pieces both splits are made non-empty: if one is empty, the piece with the smallest
  (resp. largest) hash moves to validation (resp. train).
  """
  hashes = {p: _unit_hash(*p) for p in pieces}
  split = {p: "validation" if h < validation_fraction else "train" for p, h in hashes.items()}
  if len(pieces) >= 2:
    if "validation" not in split.values():
      split[min(hashes, key=hashes.get)] = "validation"
    if "train" not in split.values():
      split[max(hashes, key=hashes.get)] = "train"
  return split


def _corpus_pieces(corpus_dir: Path, max_doc_bytes: int | None) -> list[tuple[str, int]]:
  pieces = []
  for rel, path in _corpus_files(corpus_dir):
    size = path.stat().st_size
    count = 1 if max_doc_bytes is None else math.ceil(size / max_doc_bytes)
    pieces.extend((rel, i) for i in range(count))
  return pieces


def text_corpus_config(
  *,
  corpus_dir: str | os.PathLike,
  max_doc_bytes: int | None = None,
  validation_fraction: float = 0.05,
) -> TextCorpusConfig:
  """Returns the validated ``TextCorpusConfig`` for a directory of ``.txt`` files.

  The name is ``{dir name}_{max_doc_bytes or "file"}_v{validation_fraction}_{fingerprint}``, where
  the fingerprint (12 hex digits of a sha256) covers the absolute corpus path, the options and every
  file's relative path, size and mtime: editing the corpus or changing an option gives a new
  directory instead of silently reusing stale data.

  Args:
    corpus_dir: directory searched recursively for non-empty ``*.txt`` files.
    max_doc_bytes: ``None`` for one document per file, else files are cut into consecutive pieces
      of at most this many bytes (byte boundaries, so a UTF-8 character may straddle two pieces).
    validation_fraction: expected fraction of documents held out in ``validation``, in ``(0, 1)``.

  Raises:
    ValueError: ``corpus_dir`` is missing or yields fewer than two documents, or an option is out
      of range (the message names it).
  """
  root = Path(corpus_dir).expanduser().resolve()
  if not root.is_dir():
    raise ValueError(f"corpus_dir: expected an existing directory of .txt files, got {root}")
  if max_doc_bytes is not None and (
    isinstance(max_doc_bytes, bool)
    or not isinstance(max_doc_bytes, numbers.Integral)
    or max_doc_bytes < 1
  ):
    raise ValueError(f"max_doc_bytes: expected None or an integer >= 1, got {max_doc_bytes!r}")
  if (
    isinstance(validation_fraction, bool)
    or not isinstance(validation_fraction, numbers.Real)
    or not 0.0 < validation_fraction < 1.0
  ):
    raise ValueError(
      f"validation_fraction: expected a float in (0, 1), got {validation_fraction!r}"
    )
  files = _corpus_files(root)
  if not files:
    raise ValueError(f"corpus_dir: expected non-empty *.txt files under {root}, found none")
  pieces = _corpus_pieces(root, max_doc_bytes)
  if len(pieces) < 2:
    raise ValueError(
      f"corpus_dir: {root} yields {len(pieces)} document(s) with max_doc_bytes={max_doc_bytes}; "
      "need at least 2 to hold one out for validation (add files or lower max_doc_bytes)"
    )
  listing = [(rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files]
  fingerprint = hashlib.sha256(
    json.dumps([str(root), max_doc_bytes, float(validation_fraction), listing]).encode()
  ).hexdigest()[:12]
  slug = re.sub(r"[^\w\-]+", "-", root.name).strip("-") or "corpus"
  size = "file" if max_doc_bytes is None else str(int(max_doc_bytes))
  return TextCorpusConfig(
    name=f"{slug}_{size}_v{float(validation_fraction)!r}_{fingerprint}",
    version=VERSION,
    description=f"Byte-level text corpus from {root} ({len(files)} files, {len(pieces)} "
    f"documents, max_doc_bytes={max_doc_bytes}, validation_fraction={validation_fraction})",
    corpus_dir=str(root),
    max_doc_bytes=None if max_doc_bytes is None else int(max_doc_bytes),
    validation_fraction=float(validation_fraction),
  )


class TextCorpusBuilder(TaskBuilder, skip_registration=True):
  """A local directory of ``.txt`` files as byte-level documents (splits ``train``/``validation``).

  Each example: ``tokens`` int32 ``[L]`` (the document's bytes, ``ByteTokenizer``, ``1 <= L <=
  max_doc_bytes``), ``file`` (the relative posix path, bytes when read back) and ``piece`` (int32
  index of the piece within its file). Concatenating a file's pieces in ``piece`` order, across both
  splits, gives the file's bytes exactly. The split of a piece depends only on ``(file, piece)``
  (sha256), so it is stable across machines and runs (see ``_assign_splits``).
  """

  name = "text_corpus"
  config_class = TextCorpusConfig
  config_function = "text_corpus_config"

  def _info(self) -> tfds.core.DatasetInfo:
    self.checked_config()
    return tfds.core.DatasetInfo(
      builder=self,
      description="Byte-level documents from a local directory of .txt files.",
      features=tfds.features.FeaturesDict(
        {
          "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "file": tfds.features.Text(),
          "piece": tfds.features.Scalar(dtype=np.int32),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = Path(cfg.corpus_dir)
    split = _assign_splits(_corpus_pieces(root, cfg.max_doc_bytes), cfg.validation_fraction)
    return {
      name: self._generate_examples(root=root, split=split, which=name)
      for name in ("train", "validation")
    }

  def _generate_examples(
    self, root: Path, split: dict[tuple[str, int], str], which: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    tok = ByteTokenizer()
    for rel, path in _corpus_files(root):
      data = path.read_bytes()
      step = cfg.max_doc_bytes or len(data)
      for piece, start in enumerate(range(0, len(data), step)):
        if split.get((rel, piece)) != which:
          continue
        tokens = tok.encode(data[start : start + step])
        yield f"{rel}:{piece}", {"tokens": tokens, "file": rel, "piece": piece}


register_dataset(
  "text_corpus",
  TextCorpusBuilder,
  TextCorpusConfig,
  text_corpus_config,
  required={"corpus_dir": "a directory of .txt files"},
)
