"""S-NIAH (``miras_jax.data.needle.s_niah``): layout, answers recoverable, no leak, depth, builder."""

from __future__ import annotations

import re

import numpy as np
import pytest

from miras_jax import data

from .conftest import TINY_SHAKESPEARE

TOK = data.ByteTokenizer()
KINDS = ("pk", "n", "w")
# The needle sentences, written out independently of the generator's templates.
NEEDLE_RE = {
  "pk": re.compile(r"The pass key is (\d+)\. Remember it\. (\d+) is the pass key\."),
  "n": re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d+)\."),
  "w": re.compile(
    r"One of the special magic uuids for ([a-z]+-[a-z]+) is: "
    r"([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})\."
  ),
}
QUESTION_RE = {
  "pk": re.compile(r"What is the pass key\? The pass key is $"),
  "n": re.compile(r"What is the special magic number for ([a-z]+-[a-z]+)\? $"),
  "w": re.compile(r"What is the special magic uuid for ([a-z]+-[a-z]+)\? $"),
}


def _split(out, i):
  """(prompt, answer under the mask) of row ``i``, checking the mask/targets layout on the way."""
  x, y, m = out["inputs"][i], out["targets"][i], out["mask"][i]
  t, a = len(x), int(m.sum())
  np.testing.assert_array_equal(np.flatnonzero(m), np.arange(t - a - 1, t - 1))
  np.testing.assert_array_equal(y[:-1], x[1:])
  assert y[-1] == data.EOS_ID
  answer = TOK.decode_bytes(y[m])
  assert TOK.decode_bytes(x[t - a :]) == answer
  return TOK.decode_bytes(x[: t - a]).decode("utf-8"), answer.decode("utf-8")


def _check_row(out, i, kind):
  """The answer under the mask is the needle's value, and it leaks nowhere else; returns the
  needle's span in the prompt."""
  prompt, answer = _split(out, i)
  assert answer == out["answer"][i]
  needles = list(NEEDLE_RE[kind].finditer(prompt))
  assert len(needles) == 1, prompt
  (needle,) = needles
  question = QUESTION_RE[kind].search(prompt)
  assert question is not None and question.start() >= needle.end()
  if kind == "pk":
    assert needle[1] == needle[2] == answer
    assert 5 <= len(answer) <= 7 and answer[0] != "0"
    assert prompt.count(answer) == 2  # both inside the needle sentence
  else:
    key, value = needle[1], needle[2]
    assert value == answer and question[1] == key
    assert prompt.count(answer) == 1
    assert prompt.count(key) == 2  # the needle and the question
    if kind == "n":
      assert len(answer) == 7 and answer[0] != "0"
  assert answer not in prompt[: needle.start()] + prompt[needle.end() :]
  return needle.start(), needle.end(), question.start()


def test_deterministic_by_seed():
  a = data.s_niah(0, 6, 300, "n")
  b = data.s_niah(0, 6, 300, "n")
  c = data.s_niah(1, 6, 300, "n")
  assert a.keys() == {"inputs", "targets", "mask", "depth", "answer"}
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])
  prefix = data.s_niah(0, 3, 300, "n")
  for k in a:
    np.testing.assert_array_equal(prefix[k], a[k][:3])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_len", [None, 257, 1000])
def test_layout_and_answer_recoverable(kind, context_len):
  """Exact length; the mask holds exactly the answer; the needle sentence parses to it; no leak."""
  context_len = context_len or data.s_niah_min_context_len(kind)
  out = data.s_niah(3, 24, context_len, kind)
  for k, dtype in [("inputs", np.int32), ("targets", np.int32), ("mask", np.bool_)]:
    assert out[k].shape == (24, context_len) and out[k].dtype == dtype
  assert out["depth"].shape == (24,) and out["depth"].dtype == np.float32
  assert out["answer"].dtype == object
  assert out["inputs"].min() >= 0 and out["inputs"].max() < 256
  for i in range(24):
    _check_row(out, i, kind)
  assert np.all((out["depth"] >= 0) & (out["depth"] <= 1))
  assert len(set(out["answer"])) > 20


def test_minimum_context_has_no_filler():
  for kind in KINDS:
    t = data.s_niah_min_context_len(kind)
    out = data.s_niah(0, 40, t, kind, depth=0.3)
    fillers = []
    for i in range(40):
      start, end, question = _check_row(out, i, kind)
      fillers.append(question - (end + 1 - start))  # prompt bytes outside needle and question
    # only keys or values shorter than the longest leave room for a little filler
    assert 0 <= min(fillers) and max(fillers) < 40
    assert kind != "pk" or min(fillers) == 0  # a 7-digit passkey fills the context exactly
    with pytest.raises(ValueError, match="^context_len:"):
      data.s_niah(0, 1, t - 1, kind)


def test_depth_controls_position():
  t = 2048
  starts = {}
  for depth in (0.0, 0.25, 0.75, 1.0):
    out = data.s_niah(5, 8, t, "pk", depth=depth)
    spans = [_check_row(out, i, "pk") for i in range(8)]
    starts[depth] = np.array([s for s, _, _ in spans]) / t
    # snapped to a sentence boundary (noise sentences are at most 22 bytes)
    np.testing.assert_allclose(out["depth"], depth, atol=0.02)
    if depth == 0.0:
      assert all(s == 0 for s, _, _ in spans)
    if depth == 1.0:
      assert all(q == e + 1 for _, e, q in spans)  # "…the pass key. What is the pass key?"
  assert starts[0.0].max() < 0.05 and starts[1.0].min() > 0.9
  assert starts[0.0].max() < starts[0.25].min() <= starts[0.25].max() < starts[0.75].min()
  random = data.s_niah(5, 200, 512, "n")["depth"]
  assert random.min() < 0.1 and random.max() > 0.9 and 0.4 < random.mean() < 0.6


def test_noise_filler_is_the_repeated_sentences():
  out = data.s_niah(2, 4, 600, "w", depth=0.5)
  noise = " ".join(data.needle.NOISE_SENTENCES) + " "
  for i in range(4):
    prompt, _ = _split(out, i)
    start, end, question = _check_row(out, i, "w")
    haystack = prompt[:start] + prompt[end + 1 : question]
    assert haystack in noise * (len(haystack) // len(noise) + 2)


def test_corpus_filler_keeps_utf8_and_drops_template_sentences():
  corpus = (
    "Ünïcödé façade — naïve café. Ωμέγα ends here! "
    "The special magic numbers for cats is: 1234567. Ça va? Bien sûr."
  )
  out = data.s_niah(0, 30, 300, "n", filler="corpus", corpus_text=corpus)
  for i in range(30):
    prompt, _ = _split(out, i)  # strict UTF-8 decoding: no character is cut
    _check_row(out, i, "n")
    assert "1234567" not in prompt and "cats" not in prompt
  with pytest.raises(ValueError, match="^corpus_text:"):
    data.s_niah(0, 1, 300, "pk", filler="corpus", corpus_text="The pass key is 12345.")


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason="Tiny Shakespeare not available")
@pytest.mark.parametrize("kind", KINDS)
def test_tiny_shakespeare_filler(kind):
  text = TINY_SHAKESPEARE.read_text()
  out = data.s_niah(1, 12, 1500, kind, filler="corpus", corpus_text=text)
  flat = " ".join(text.split())
  for i in range(12):
    prompt, _ = _split(out, i)
    start, end, question = _check_row(out, i, kind)
    # the filler after the needle is whole Shakespeare sentences, in corpus order
    after = prompt[end + 1 : question].strip()
    assert not after or after in flat
  assert out["depth"].std() > 0.1


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    (dict(kind="xyz"), "kind"),
    (dict(kind=None), "kind"),
    (dict(context_len=100), "context_len"),
    (dict(context_len=2.5), "context_len"),
    (dict(depth=1.5), "depth"),
    (dict(depth=float("nan")), "depth"),
    (dict(depth=True), "depth"),
    (dict(filler="books"), "filler"),
    (dict(filler="corpus"), "corpus_text"),
    (dict(filler="corpus", corpus_text=""), "corpus_text"),
    (dict(corpus_text="Some text."), "corpus_text"),
    (dict(n=0), "n"),
    (dict(seed=-1), "seed"),
  ],
)
def test_bad_arguments(kwargs, name):
  args = dict(seed=0, n=2, context_len=512, kind="pk") | kwargs
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.s_niah(**args)


def test_min_context_len_bad_kind():
  with pytest.raises(ValueError, match="^kind:"):
    data.s_niah_min_context_len("pq")


# ------------------------------------------------------------------------------------------------
# tfds builder


def _rows(arrays) -> list[bytes]:
  keys = ("inputs", "targets", "mask", "depth")
  return sorted(
    b"".join(np.asarray(arrays[k][i], np.float32 if k == "depth" else None).tobytes() for k in keys)
    for i in range(len(arrays["inputs"]))
  )


def _read_all(source) -> dict[str, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def test_builder_round_trip(data_dir):
  options = dict(kind="w", context_len=256, depth=None, train_size=12, test_size=5, seed=2)
  builder = data.prepare("s_niah", data_dir, **options)
  cfg = builder.builder_config
  assert builder.data_path == data_dir / "s_niah" / cfg.name / "1.0.0"
  assert cfg.name == "w_T256_dU_noise_n12-5_s2"
  sources = builder.as_data_source()
  assert set(sources) == {"train", "test"}
  stored = {}
  for split, seed, n in [("train", 4, 12), ("test", 5, 5)]:
    stored[split] = _read_all(sources[split])
    assert stored[split]["inputs"].shape == (n, 256) and stored[split]["inputs"].dtype == np.int32
    assert stored[split]["mask"].dtype == np.bool_
    assert _rows(stored[split]) == _rows(data.s_niah(seed, n, 256, "w"))
  assert not set(_rows(stored["train"])) & set(_rows(stored["test"]))
  other = data.prepare("s_niah", data_dir, **(options | dict(depth=0.5)))
  assert other.data_path != builder.data_path
  assert data.prepare("s_niah", data_dir, **options).data_path == builder.data_path


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason="Tiny Shakespeare not available")
def test_builder_corpus_file(data_dir):
  options = dict(kind="pk", context_len=400, filler="corpus", train_size=4, test_size=2)
  builder = data.prepare("s_niah", data_dir, corpus_file=TINY_SHAKESPEARE, **options)
  assert re.fullmatch(r"pk_T400_dU_corpus-input-[0-9a-f]{12}_n4-2_s0", builder.builder_config.name)
  stored = _read_all(builder.as_data_source()["test"])
  expected = data.s_niah(1, 2, 400, "pk", filler="corpus", corpus_text=TINY_SHAKESPEARE.read_text())
  assert _rows(stored) == _rows(expected)


@pytest.mark.parametrize(
  ("options", "name"),
  [
    (dict(kind="q"), "kind"),
    (dict(context_len=50), "context_len"),
    (dict(filler="corpus"), "corpus_file"),
    (dict(filler="corpus", corpus_file="/nonexistent/file.txt"), "corpus_file"),
    (dict(corpus_file="/nonexistent/file.txt"), "corpus_file"),
    (dict(train_size=0), "train_size"),
    (dict(task="qa1"), "options"),
  ],
)
def test_builder_bad_options(tmp_path, options, name):
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.prepare("s_niah", tmp_path, **(dict(context_len=256, train_size=4, test_size=2) | options))


def test_snap_is_the_nearest_sentence_boundary():
  """``_Filler.snap`` against brute force: the nearest boundary of the window, ties to the earlier."""
  from miras_jax.data.needle import _Filler

  filler = _Filler(["A b.", "Cc dd eee.", "F!", "Gg hh?"])
  rng = np.random.default_rng(0)
  stream = filler.blob.tobytes() * 40
  for _ in range(200):
    size = int(rng.integers(0, 120))
    hay, start = filler.window(rng, size)
    offset = start % filler.length
    assert hay == stream[offset : offset + size]
    bounds = [0, size] + [
      p for p in range(1, size) if (start + p) % filler.length in set(filler.starts.tolist())
    ]
    fractions = np.sort(rng.random(5))
    got = filler.snap(start, size, fractions)
    assert np.all(np.diff(got) >= 0)
    for f, g in zip(fractions, got, strict=True):
      best = min(sorted(bounds), key=lambda b: abs(b - f * size))
      assert g == best
