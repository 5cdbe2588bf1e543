"""Deterministic, sharded, resumable batch iterators built with grain.

``make_loader`` turns a random-access source (a tfds data source such as
``prepare("mqar", …).as_data_source()["train"]``, a ``grain.MapDataset``, or any sequence of
dicts) into an iterator of numpy batches. The grain pipeline is::

  source → shuffle(seed) → keep the first len − len % shard_count records → [shard_index::shard_count]
         → repeat(num_epochs) → to_iter_dataset → (pack into windows) → batch

- **Determinism**: the output is a function of ``(source, seed, options)`` only (grain keeps the
  order fixed whatever the number of reading threads).
- **Sharding**: every process shuffles the whole source with the same seed and takes a strided
  slice of it, so the shards of one epoch are disjoint, equally long and together cover the epoch
  except the last ``len % shard_count`` records of its permutation (a different few each epoch). Each
  epoch is reshuffled (grain folds the epoch into the seed).
- **Epochs**: batches run across epoch boundaries (the example stream is epoch 0, then epoch 1, …);
  ``drop_remainder`` only concerns the end of a finite stream.
- **Packing** (``pack_len`` given): each record's token sequence (feature ``pack_feature``; a
  ``str``/``bytes`` feature is byte-tokenized) gets ``eos_id`` appended (default ``EOS_ID = 0``, the NUL
  byte), the documents are concatenated in stream order and cut into consecutive windows of
  ``pack_len + 1`` tokens; window ``w`` gives ``inputs = w[:-1]``, ``targets = w[1:]``, ``mask`` all
  True. Windows therefore straddle documents (the separator marks the boundary); a finite stream's
  final partial window is dropped. Rows of a batch are consecutive windows of the stream (documents are
  shuffled, windows are not).
- **Resuming**: ``loader.get_state()`` is a JSON-serialisable dict; ``make_loader(same arguments)``
  followed by ``set_state(state)`` continues with exactly the batch the saved loader would have
  yielded next.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from miras_jax.data.tokenizers import EOS_ID, ByteTokenizer

__all__ = ["Loader", "make_loader"]

_STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Packing as a grain IterDataset (concatenate documents, cut fixed windows).


class _PackIterator(grain.DatasetIterator):
  """Cuts the concatenation of 1-D token arrays into windows of ``window`` tokens.

  State: ``{"parent": <parent state before the document holding the next window's first token>,
  "offset": <tokens of that document already consumed>}`` — plain ints and dicts, JSON-safe.
  """

  def __init__(self, parent: grain.DatasetIterator, window: int):
    super().__init__(parent)
    self._window = window
    self._doc: np.ndarray | None = None  # document holding the next unread token, if any
    self._doc_state: dict[str, Any] | None = None  # parent state before ``_doc`` was read
    self._pos = 0  # tokens of ``_doc`` already consumed

  def __next__(self) -> np.ndarray:
    pieces, need = [], self._window
    while need > 0:
      if self._doc is None or self._pos == len(self._doc):
        state = self._parent.get_state()
        doc = next(self._parent)  # StopIteration: the final partial window is dropped
        self._doc, self._doc_state, self._pos = doc, state, 0
      take = min(need, len(self._doc) - self._pos)
      pieces.append(self._doc[self._pos : self._pos + take])
      self._pos += take
      need -= take
    return np.concatenate(pieces)

  def get_state(self) -> dict[str, Any]:
    if self._doc is None or self._pos == len(self._doc):
      return {"parent": self._parent.get_state(), "offset": 0}
    return {"parent": self._doc_state, "offset": self._pos}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc, self._doc_state, self._pos = None, None, 0
    if state["offset"]:
      self._doc_state = self._parent.get_state()
      self._doc = next(self._parent)
      self._pos = int(state["offset"])


class _PackIterDataset(grain.IterDataset):
  """``IterDataset`` of fixed windows of ``window`` tokens cut from concatenated 1-D documents."""

  def __init__(self, parent: grain.IterDataset, window: int):
    super().__init__(parent)
    self._window = window

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._window)

  def __str__(self) -> str:
    return f"_PackIterDataset(window={self._window})"


def _document_tokens(feature: str, eos_id: int):
  tok = ByteTokenizer()

  def fn(record: Any) -> np.ndarray:
    if not isinstance(record, Mapping) or feature not in record:
      raise ValueError(
        f"pack_feature: expected records to be dicts with key {feature!r}, got "
        f"{sorted(record) if isinstance(record, Mapping) else type(record).__name__}"
      )
    value = record[feature]
    if isinstance(value, str | bytes):
      tokens = tok.encode(value)
    else:
      tokens = np.asarray(value)
      if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
          f"pack_feature: expected {feature!r} to be text or a 1-D integer array, got "
          f"dtype {tokens.dtype} shape {tokens.shape}"
        )
    return np.concatenate([tokens.astype(np.int32), np.asarray([eos_id], np.int32)])

  return fn


def _window_to_example(window: np.ndarray) -> dict[str, np.ndarray]:
  return {
    "inputs": window[:-1],
    "targets": window[1:],
    "mask": np.ones(len(window) - 1, dtype=bool),
  }


# ------------------------------------------------------------------------------------------------
# Loader


class Loader(Iterator[dict[str, np.ndarray]]):
  """Iterator of numpy batches (``dict`` of ``[batch_size, …]`` arrays) with resumable state.

  Built by ``make_loader``. ``get_state()`` returns a JSON-serialisable dict (grain's iterator state
  plus the loader's options and the number of batches yielded); ``set_state(state)`` on a loader
  made with the same arguments continues with exactly the batch the saved one would yield next.
  """

  def __init__(self, dataset: grain.IterDataset, options: dict[str, Any], packed: bool):
    self._dataset = dataset
    self._options = options
    self._packed = packed
    self._it = iter(dataset)
    self._count = 0

  @property
  def options(self) -> dict[str, Any]:
    """The options this loader was made with (the ones ``set_state`` checks)."""
    return dict(self._options)

  @property
  def batches_yielded(self) -> int:
    """How many batches this loader (or the one its state came from) has yielded."""
    return self._count

  def __iter__(self) -> Loader:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      if self._count == 0 and self._packed:
        raise ValueError(
          f"source: the packed stream has fewer than batch_size={self._options['batch_size']} "
          f"windows of pack_len + 1 = {self._options['pack_len'] + 1} tokens (shard "
          f"{self._options['shard_index']} of {self._options['shard_count']}, num_epochs="
          f"{self._options['num_epochs']}); use more data, epochs, or a smaller batch/pack_len"
        ) from None
      raise
    self._count += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """Returns the iterator state: a JSON-serialisable dict (ints, strings, lists, dicts)."""
    state = {
      "version": _STATE_VERSION,
      "options": self._options,
      "batches_yielded": self._count,
      "grain": self._it.get_state(),
    }
    return json.loads(json.dumps(state))

  def set_state(self, state: Mapping[str, Any] | str | bytes) -> None:
    """Restores a state from ``get_state`` (also accepts it JSON-encoded as ``str``/``bytes``).

    Raises:
      ValueError: ``state`` is malformed or was saved by a loader with different options.
    """
    if isinstance(state, str | bytes):
      state = json.loads(state)
    if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
      raise ValueError(
        f"state: expected a dict from Loader.get_state (version {_STATE_VERSION}), got {state!r}"
      )
    saved = state.get("options", {})
    diff = {k: (saved.get(k), v) for k, v in self._options.items() if saved.get(k) != v}
    if diff:
      raise ValueError(
        f"state: saved by a loader with different options ({{name: (saved, this)}}: {diff}); "
        "make the loader with the same arguments to restore it"
      )
    self._it.set_state(state["grain"])
    self._count = int(state["batches_yielded"])


class _ColumnSource:
  """Random access to the rows of a dict of equally long arrays: ``source[i] = {k: v[i]}``."""

  def __init__(self, columns: Mapping[str, Any]):
    self._columns = {k: np.asarray(v) for k, v in columns.items()}
    lengths = {k: (len(v) if v.ndim else None) for k, v in self._columns.items()}
    if not lengths or len(set(lengths.values())) != 1 or None in lengths.values():
      raise ValueError(
        f"source: expected a dict of arrays with one common leading dimension, got lengths {lengths}"
      )
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self._columns.items()}


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  return int(value)


def make_loader(
  source: Any,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  shard_index: int | None = None,
  shard_count: int | None = None,
  num_epochs: int | None = None,
  pack_len: int | None = None,
  drop_remainder: bool = True,
  pack_feature: str = "tokens",
  eos_id: int = EOS_ID,
  num_threads: int = 2,
  prefetch: int = 16,
) -> Loader:
  """Returns a deterministic, sharded, resumable iterator of numpy batches (see the module doc).

  Args:
    source: random-access records: anything with ``__len__`` and ``__getitem__`` (a tfds data
      source, a ``grain.MapDataset``, a list of dicts), or a dict of equally long arrays whose rows
      are the records (e.g. the output of ``mqar``: in memory, it skips tfds's per-record decoding).
      Without packing, records must be dicts of fixed-shape arrays, stacked into ``[batch_size, …]``.
    batch_size: examples per batch (per process).
    seed: shuffle seed in ``[0, 2**32)``; the same seed gives the same batches.
    shuffle: shuffle records (reshuffled every epoch); if False, records are read in order.
    shard_index: this process's shard, default ``jax.process_index()``.
    shard_count: number of shards, default ``jax.process_count()``.
    num_epochs: passes over the (sharded) source; ``None`` repeats forever.
    pack_len: if given, pack documents into windows: batches are ``inputs``/``targets`` int32
      ``[batch_size, pack_len]`` (``targets`` = ``inputs`` shifted left by one) and ``mask`` bool, all
      True.
    drop_remainder: drop a final partial batch of a finite stream (keep it if False).
    pack_feature: the record key holding a document's tokens (or its text) when packing.
    eos_id: separator appended to every document when packing.
    num_threads: grain reading threads (does not affect the output).
    prefetch: grain prefetch buffer (records, or batches without packing).

  Returns:
    A ``Loader``: iterate it for batches; ``get_state`` / ``set_state`` to checkpoint it.

  Raises:
    ValueError: an argument is out of range, or the source is smaller than one batch per shard.
  """
  if isinstance(source, Mapping):
    source = _ColumnSource(source)
  if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
    raise ValueError(
      f"source: expected a random-access source with __len__ and __getitem__ (e.g. a tfds data "
      f"source or grain.MapDataset), got {type(source).__name__}"
    )
  batch_size = _check_int("batch_size", batch_size, 1)
  seed = _check_int("seed", seed, 0)
  if seed >= 2**32:
    raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
  if shard_index is None or shard_count is None:
    import jax  # only for the process defaults

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  shard_count = _check_int("shard_count", shard_count, 1)
  shard_index = _check_int("shard_index", shard_index, 0)
  if shard_index >= shard_count:
    raise ValueError(f"shard_index: expected an integer in [0, {shard_count}), got {shard_index}")
  if num_epochs is not None:
    num_epochs = _check_int("num_epochs", num_epochs, 1)
  if pack_len is not None:
    pack_len = _check_int("pack_len", pack_len, 1)
  num_threads = _check_int("num_threads", num_threads, 0)
  prefetch = _check_int("prefetch", prefetch, 0)

  ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
  n = len(ds)
  per_shard = n // shard_count
  if per_shard == 0:
    raise ValueError(
      f"source: has {n} records, fewer than shard_count={shard_count}; every shard needs one"
    )
  if pack_len is None and per_shard < batch_size:
    raise ValueError(
      f"source: has {n} records, i.e. {per_shard} per shard (shard_count={shard_count}), fewer "
      f"than batch_size={batch_size}"
    )
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if n % shard_count:
    ds = ds[: per_shard * shard_count]
  if shard_count > 1:
    ds = ds[shard_index::shard_count]
  ds = ds.repeat(num_epochs)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  if pack_len is None:
    it_ds = ds.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset(read_options)
  else:
    docs = ds.map(_document_tokens(pack_feature, eos_id)).to_iter_dataset(read_options)
    windows = _PackIterDataset(docs, pack_len + 1).map(_window_to_example)
    it_ds = windows.batch(batch_size, drop_remainder=drop_remainder)
  options = {
    "num_records": n,
    "batch_size": batch_size,
    "seed": seed,
    "shuffle": bool(shuffle),
    "shard_index": shard_index,
    "shard_count": shard_count,
    "num_epochs": num_epochs,
    "pack_len": pack_len,
    "drop_remainder": bool(drop_remainder),
    "pack_feature": pack_feature if pack_len is not None else None,
    "eos_id": int(eos_id) if pack_len is not None else None,
  }
  return Loader(it_ds, options, packed=pack_len is not None)
