"""tensorflow-datasets builders that write ``array_record`` files, and ``prepare`` (offline).

Everything here works without TensorFlow: the builders are written with
``file_format="array_record"`` and read back with random access through ``builder.as_data_source()``
or ``tfds.data_source(...)`` (``tfds.load`` / ``as_dataset`` would need TensorFlow).

On-disk layout (the standard tfds one)::

  {data_dir}/mqar/{config_name}/1.0.0/mqar-{train,test}.array_record-0000i-of-0000n
  {data_dir}/text_corpus/{config_name}/1.0.0/text_corpus-{train,validation}.array_record-…
  {data_dir}/s_niah/{config_name}/1.0.0/s_niah-{train,test}.array_record-…
  {data_dir}/babi/{config_name}/1.0.0/babi-{train,test}.array_record-…
  {data_dir}/{catalog_name}/{config}/{version}/…          (catalog datasets, prepared elsewhere)

``config_name`` is derived from the options (see ``mqar_config`` / ``text_corpus_config`` /
``s_niah_config`` / ``babi_config``), so two
different option sets never share a directory, and preparing the same options twice reuses the files.
The builders are not registered in the tfds catalog (no global side effect); prepared data is read by
plain tfds through its files, e.g. ``tfds.data_source("mqar/<config_name>", split="train",
data_dir=data_dir)``. tfds shuffles records on write, so record ``i`` on disk is not example ``i`` of
the generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from miras_jax.data.babi import _BABI_EXCLUDE, _babi_examples, babi
from miras_jax.data.needle import _NEEDLE_EXCLUDE, _Filler, _s_niah_examples, s_niah
from miras_jax.data.synthetic import mqar
from miras_jax.data.tokenizers import ByteTokenizer

__all__ = [
  "BabiBuilder",
  "BabiConfig",
  "MQARBuilder",
  "MQARConfig",
  "SNIAHBuilder",
  "SNIAHConfig",
  "TextCorpusBuilder",
  "TextCorpusConfig",
  "babi_config",
  "mqar_config",
  "prepare",
  "s_niah_config",
  "text_corpus_config",
]

_VERSION = tfds.core.Version("1.0.0")
_FILE_FORMAT = "array_record"
# tfds derives ``code_path`` (where it looks for checksums.tsv) through ``importlib_resources`` for
# builders defined inside an installed package, and that package is not a dependency of tfds on
# Python >= 3.9: without it ``download_and_prepare`` fails with ModuleNotFoundError. Giving the path
# explicitly avoids the lookup (there is no checksums file: nothing is downloaded).
_CODE_PATH = epath.Path(__file__)


# ------------------------------------------------------------------------------------------------
# MQAR


def _task_info(builder, length: int, description: str, **extra) -> tfds.core.DatasetInfo:
  """DatasetInfo of a task dataset: ``inputs``/``targets`` int32 and ``mask`` bool of ``[length]``."""
  shape = (length,)
  features = {
    "inputs": tfds.features.Tensor(shape=shape, dtype=np.int32),
    "targets": tfds.features.Tensor(shape=shape, dtype=np.int32),
    "mask": tfds.features.Tensor(shape=shape, dtype=np.bool_),
    **extra,
  }
  return tfds.core.DatasetInfo(
    builder=builder, description=description, features=tfds.features.FeaturesDict(features)
  )


def _seeded_splits(builder) -> dict:
  """``train`` from seed 2·seed, ``test`` from 2·seed + 1 (never the same examples)."""
  cfg = builder.builder_config
  return {
    "train": builder._generate_examples(seed=2 * cfg.seed, n=cfg.train_size),
    "test": builder._generate_examples(seed=2 * cfg.seed + 1, n=cfg.test_size),
  }


@dataclasses.dataclass(kw_only=True)
class MQARConfig(tfds.core.BuilderConfig):
  """Options of ``MQARBuilder`` (see ``miras_jax.data.synthetic.mqar`` for their meaning).

  Split ``train`` is ``mqar(2 * seed, train_size, …)`` and split ``test`` is
  ``mqar(2 * seed + 1, test_size, …)``: the two splits use different seeds, and no two configs with
  different ``seed`` share a split seed.
  """

  seq_len: int = 256
  vocab: int = 8192
  num_pairs: int = 16
  train_size: int = 100_000
  test_size: int = 3_000
  seed: int = 0
  power_a: float = 0.01


def mqar_config(
  *,
  seq_len: int = 256,
  vocab: int = 8192,
  num_pairs: int = 16,
  train_size: int = 100_000,
  test_size: int = 3_000,
  seed: int = 0,
  power_a: float = 0.01,
) -> MQARConfig:
  """Returns the validated ``MQARConfig`` for these options, named after all of them.

  The name is ``T{seq_len}_V{vocab}_P{num_pairs}_a{power_a}_n{train_size}-{test_size}_s{seed}``, e.g.
  ``T64_V128_P4_a0.01_n1000-100_s0``, so different options land in different directories.

  Raises:
    ValueError: an option is out of range (the message names it).
  """
  checks = [("train_size", train_size, 1), ("test_size", test_size, 1), ("seed", seed, 0)]
  for name, value, minimum in checks:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
      raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  # Validate the task options once, on a single tiny example.
  mqar(seed=2 * seed, n=1, seq_len=seq_len, vocab=vocab, num_pairs=num_pairs, power_a=power_a)
  power_a = float(power_a)
  name = f"T{seq_len}_V{vocab}_P{num_pairs}_a{power_a!r}_n{train_size}-{test_size}_s{seed}"
  return MQARConfig(
    name=name,
    version=_VERSION,
    description=f"MQAR: seq_len={seq_len}, vocab={vocab}, num_pairs={num_pairs}, "
    f"power_a={power_a}, train_size={train_size}, test_size={test_size}, seed={seed}",
    seq_len=int(seq_len),
    vocab=int(vocab),
    num_pairs=int(num_pairs),
    train_size=int(train_size),
    test_size=int(test_size),
    seed=int(seed),
    power_a=power_a,
  )


class MQARBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Multi-query associative recall as a tfds dataset (splits ``train`` and ``test``).

  Each example: ``inputs`` int32 ``[seq_len]``, ``targets`` int32 ``[seq_len]``, ``mask`` bool
  ``[seq_len]`` — one row of ``miras_jax.data.synthetic.mqar`` (generated in memory per split:
  about ``9 * seq_len`` bytes per example). Build it with ``prepare("mqar", data_dir, **options)``
  or ``MQARBuilder(data_dir=…, config=mqar_config(…), file_format="array_record")``.
  """

  name = "mqar"
  code_path = _CODE_PATH
  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not isinstance(cfg, MQARConfig):
      raise ValueError(f"config: expected an MQARConfig (see mqar_config), got {cfg!r}")
    return _task_info(
      self,
      cfg.seq_len,
      "Zoology-style multi-query associative recall (miras_jax.data.synthetic.mqar).",
    )

  def _split_generators(self, dl_manager):
    return _seeded_splits(self)

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    cfg = self.builder_config
    data = mqar(seed, n, cfg.seq_len, cfg.vocab, cfg.num_pairs, cfg.power_a)
    for i in range(n):
      yield i, {k: v[i] for k, v in data.items()}


# ------------------------------------------------------------------------------------------------
# Text corpus


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
    version=_VERSION,
    description=f"Byte-level text corpus from {root} ({len(files)} files, {len(pieces)} "
    f"documents, max_doc_bytes={max_doc_bytes}, validation_fraction={validation_fraction})",
    corpus_dir=str(root),
    max_doc_bytes=None if max_doc_bytes is None else int(max_doc_bytes),
    validation_fraction=float(validation_fraction),
  )


class TextCorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A local directory of ``.txt`` files as byte-level documents (splits ``train``/``validation``).

  Each example: ``tokens`` int32 ``[L]`` (the document's bytes, ``ByteTokenizer``, ``1 <= L <=
  max_doc_bytes``), ``file`` (the relative posix path, bytes when read back) and ``piece`` (int32
  index of the piece within its file). Concatenating a file's pieces in ``piece`` order, across both
  splits, gives the file's bytes exactly. The split of a piece depends only on ``(file, piece)``
  (sha256), so it is stable across machines and runs (see ``_assign_splits``).
  """

  name = "text_corpus"
  code_path = _CODE_PATH
  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not isinstance(cfg, TextCorpusConfig):
      raise ValueError(f"config: expected a TextCorpusConfig (see text_corpus_config), got {cfg!r}")
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


# ------------------------------------------------------------------------------------------------
# S-NIAH and bAbI (long-context retrieval / reasoning over filler)


def _check_split_options(train_size, test_size, seed) -> None:
  for name, value, minimum in [
    ("train_size", train_size, 1),
    ("test_size", test_size, 1),
    ("seed", seed, 0),
  ]:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
      raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _filler_tag(filler: str, corpus_file) -> tuple[str, str | None]:
  """``("noise", None)`` or ``("corpus-{file stem}-{sha256 of its bytes, 12 hex}", absolute path)``.

  Raises:
    ValueError: ``corpus_file`` is missing for ``filler="corpus"``, given for ``"noise"``, or not an
      existing file.
  """
  if filler != "corpus":
    if corpus_file is not None:
      raise ValueError("corpus_file: only used with filler='corpus'; expected None")
    return str(filler), None
  if corpus_file is None:
    raise ValueError("corpus_file: filler='corpus' needs corpus_file (a UTF-8 text file)")
  path = Path(corpus_file).expanduser().resolve()
  if not path.is_file():
    raise ValueError(f"corpus_file: expected an existing text file, got {path}")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
  slug = re.sub(r"[^\w\-]+", "-", path.stem).strip("-") or "corpus"
  return f"corpus-{slug}-{digest}", str(path)


def _corpus_text(corpus_file: str | None) -> str | None:
  return None if corpus_file is None else Path(corpus_file).read_text("utf-8", errors="replace")


@dataclasses.dataclass(kw_only=True)
class SNIAHConfig(tfds.core.BuilderConfig):
  """Options of ``SNIAHBuilder`` (see ``miras_jax.data.needle.s_niah`` for their meaning).

  ``corpus_file`` is the corpus read for ``filler="corpus"`` (``corpus_text`` of ``s_niah``). Split
  ``train`` is ``s_niah(2 * seed, train_size, …)`` and ``test`` is ``s_niah(2 * seed + 1, test_size,
  …)``.
  """

  kind: str = "pk"
  context_len: int = 4096
  depth: float | None = None
  filler: str = "noise"
  corpus_file: str | None = None
  train_size: int = 10_000
  test_size: int = 1_000
  seed: int = 0


def s_niah_config(
  *,
  kind: str = "pk",
  context_len: int = 4096,
  depth: float | None = None,
  filler: str = "noise",
  corpus_file: str | os.PathLike | None = None,
  train_size: int = 10_000,
  test_size: int = 1_000,
  seed: int = 0,
) -> SNIAHConfig:
  """Returns the validated ``SNIAHConfig`` for these options, named after all of them.

  The name is ``{kind}_T{context_len}_d{depth or "U"}_{filler}_n{train_size}-{test_size}_s{seed}``
  (``U``: uniform random depth), e.g. ``pk_T512_d0.5_noise_n100-20_s0``, where a corpus filler is
  ``corpus-{file stem}-{12 hex digits of the sha256 of the file}``: the directory follows the
  corpus's content.

  Raises:
    ValueError: an option is out of range (the message names it).
  """
  _check_split_options(train_size, test_size, seed)
  tag, path = _filler_tag(filler, corpus_file) if filler in ("noise", "corpus") else (filler, None)
  # Validate the task options once, on a single tiny example.
  s_niah(2 * seed, 1, context_len, kind, depth, filler, _corpus_text(path))
  depth = None if depth is None else float(depth)
  d = "U" if depth is None else repr(depth)
  return SNIAHConfig(
    name=f"{kind}_T{context_len}_d{d}_{tag}_n{train_size}-{test_size}_s{seed}",
    version=_VERSION,
    description=f"S-NIAH: kind={kind}, context_len={context_len}, depth={depth}, filler={filler}, "
    f"corpus_file={path}, train_size={train_size}, test_size={test_size}, seed={seed}",
    kind=kind,
    context_len=int(context_len),
    depth=depth,
    filler=filler,
    corpus_file=path,
    train_size=int(train_size),
    test_size=int(test_size),
    seed=int(seed),
  )


class SNIAHBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """RULER-style single needle in a haystack as a tfds dataset (splits ``train`` and ``test``).

  Each example: ``inputs`` int32 ``[context_len]``, ``targets`` int32 ``[context_len]``, ``mask``
  bool ``[context_len]`` and ``depth`` float32 scalar (the depth used) — one row of
  ``miras_jax.data.needle.s_niah`` without its ``answer`` (the answer is the last bytes of
  ``inputs``, under the mask shifted by one). Examples are generated one at a time. Build it with
  ``prepare("s_niah", data_dir, **options)``.
  """

  name = "s_niah"
  code_path = _CODE_PATH
  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not isinstance(cfg, SNIAHConfig):
      raise ValueError(f"config: expected an SNIAHConfig (see s_niah_config), got {cfg!r}")
    return _task_info(
      self,
      cfg.context_len,
      "RULER-style single needle in a haystack (miras_jax.data.needle.s_niah).",
      depth=tfds.features.Scalar(dtype=np.float32),
    )

  def _split_generators(self, dl_manager):
    return _seeded_splits(self)

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg = self.builder_config
    filler, _ = _Filler.make(cfg.filler, _corpus_text(cfg.corpus_file), exclude=_NEEDLE_EXCLUDE)
    examples = _s_niah_examples(seed, n, cfg.context_len, cfg.kind, cfg.depth, filler)
    for i, (row, depth, _) in enumerate(examples):
      yield i, row | {"depth": np.float32(depth)}


@dataclasses.dataclass(kw_only=True)
class BabiConfig(tfds.core.BuilderConfig):
  """Options of ``BabiBuilder`` (see ``miras_jax.data.babi.babi`` for their meaning).

  ``corpus_file`` is the corpus read for ``filler="corpus"`` (``corpus_text`` of ``babi``). Split
  ``train`` is ``babi(2 * seed, train_size, …)`` and ``test`` is ``babi(2 * seed + 1, test_size,
  …)``.
  """

  task: str = "qa1"
  context_len: int = 4096
  num_facts: int = 10
  filler: str = "noise"
  corpus_file: str | None = None
  train_size: int = 10_000
  test_size: int = 1_000
  seed: int = 0


def babi_config(
  *,
  task: str = "qa1",
  context_len: int = 4096,
  num_facts: int = 10,
  filler: str = "noise",
  corpus_file: str | os.PathLike | None = None,
  train_size: int = 10_000,
  test_size: int = 1_000,
  seed: int = 0,
) -> BabiConfig:
  """Returns the validated ``BabiConfig`` for these options, named after all of them.

  The name is ``{task}_T{context_len}_F{num_facts}_{filler}_n{train_size}-{test_size}_s{seed}``, e.g.
  ``qa2_T1024_F10_noise_n100-20_s0``, where a corpus filler is ``corpus-{file stem}-{12 hex digits
  of the sha256 of the file}``.

  Raises:
    ValueError: an option is out of range (the message names it).
  """
  _check_split_options(train_size, test_size, seed)
  tag, path = _filler_tag(filler, corpus_file) if filler in ("noise", "corpus") else (filler, None)
  babi(2 * seed, 1, context_len, task, num_facts, filler, _corpus_text(path))
  return BabiConfig(
    name=f"{task}_T{context_len}_F{num_facts}_{tag}_n{train_size}-{test_size}_s{seed}",
    version=_VERSION,
    description=f"bAbI: task={task}, context_len={context_len}, num_facts={num_facts}, "
    f"filler={filler}, corpus_file={path}, train_size={train_size}, test_size={test_size}, "
    f"seed={seed}",
    task=task,
    context_len=int(context_len),
    num_facts=int(num_facts),
    filler=filler,
    corpus_file=path,
    train_size=int(train_size),
    test_size=int(test_size),
    seed=int(seed),
  )


class BabiBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """bAbI qa1/qa2 facts in filler (BABILong style) as a tfds dataset (splits ``train``, ``test``).

  Each example: ``inputs`` int32 ``[context_len]``, ``targets`` int32 ``[context_len]``, ``mask``
  bool ``[context_len]`` — one row of ``miras_jax.data.babi.babi`` without its ``answer``. Examples
  are generated one at a time. Build it with ``prepare("babi", data_dir, **options)``.
  """

  name = "babi"
  code_path = _CODE_PATH
  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not isinstance(cfg, BabiConfig):
      raise ValueError(f"config: expected a BabiConfig (see babi_config), got {cfg!r}")
    return _task_info(
      self, cfg.context_len, "bAbI qa1/qa2 facts spread through filler (miras_jax.data.babi.babi)."
    )

  def _split_generators(self, dl_manager):
    return _seeded_splits(self)

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    cfg = self.builder_config
    filler, _ = _Filler.make(cfg.filler, _corpus_text(cfg.corpus_file), exclude=_BABI_EXCLUDE)
    examples = _babi_examples(seed, n, cfg.context_len, cfg.task, cfg.num_facts, filler)
    for i, (row, _) in enumerate(examples):
      yield i, row


# ------------------------------------------------------------------------------------------------
# prepare


#: The option-built task datasets besides MQAR: name -> (builder, config class, config function).
_TASK_BUILDERS = {
  "s_niah": (SNIAHBuilder, SNIAHConfig, s_niah_config),
  "babi": (BabiBuilder, BabiConfig, babi_config),
}


def _build(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Generates a local builder's data if needed. tfds prints "Downloading and preparing" (to
  stdout) for every builder; nothing is downloaded here, so that line is replaced by ours."""
  if not builder.is_prepared():
    print(f"generating {builder.name} ({builder.builder_config.name}) in {builder.data_dir}",
          file=sys.stderr, flush=True)  # fmt: skip
    tfds.disable_progress_bar()  # its cursor moves garble the lines around it
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
      tfds.enable_progress_bar()
  return builder


class _LocalBuilderNotices(logging.Filter):
  """Drops two tfds warnings that are normal for the local builders: "Using custom data
  configuration" (each option set is its own config by design) and "Variant folder … has no
  dataset_info.json" (the folder of a config not generated yet)."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (
      text.startswith("Using custom data configuration")
      or (text.startswith("Variant folder") and "dataset_info.json" in text)
    )


logging.getLogger("absl").addFilter(_LocalBuilderNotices())


def prepare(name: str, data_dir: str | os.PathLike, **options: Any) -> tfds.core.DatasetBuilder:
  """Prepares dataset ``name`` under ``data_dir`` (offline) and returns its tfds builder.

  - ``"mqar"``: builds ``MQARBuilder`` with ``mqar_config(**options)`` (options ``seq_len``,
    ``vocab``, ``num_pairs``, ``train_size``, ``test_size``, ``seed``, ``power_a``).
  - ``"text_corpus"``: builds ``TextCorpusBuilder`` with ``text_corpus_config(**options)``
    (``corpus_dir`` required; ``max_doc_bytes``, ``validation_fraction``).
  - ``"s_niah"``: builds ``SNIAHBuilder`` with ``s_niah_config(**options)`` (options ``kind``,
    ``context_len``, ``depth``, ``filler``, ``corpus_file``, ``train_size``, ``test_size``, ``seed``).
  - ``"babi"``: builds ``BabiBuilder`` with ``babi_config(**options)`` (options ``task``,
    ``context_len``, ``num_facts``, ``filler``, ``corpus_file``, ``train_size``, ``test_size``,
    ``seed``).
  - any other name is a tfds catalog dataset (``"lm1b"``, ``"c4/en:3.0.1"``, …), opened with
    ``tfds.builder(name, data_dir=data_dir, file_format="array_record", **options)``; it must already
    be prepared there in a random-access format (array_record), since nothing is downloaded.

  Preparing is idempotent: already-prepared data is reused. Read the result with
  ``builder.as_data_source()[split]`` (random access, no TensorFlow) and feed it to
  ``miras_jax.data.make_loader``.

  Args:
    name: ``"mqar"``, ``"text_corpus"``, ``"s_niah"``, ``"babi"`` or a tfds catalog name.
    data_dir: the tfds data directory (created if needed for the local builders).
    **options: the builder options above.

  Returns:
    The prepared ``tfds.core.DatasetBuilder``.

  Raises:
    ValueError: unknown option, option out of range, unknown catalog dataset, or a catalog dataset
      not prepared (or not in array_record) under ``data_dir``.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name: expected a non-empty dataset name, got {name!r}")
  data_dir = os.fspath(Path(data_dir).expanduser())
  if name in _TASK_BUILDERS:
    cls, config_cls, make_config = _TASK_BUILDERS[name]
    allowed = sorted(
      {f.name for f in dataclasses.fields(config_cls)}
      - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise ValueError(
        f"options: {unknown} are not options of {name!r}; expected some of {allowed}"
      )
    return _build(cls(data_dir=data_dir, config=make_config(**options), file_format=_FILE_FORMAT))
  if name in ("mqar", "text_corpus"):
    make_config = mqar_config if name == "mqar" else text_corpus_config
    cls = MQARBuilder if name == "mqar" else TextCorpusBuilder
    fields = {
      f.name for f in dataclasses.fields(MQARConfig if name == "mqar" else TextCorpusConfig)
    }
    allowed = sorted(fields - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise ValueError(
        f"options: {unknown} are not options of {name!r}; expected some of {allowed}"
      )
    if name == "text_corpus" and "corpus_dir" not in options:
      raise ValueError("corpus_dir: required option of 'text_corpus' (a directory of .txt files)")
    config = make_config(**options)
    return _build(cls(data_dir=data_dir, config=config, file_format=_FILE_FORMAT))

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT, **options)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
      f"name: {name!r} is neither 'mqar', 'text_corpus', 's_niah', 'babi' nor a tfds catalog dataset "
      f"(nor prepared under data_dir={data_dir!r})"
    ) from e
  if not builder.is_prepared():
    raise ValueError(
      f"name: tfds dataset {name!r} is not prepared under data_dir={data_dir!r} (expected "
      f"{builder.data_path}); this runs offline and never downloads: prepare it where there is "
      f"internet (`tfds build {name.split('/')[0]} --data_dir=… --file_format=array_record`) "
      "and copy the directory here"
    )
  file_format = builder.info.file_format
  if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
    raise ValueError(
      f"name: tfds dataset {name!r} under data_dir={data_dir!r} is stored as {file_format}, "
      "which needs TensorFlow to read; expected array_record (rebuild with "
      "--file_format=array_record)"
    )
  return builder
