"""RULER-style single needle-in-a-haystack (S-NIAH) tasks, byte-level: the numpy generator
``s_niah``, its tfds dataset (``prepare("s_niah", …)``) and the evaluations ``s_niah_pk``, ``s_niah_n``
and ``s_niah_w`` (registered in ``miras_jax.data.registry``).

One example is a byte string of exactly ``context_len`` tokens (``ByteTokenizer`` ids, vocab 256)::

  prompt = haystack[:pos] + needle + haystack[pos:] + question
  seq    = prompt + answer                                  (len(seq) == context_len)

- The **haystack** is filler text: ``"noise"`` repeats RULER's five sentences ("The grass is green.
  The sky is blue. The sun is yellow. Here we go. There and back again."), ``"corpus"`` uses
  sentences cut from ``corpus_text`` (whitespace collapsed to single spaces, split after ``.``, ``!``
  or ``?``). Every sentence is followed by one space. The haystack is a window of that cyclic stream
  of sentences that *ends* at the end of a sentence and is exactly as long as needed, so only its
  first sentence may be cut (at its front; bytes of a UTF-8 character cut there become spaces). The
  filler is what absorbs the variable lengths of the needle, question and answer.
- The **needle** is one of three templates (``kind``), each followed by one space:

  ======  ==========================================================================  ===========
  kind    needle                                                                      answer
  ======  ==========================================================================  ===========
  "pk"    ``The pass key is {v}. Remember it. {v} is the pass key.``                  5–7 digits
  "n"     ``One of the special magic numbers for {key} is: {v}.``                     7 digits
  "w"     ``One of the special magic uuids for {key} is: {v}.``                       a uuid4
  ======  ==========================================================================  ===========

  ``{key}`` is an adjective-noun word such as ``"quiet-lantern"``; numbers never start with ``0``; a
  uuid is 36 lowercase characters ``8-4-4-4-12`` (hex, version 4).
- The needle is inserted at a sentence boundary of the haystack (``pos`` is 0, the start of a whole
  sentence, or ``len(haystack)``): the boundary nearest to ``depth * len(haystack)``.
- The **question** (no trailing newline) is ``"What is the pass key? The pass key is "`` (``"pk"``),
  ``"What is the special magic number for {key}? "`` (``"n"``) or ``"What is the special magic uuid
  for {key}? "`` (``"w"``), and the **answer** is ``{v}``.
- No leak: the answer occurs in the prompt only inside the needle (twice for ``"pk"``, once
  otherwise) and ``{key}`` only in the needle and the question; a draw that violates this (possible
  only with a corpus) is redrawn. Corpus sentences containing "pass key" or "special magic" are
  dropped.

Training format (as ``miras_jax.data.synthetic.mqar``): ``inputs = seq``, ``targets[t] = inputs[t +
1]`` (``targets[T-1] = EOS_ID = 0``), and ``mask`` is True exactly at the ``A = len(answer)``
positions ``T-A-1 … T-2``, whose targets are the answer bytes. The loop's masked next-token loss and
accuracy are therefore those of emitting the answer after the question (teacher-forced).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from miras_jax.data.builders import (
  VERSION,
  FillerConfig,
  TaskBuilder,
  corpus_text,
  filler_options,
  task_info,
)
from miras_jax.data.registry import register_dataset, register_eval_task
from miras_jax.data.tokenizers import EOS_ID

__all__ = ["NEEDLE_KINDS", "NOISE_SENTENCES", "s_niah", "s_niah_min_context_len"]

#: RULER's noise haystack, repeated.
NOISE_SENTENCES = (
  "The grass is green.",
  "The sky is blue.",
  "The sun is yellow.",
  "Here we go.",
  "There and back again.",
)
#: The needle kinds of ``s_niah``: passkey, number, uuid.
NEEDLE_KINDS = ("pk", "n", "w")
FILLERS = ("noise", "corpus")

_ADJECTIVES = (
  "amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "crimson", "curious", "dusty",
  "eager", "fancy", "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly", "lively",
  "lucky", "mellow", "misty", "noble", "quiet", "rapid", "rusty", "silent", "silver", "sleepy",
  "stormy", "tender",
)  # fmt: skip
_NOUNS = (
  "anchor", "badger", "beacon", "canyon", "castle", "cobbler", "comet", "compass", "falcon",
  "fiddle", "garnet", "glacier", "harbor", "hazel", "island", "juniper", "kettle", "lantern",
  "meadow", "mirror", "orchard", "otter", "pebble", "quill", "raven", "saddle", "spindle", "thistle",
  "tunnel", "violin", "walrus", "willow",
)  # fmt: skip
_KEY_WORDS = tuple(f"{a}-{b}" for a in _ADJECTIVES for b in _NOUNS)

_NEEDLES = {
  "pk": "The pass key is {v}. Remember it. {v} is the pass key. ",
  "n": "One of the special magic numbers for {key} is: {v}. ",
  "w": "One of the special magic uuids for {key} is: {v}. ",
}
_QUESTIONS = {
  "pk": "What is the pass key? The pass key is ",
  "n": "What is the special magic number for {key}? ",
  "w": "What is the special magic uuid for {key}? ",
}
_MAX_VALUE_LEN = {"pk": 7, "n": 7, "w": 36}
_NEEDLE_EXCLUDE = re.compile(r"pass key|special magic", re.IGNORECASE)
_MAX_TRIES = 100


# ------------------------------------------------------------------------------------------------
# Argument checks and the filler stream (shared with miras_jax.data.babi)


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
  return value


def _sentences(text: str) -> list[str]:
  """Sentences of ``text``: whitespace (and NUL) collapsed to one space, split after ``.!?``."""
  text = " ".join(text.replace("\x00", " ").split())
  return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


class _Filler:
  """A cyclic stream of sentences (each followed by one space) cut into haystack windows.

  ``blob`` is the concatenated UTF-8 bytes, ``starts`` the byte offset of every sentence plus the
  total length ``L`` at the end. Positions on the infinite cyclic stream are integers; the stream
  byte at position ``p`` is ``blob[p mod L]``, and ``p`` is a sentence boundary iff ``p mod L`` is in
  ``starts``.
  """

  def __init__(self, sentences: list[str]):
    units = [(s + " ").encode("utf-8") for s in sentences]
    self.blob = np.frombuffer(b"".join(units), dtype=np.uint8)
    self.starts = np.concatenate([[0], np.cumsum([len(u) for u in units])]).astype(np.int64)
    self.length = int(self.starts[-1])

  @classmethod
  def make(
    cls, filler: str, corpus_text, exclude: re.Pattern[str] | None = None
  ) -> tuple[_Filler, bool]:
    """Validates ``filler``/``corpus_text``; returns the stream and whether it is a corpus."""
    _check_choice("filler", filler, FILLERS)
    if filler == "noise":
      if corpus_text is not None:
        raise ValueError("corpus_text: only used with filler='corpus'; expected None")
      return cls(list(NOISE_SENTENCES)), False
    if isinstance(corpus_text, bytes | bytearray):
      corpus_text = bytes(corpus_text).decode("utf-8", errors="replace")
    if not isinstance(corpus_text, str):
      raise ValueError(
        f"corpus_text: filler='corpus' needs the corpus as str (or UTF-8 bytes), got "
        f"{type(corpus_text).__name__}"
      )
    sentences = _sentences(corpus_text)
    if exclude is not None:
      sentences = [s for s in sentences if not exclude.search(s)]
    if not sentences:
      raise ValueError("corpus_text: expected text with at least one usable sentence, got none")
    return cls(sentences), True

  def window(self, rng: np.random.Generator, size: int) -> tuple[bytes, int]:
    """A haystack of ``size`` bytes ending at the end of a random sentence, and its start position.

    Leading UTF-8 continuation bytes (a character cut by the window's start) become spaces.
    """
    end = int(self.starts[rng.integers(1, len(self.starts))])
    start = end - size
    if size == 0:
      return b"", start
    data = self.blob[(start + np.arange(size, dtype=np.int64)) % self.length].copy()
    cut = 0
    while cut < size and 0x80 <= data[cut] < 0xC0:
      cut += 1
    data[:cut] = ord(" ")
    return data.tobytes(), start

  def snap(self, start: int, size: int, fractions) -> np.ndarray:
    """Offsets in ``[0, size]`` of the sentence boundaries nearest to ``fractions * size``.

    The candidates are the window's two ends and every sentence start inside it; ties go to the
    earlier boundary. Monotone: sorted ``fractions`` give sorted offsets.
    """
    x = start + np.asarray(fractions, dtype=np.float64) * size
    base = np.floor(x / self.length).astype(np.int64) * self.length
    r = x - base
    idx = np.clip(np.searchsorted(self.starts, r, side="right"), 1, len(self.starts) - 1)
    lo, hi = base + self.starts[idx - 1], base + self.starts[idx]  # the boundaries around x
    # Candidates in increasing order (argmin takes the first of equals: ties go to the earlier).
    cands = np.stack(
      [
        np.full_like(lo, start),
        *np.clip([lo, hi], start, start + size),
        np.full_like(lo, start + size),
      ],
      axis=-1,
    )
    best = np.argmin(np.abs(cands - x[..., None]), axis=-1)
    return np.take_along_axis(cands, best[..., None], axis=-1)[..., 0] - start


def _check_context(context_len, minimum: int, what: str) -> int:
  context_len = _check_int("context_len", context_len, 1)
  if context_len < minimum:
    raise ValueError(
      f"context_len: expected >= {minimum} (the longest {what} plus question and answer), "
      f"got {context_len}"
    )
  return context_len


def _row(seq: bytes, answer_len: int) -> dict[str, np.ndarray]:
  """``inputs``/``targets``/``mask`` of one sequence whose last ``answer_len`` bytes are the answer."""
  inputs = np.frombuffer(seq, dtype=np.uint8).astype(np.int32)
  targets = np.empty_like(inputs)
  targets[:-1] = inputs[1:]
  targets[-1] = EOS_ID
  mask = np.zeros(len(inputs), dtype=bool)
  mask[len(inputs) - answer_len - 1 : len(inputs) - 1] = True
  return {"inputs": inputs, "targets": targets, "mask": mask}


# ------------------------------------------------------------------------------------------------
# S-NIAH


def s_niah_min_context_len(kind: str) -> int:
  """The smallest ``context_len`` that ``s_niah`` accepts for ``kind`` (empty haystack, longest
  needle, question and answer).

  Raises:
    ValueError: ``kind`` is not one of ``NEEDLE_KINDS``.
  """
  _check_choice("kind", kind, NEEDLE_KINDS)
  key = max(_KEY_WORDS, key=len)
  v = "9" * _MAX_VALUE_LEN[kind]
  return len(_NEEDLES[kind].format(key=key, v=v)) + len(_QUESTIONS[kind].format(key=key)) + len(v)


def _draw_value(rng: np.random.Generator, kind: str) -> str:
  if kind == "pk":
    digits = int(rng.integers(5, 8))
    return str(int(rng.integers(10 ** (digits - 1), 10**digits)))
  if kind == "n":
    return str(int(rng.integers(10**6, 10**7)))
  nibbles = rng.integers(0, 16, size=32)
  nibbles[12] = 4  # version 4
  nibbles[16] = 8 + nibbles[16] % 4  # RFC 4122 variant
  h = "".join("0123456789abcdef"[i] for i in nibbles)
  return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _s_niah_examples(seed: int, n: int, context_len: int, kind: str, depth, filler: _Filler):
  """Yields ``(row, depth_used, answer)`` for ``n`` examples, one ``default_rng(seed)`` in turn."""
  rng = np.random.default_rng(seed)
  for _ in range(n):
    for _ in range(_MAX_TRIES):
      value = _draw_value(rng, kind)
      key = _KEY_WORDS[rng.integers(len(_KEY_WORDS))] if kind != "pk" else ""
      needle = _NEEDLES[kind].format(key=key, v=value).encode()
      question = _QUESTIONS[kind].format(key=key).encode()
      answer = value.encode()
      size = context_len - len(needle) - len(question) - len(answer)
      target = float(rng.random()) if depth is None else depth
      hay, start = filler.window(rng, size)
      pos = int(filler.snap(start, size, [target])[0])
      prompt = hay[:pos] + needle + hay[pos:] + question
      if prompt.count(answer) == needle.count(answer) and (
        kind == "pk" or prompt.count(key.encode()) == 2
      ):
        break
    else:
      raise ValueError(
        f"corpus_text: the answer or key of the needle occurs in the filler in {_MAX_TRIES} draws "
        "in a row; use a corpus with fewer digits / other words"
      )
    used = pos / size if size else target
    yield _row(prompt + answer, len(answer)), used, value


def _check_depth(depth) -> float | None:
  if depth is None:
    return None
  if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not math.isfinite(depth):
    raise ValueError(f"depth: expected None or a float in [0, 1], got {depth!r}")
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth: expected None or a float in [0, 1], got {depth}")
  return float(depth)


def s_niah(
  seed: int,
  n: int,
  context_len: int,
  kind: str,
  depth: float | None = None,
  filler: str = "noise",
  corpus_text: str | None = None,
) -> dict[str, np.ndarray]:
  """RULER-style single needle-in-a-haystack examples, byte-level, deterministic by ``seed``.

  See the module docstring for the layout, templates and the no-leak rule. Examples are drawn one
  after the other from ``np.random.default_rng(seed)``, so the first ``k`` rows of ``n > k`` rows
  equal ``s_niah(seed, k, …)``.

  Args:
    seed: non-negative integer seed; equal arguments give equal outputs.
    n: number of examples (``>= 1``).
    context_len: ``T``, the exact length of prompt + answer in bytes; at least
      ``s_niah_min_context_len(kind)`` (the rest is filler).
    kind: ``"pk"`` (passkey), ``"n"`` (number keyed by a word) or ``"w"`` (uuid keyed by a word).
    depth: where the needle goes, as a fraction in ``[0, 1]`` of the haystack (0: before it, 1:
      right before the question); ``None`` draws it uniformly per example. The needle is put at the
      nearest sentence boundary, so the depth used differs slightly (see ``depth`` below).
    filler: ``"noise"`` (RULER's repeated sentences) or ``"corpus"`` (sentences of ``corpus_text``).
    corpus_text: the corpus (``str`` or UTF-8 ``bytes``, e.g. Tiny Shakespeare) for
      ``filler="corpus"``; must be ``None`` for ``"noise"``.

  Returns:
    A dict of ``n`` rows:

    - ``"inputs"``: int32 ``[n, T]``, the sequence (prompt then answer bytes);
    - ``"targets"``: int32 ``[n, T]``, next-token targets (``inputs`` shifted left, last ``EOS_ID``);
    - ``"mask"``: bool ``[n, T]``, True exactly at the positions whose target is an answer byte;
    - ``"depth"``: float32 ``[n]``, the depth used: bytes of haystack before the needle divided by
      the haystack length (the requested/drawn depth when the haystack is empty);
    - ``"answer"``: object ``[n]`` of ``str``, the answers (``inputs[i, T - len(answer):]``).

    Drop ``"answer"`` (and ``"depth"`` if unwanted) before handing the dict to jitted code such as
    the training loop; ``s_niah`` datasets built by ``prepare("s_niah", …)`` store ``inputs``,
    ``targets``, ``mask`` and ``depth`` only.

  Raises:
    ValueError: an argument is out of range or of the wrong type (the message names it), or a
      corpus keeps leaking the answer into the filler (``corpus_text``).
  """
  seed = _check_int("seed", seed, 0)
  n = _check_int("n", n, 1)
  kind = _check_choice("kind", kind, NEEDLE_KINDS)
  context_len = _check_context(context_len, s_niah_min_context_len(kind), "needle")
  depth = _check_depth(depth)
  stream, _ = _Filler.make(filler, corpus_text, exclude=_NEEDLE_EXCLUDE)
  rows, depths, answers = [], [], []
  for row, used, answer in _s_niah_examples(seed, n, context_len, kind, depth, stream):
    rows.append(row)
    depths.append(used)
    answers.append(answer)
  out = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets", "mask")}
  out["depth"] = np.asarray(depths, dtype=np.float32)
  out["answer"] = np.empty(n, dtype=object)
  out["answer"][:] = answers
  return out


# ------------------------------------------------------------------------------------------------
# The tfds dataset and the evaluations


@dataclasses.dataclass(kw_only=True)
class SNIAHConfig(FillerConfig):
  """Options of ``SNIAHBuilder`` (see ``miras_jax.data.needle.s_niah`` for their meaning): the
  shared ``FillerConfig`` fields, the needle's kind and depth. Split ``train`` is ``s_niah(2 *
  seed, train_size, …)`` and ``test`` is ``s_niah(2 * seed + 1, test_size, …)``.
  """

  kind: str = "pk"
  depth: float | None = None


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
  tag, shared = filler_options(filler, corpus_file, train_size, test_size, seed)
  path = shared["corpus_file"]
  # Validate the task options once, on a single tiny example.
  s_niah(2 * seed, 1, context_len, kind, depth, filler, corpus_text(path))
  depth = None if depth is None else float(depth)
  d = "U" if depth is None else repr(depth)
  return SNIAHConfig(
    name=f"{kind}_T{context_len}_d{d}_{tag}_n{train_size}-{test_size}_s{seed}",
    version=VERSION,
    description=f"S-NIAH: kind={kind}, context_len={context_len}, depth={depth}, filler={filler}, "
    f"corpus_file={path}, train_size={train_size}, test_size={test_size}, seed={seed}",
    kind=kind,
    context_len=int(context_len),
    depth=depth,
    **shared,
  )


class SNIAHBuilder(TaskBuilder, skip_registration=True):
  """RULER-style single needle in a haystack as a tfds dataset (splits ``train`` and ``test``).

  Each example: ``inputs`` int32 ``[context_len]``, ``targets`` int32 ``[context_len]``, ``mask``
  bool ``[context_len]`` and ``depth`` float32 scalar (the depth used) — one row of
  ``miras_jax.data.needle.s_niah`` without its ``answer`` (the answer is the last bytes of
  ``inputs``, under the mask shifted by one). Examples are generated one at a time. Build it with
  ``prepare("s_niah", data_dir, **options)``.
  """

  name = "s_niah"
  config_class = SNIAHConfig
  config_function = "s_niah_config"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.checked_config()
    return task_info(
      self,
      cfg.context_len,
      "RULER-style single needle in a haystack (miras_jax.data.needle.s_niah).",
      depth=tfds.features.Scalar(dtype=np.float32),
    )

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, Any]]]:
    cfg = self.builder_config
    filler, _ = _Filler.make(cfg.filler, corpus_text(cfg.corpus_file), exclude=_NEEDLE_EXCLUDE)
    examples = _s_niah_examples(seed, n, cfg.context_len, cfg.kind, cfg.depth, filler)
    for i, (row, depth, _) in enumerate(examples):
      yield i, row | {"depth": np.float32(depth)}


register_dataset("s_niah", SNIAHBuilder, SNIAHConfig, s_niah_config)
_EVALS = {
  "pk": "RULER S-NIAH-PK: a passkey in repeated noise (byte level, vocab ≥ 256)",
  "n": "S-NIAH-N: a number needle keyed by a word",
  "w": "S-NIAH-W: a uuid needle keyed by a word",
}
for _kind, _what in _EVALS.items():
  register_eval_task(
    f"s_niah_{_kind}",
    lambda options, seed, n, length, kind=_kind: s_niah(seed, n, length, kind),
    byte_level=True,
    description=_what,
  )
