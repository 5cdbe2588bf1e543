"""Tokenizers: byte-level round trips and the optional SentencePiece wrapper's errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from miras_jax.data import ByteTokenizer, SentencePieceTokenizer


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = "Hello, wörld — 😀\n"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ids.min() >= 0 and ids.max() < tok.vocab_size == 256
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text
  raw = bytes(range(256))
  assert tok.decode_bytes(tok.encode(raw)) == raw
  assert tok.decode(tok.encode("é".encode()[:1])) == "\ufffd"  # a cut character is replaced


@pytest.mark.parametrize(("call", "name"), [("encode", "text"), ("decode", "ids")])
def test_byte_tokenizer_errors(call, name):
  tok = ByteTokenizer()
  bad = 3 if call == "encode" else [0, 256]
  with pytest.raises(ValueError, match=rf"^{name}:"):
    getattr(tok, call)(bad)


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(ValueError, match="^model_path:"):
    SentencePieceTokenizer(tmp_path / "missing.model")
  if importlib.util.find_spec("sentencepiece") is None:
    model = tmp_path / "fake.model"
    model.write_bytes(b"")
    with pytest.raises(ImportError, match="pip install sentencepiece"):
      SentencePieceTokenizer(model)
