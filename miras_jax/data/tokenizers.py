"""Tokenizers: byte-level (no dependencies) and an optional SentencePiece wrapper.

Both map text to a 1-D ``int32`` numpy array of token ids and back. Token id conventions:

- ``ByteTokenizer``: id ``i`` is the byte value ``i`` of the UTF-8 encoding (``vocab_size = 256``).
  It defines no special tokens. The packing pipeline (``miras_jax.data.pipeline``) separates documents
  with ``EOS_ID = 0``, the NUL byte, which does not occur in ordinary text files.
- ``SentencePieceTokenizer``: the ids of the SentencePiece model; ``eos_id`` is the model's own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

#: The document separator the byte-level pipeline uses: the NUL byte.
EOS_ID = 0


class ByteTokenizer:
  """Byte-level tokenizer: UTF-8 bytes are the tokens (ids 0–255).

  ``encode`` accepts ``str`` (encoded as UTF-8) or ``bytes``; ``decode`` returns ``str`` (invalid
  UTF-8, e.g. a multi-byte character cut at a document boundary, is replaced by U+FFFD) and
  ``decode_bytes`` returns the exact bytes, so ``decode_bytes(encode(b)) == b`` for any bytes ``b``.
  """

  vocab_size: int = 256
  eos_id: int = EOS_ID

  def encode(self, text: str | bytes) -> np.ndarray:
    """Returns the byte ids of ``text``: ``int32 [len(utf8 bytes)]``, values in ``[0, 256)``."""
    if isinstance(text, str):
      data = text.encode("utf-8")
    elif isinstance(text, bytes | bytearray | memoryview):
      data = bytes(text)
    else:
      raise ValueError(f"text: expected str or bytes, got {type(text).__name__}")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode_bytes(self, ids: Any) -> bytes:
    """Returns the bytes of ``ids`` (any integer array-like of shape ``[T]``, values in ``[0, 256)``)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"ids: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
      return b""
    if not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"ids: expected integer token ids, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= self.vocab_size:
      raise ValueError(
        f"ids: expected byte ids in [0, {self.vocab_size}), got range [{arr.min()}, {arr.max()}]"
      )
    return arr.astype(np.uint8).tobytes()

  def decode(self, ids: Any) -> str:
    """Returns the text of ``ids`` (shape ``[T]``), decoding UTF-8 with replacement characters."""
    return self.decode_bytes(ids).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model (``.model`` file); needs the optional ``sentencepiece`` package.

  Args:
    model_path: path of a trained SentencePiece model file.

  Raises:
    ImportError: ``sentencepiece`` is not installed (``pip install sentencepiece``).
    ValueError: ``model_path`` does not name an existing file.
  """

  def __init__(self, model_path: str | os.PathLike):
    path = os.fspath(model_path)
    if not os.path.isfile(path):
      raise ValueError(f"model_path: expected an existing SentencePiece model file, got {path!r}")
    try:
      import sentencepiece  # optional dependency, imported lazily
    except ImportError as e:
      raise ImportError(
        "SentencePieceTokenizer needs the optional package `sentencepiece`: "
        "pip install sentencepiece (or use ByteTokenizer, which needs nothing)"
      ) from e
    self.model_path = path
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)

  @property
  def vocab_size(self) -> int:
    """The number of ids of the model."""
    return int(self._sp.get_piece_size())

  @property
  def eos_id(self) -> int:
    """The model's end-of-sequence id (``-1`` if the model defines none)."""
    return int(self._sp.eos_id())

  def encode(self, text: str | bytes) -> np.ndarray:
    """Returns the ids of ``text``: ``int32 [T]`` (bytes are decoded as UTF-8 first)."""
    if isinstance(text, bytes | bytearray | memoryview):
      text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
      raise ValueError(f"text: expected str or bytes, got {type(text).__name__}")
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Any) -> str:
    """Returns the text of ``ids`` (integer array-like of shape ``[T]``)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"ids: expected a 1-D sequence of token ids, got shape {arr.shape}")
    return self._sp.decode([int(i) for i in arr])
