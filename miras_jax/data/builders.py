"""The tfds plumbing the task datasets share, and ``prepare`` (offline).

Each task module (``synthetic``: MQAR, ``needle``: S-NIAH, ``babi``, ``text_corpus``) defines its
builder config and builder and registers them (``registry.register_dataset``); ``prepare`` builds
any registered dataset, or opens a tfds catalog dataset.

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
import logging
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from miras_jax.data.registry import DATASETS

VERSION = tfds.core.Version("1.0.0")
FILE_FORMAT = "array_record"
# tfds derives ``code_path`` (where it looks for checksums.tsv) through ``importlib_resources`` for
# builders defined inside an installed package, and that package is not a dependency of tfds on
# Python >= 3.9: without it ``download_and_prepare`` fails with ModuleNotFoundError. Giving the path
# explicitly avoids the lookup (there is no checksums file: nothing is downloaded).
CODE_PATH = epath.Path(__file__)


class TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The base of a task's builder: the package's code path (above), version 1.0.0, the type of
  its builder config (``config_class``; ``checked_config()`` returns the config or names
  ``config_function``, the function that makes one) and the seeded ``train``/``test`` splits
  (``seeded_splits``; a builder with other splits overrides ``_split_generators``)."""

  code_path = CODE_PATH
  VERSION = VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  config_class: type = tfds.core.BuilderConfig
  config_function: str = ""

  def checked_config(self):
    cfg = self.builder_config
    if not isinstance(cfg, self.config_class):
      raise ValueError(
        f"config: expected {self.config_class.__name__} (see {self.config_function}), got {cfg!r}"
      )
    return cfg

  def _split_generators(self, dl_manager):
    return seeded_splits(self)


@dataclasses.dataclass(kw_only=True)
class FillerConfig(tfds.core.BuilderConfig):
  """The builder-config fields every filler task (S-NIAH, bAbI) shares (``filler_options`` checks
  and builds all but ``context_len``): ``corpus_file`` is the corpus read for ``filler="corpus"``;
  split ``train`` is the task's generator at seed ``2 * seed`` with ``train_size`` examples and
  ``test`` at ``2 * seed + 1`` with ``test_size`` (``seeded_splits``)."""

  context_len: int = 4096
  filler: str = "noise"
  corpus_file: str | None = None
  train_size: int = 10_000
  test_size: int = 1_000
  seed: int = 0


def task_info(builder, length: int, description: str, **extra) -> tfds.core.DatasetInfo:
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


def seeded_splits(builder) -> dict:
  """``train`` from seed 2·seed, ``test`` from 2·seed + 1 (never the same examples)."""
  cfg = builder.builder_config
  return {
    "train": builder._generate_examples(seed=2 * cfg.seed, n=cfg.train_size),
    "test": builder._generate_examples(seed=2 * cfg.seed + 1, n=cfg.test_size),
  }


def check_split_options(train_size, test_size, seed) -> None:
  for name, value, minimum in [
    ("train_size", train_size, 1),
    ("test_size", test_size, 1),
    ("seed", seed, 0),
  ]:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
      raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def filler_tag(filler: str, corpus_file) -> tuple[str, str | None]:
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


def filler_options(filler, corpus_file, train_size, test_size, seed) -> tuple[str, dict]:
  """The options every filler task (S-NIAH, bAbI) shares, checked: ``(tag, fields)`` with the
  filler's tag for the config name (``filler_tag``) and the config fields ``filler``,
  ``corpus_file`` (absolute, or None), ``train_size``, ``test_size`` and ``seed``."""
  check_split_options(train_size, test_size, seed)
  tag, path = filler_tag(filler, corpus_file) if filler in ("noise", "corpus") else (filler, None)
  fields = dict(filler=filler, corpus_file=path, train_size=int(train_size),
                test_size=int(test_size), seed=int(seed))  # fmt: skip
  return tag, fields


def corpus_text(corpus_file: str | None) -> str | None:
  return None if corpus_file is None else Path(corpus_file).read_text("utf-8", errors="replace")


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
  if name in DATASETS:
    task = DATASETS[name]
    allowed = sorted(
      {f.name for f in dataclasses.fields(task.config_class)}
      - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
      raise ValueError(
        f"options: {unknown} are not options of {name!r}; expected some of {allowed}"
      )
    for option, what in task.required.items():
      if option not in options:
        raise ValueError(f"{option}: required option of {name!r} ({what})")
    config = task.make_config(**options)
    return _build(task.builder(data_dir=data_dir, config=config, file_format=FILE_FORMAT))

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT, **options)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
      f"name: {name!r} is neither a task dataset ({', '.join(sorted(DATASETS))}) nor a tfds "
      f"catalog dataset (nor prepared under data_dir={data_dir!r})"
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
