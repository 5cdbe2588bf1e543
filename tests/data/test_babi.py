"""bAbI qa1/qa2 in filler (``miras_jax.data.babi.babi``): layout, an independent simulator, builder."""

from __future__ import annotations

import re

import numpy as np
import pytest

from miras_jax import data

from .conftest import TINY_SHAKESPEARE

TOK = data.ByteTokenizer()
PEOPLE = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
THINGS = ("apple", "football", "milk")
MOVE = ("went to", "journeyed to", "travelled to", "moved to", "went back to")
GRAB = ("picked up", "got", "grabbed", "took")
DROP = ("dropped", "put down", "discarded", "left")
FACT_RE = re.compile(
  rf"({'|'.join(PEOPLE)}) ({'|'.join(MOVE + GRAB + DROP)}) the ({'|'.join(PLACES + THINGS)})\."
)
FACT_UNIT_RE = re.compile(FACT_RE.pattern + " ")  # a fact as inserted: followed by a space
NOISE = " ".join(data.needle.NOISE_SENTENCES) + " "
QUESTION_RE = re.compile(r"Where is (?:the )?(\w+)\? (?:The )?(\w+) is in the $")


def _split(out, i):
  """(prompt, answer under the mask) of row ``i``, checking the mask/targets layout on the way."""
  x, y, m = out["inputs"][i], out["targets"][i], out["mask"][i]
  t, a = len(x), int(m.sum())
  np.testing.assert_array_equal(np.flatnonzero(m), np.arange(t - a - 1, t - 1))
  np.testing.assert_array_equal(y[:-1], x[1:])
  assert y[-1] == data.EOS_ID
  answer = TOK.decode_bytes(y[m]).decode()
  assert TOK.decode_bytes(x[t - a :]).decode() == answer == out["answer"][i]
  return TOK.decode_bytes(x[: t - a]).decode("utf-8"), answer


def simulate(facts, target):
  """An independent simulator: people carry what they hold; dropped things stay where dropped.

  Also checks that the story is physically consistent."""
  where, holds, lies = {}, {}, {}  # person -> place, thing -> person, thing -> place
  for person, verb, arg in facts:
    if verb in MOVE:
      assert arg in PLACES and where.get(person) != arg
      where[person] = arg
    elif verb in GRAB:
      assert arg in THINGS and person in where and arg not in holds
      assert lies.get(arg, where[person]) == where[person], "grabbed where it lies"
      holds[arg] = person
      lies.pop(arg, None)
    else:
      assert verb in DROP and holds.get(arg) == person
      lies[arg] = where[holds.pop(arg)]
  if target in PEOPLE:
    return where[target]
  return where[holds[target]] if target in holds else lies[target]


def _check(out, i, task, num_facts):
  prompt, answer = _split(out, i)
  facts = FACT_RE.findall(prompt)
  assert len(facts) == num_facts
  question = QUESTION_RE.search(prompt)
  assert question is not None and question[1] == question[2]
  target = question[1]
  assert target in (PEOPLE if task == "qa1" else THINGS)
  last_fact = list(FACT_RE.finditer(prompt))[-1]
  assert question.start() >= last_fact.end(), "the question comes after every fact"
  assert answer in PLACES and answer == simulate(facts, target)
  assert answer not in prompt[question.start() :], "the question does not contain the answer"
  assert data.babi_solve(prompt) == answer
  if task == "qa1":
    assert all(verb in MOVE for _, verb, _ in facts)
  return prompt, facts, [m.start() for m in FACT_RE.finditer(prompt)]


def test_deterministic_by_seed():
  a = data.babi(0, 6, 400, "qa2", num_facts=5)
  b = data.babi(0, 6, 400, "qa2", num_facts=5)
  c = data.babi(1, 6, 400, "qa2", num_facts=5)
  assert a.keys() == {"inputs", "targets", "mask", "answer"}
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["inputs"], c["inputs"])
  prefix = data.babi(0, 2, 400, "qa2", num_facts=5)
  for k in a:
    np.testing.assert_array_equal(prefix[k], a[k][:2])


@pytest.mark.parametrize("task", ["qa1", "qa2"])
@pytest.mark.parametrize(("context_len", "num_facts"), [(None, 2), (None, 8), (1200, 12)])
def test_answer_follows_from_the_facts(task, context_len, num_facts):
  """Exact length, the mask holds the answer, and an independent simulator over the parsed facts
  gives it."""
  context_len = context_len or data.babi_min_context_len(task, num_facts)
  out = data.babi(4, 40, context_len, task, num_facts=num_facts)
  for k, dtype in [("inputs", np.int32), ("targets", np.int32), ("mask", np.bool_)]:
    assert out[k].shape == (40, context_len) and out[k].dtype == dtype
  for i in range(40):
    _check(out, i, task, num_facts)
  assert len(set(out["answer"])) >= 3


def test_qa2_needs_more_than_the_last_mention():
  """qa2 stories mix the three kinds of facts, and the answer often is not in the last fact about
  the object (the holder moved on afterwards)."""
  out = data.babi(0, 60, 900, "qa2", num_facts=10)
  verbs, carried = set(), 0
  for i in range(60):
    prompt, facts, _ = _check(out, i, "qa2", 10)
    target = QUESTION_RE.search(prompt)[1]
    last = max(j for j, (_, _, arg) in enumerate(facts) if arg == target)
    carried += facts[last][1] in GRAB and any(
      p == facts[last][0] and v in MOVE for p, v, _ in facts[last + 1 :]
    )
    verbs |= {v for _, v, _ in facts}
  assert verbs & set(MOVE) and verbs & set(GRAB) and verbs & set(DROP)
  assert carried >= 10


def test_facts_spread_through_the_filler():
  t, k = 3000, 6
  out = data.babi(2, 50, t, "qa1", num_facts=k)
  pos = []
  for i in range(50):
    prompt, _, starts = _check(out, i, "qa1", k)
    assert starts == sorted(starts)
    pos += [s / t for s in starts]
    before = prompt[: QUESTION_RE.search(prompt).start()]
    haystack = FACT_UNIT_RE.sub("", before)
    assert len(haystack) == len(before) - sum(len(m[0]) for m in FACT_UNIT_RE.finditer(before))
    assert haystack in NOISE * (t // len(NOISE) + 2), "the rest is a window of the noise"
  pos = np.asarray(pos)
  assert pos.min() < 0.05 and pos.max() > 0.9 and 0.35 < pos.mean() < 0.65


def test_babi_solve_semantics():
  tail = " The grass is green. Where is the milk? The milk is in the "
  story = "Mary went to the kitchen. Mary got the milk. Mary journeyed to the garden."
  assert data.babi_solve(story + tail) == "garden"  # carried along
  assert data.babi_solve(story + " Mary dropped the milk. Mary moved to the office." + tail) == (
    "garden"  # stays where it was dropped
  )
  assert data.babi_solve("John went to the office. Where is John? John is in the ") == "office"
  assert data.babi_solve("John went to the office. Where is Mary? Mary is in the ") is None
  with pytest.raises(ValueError, match="^prompt:"):
    data.babi_solve("Mary went to the kitchen.")


@pytest.mark.skipif(not TINY_SHAKESPEARE.exists(), reason="Tiny Shakespeare not available")
@pytest.mark.parametrize("task", ["qa1", "qa2"])
def test_tiny_shakespeare_filler(task):
  text = TINY_SHAKESPEARE.read_text()
  out = data.babi(3, 12, 2000, task, num_facts=6, filler="corpus", corpus_text=text)
  flat = " ".join(text.split())
  for i in range(12):
    prompt, _, _ = _check(out, i, task, 6)
    haystack = FACT_UNIT_RE.sub("\n", prompt[: QUESTION_RE.search(prompt).start()])
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", haystack) if s.strip()]
    assert sum(s.strip() in flat for s in sentences) >= 0.9 * len(sentences)  # Shakespeare's


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    (dict(task="qa3"), "task"),
    (dict(task="qa2", num_facts=1), "num_facts"),
    (dict(num_facts=0), "num_facts"),
    (dict(context_len=200), "context_len"),
    (dict(filler="pg19"), "filler"),
    (dict(filler="corpus"), "corpus_text"),
    (dict(filler="corpus", corpus_text="Mary went to the kitchen. John is here."), "corpus_text"),
    (dict(n=0), "n"),
    (dict(seed=1.5), "seed"),
  ],
)
def test_bad_arguments(kwargs, name):
  args = dict(seed=0, n=2, context_len=600, task="qa1", num_facts=5) | kwargs
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.babi(**args)


# ------------------------------------------------------------------------------------------------
# tfds builder


def _rows(arrays) -> list[bytes]:
  keys = ("inputs", "targets", "mask")
  return sorted(
    b"".join(np.asarray(arrays[k][i]).tobytes() for k in keys) for i in range(len(arrays["inputs"]))
  )


def _read_all(source) -> dict[str, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def test_builder_round_trip(data_dir):
  options = dict(task="qa2", context_len=300, num_facts=4, train_size=10, test_size=4, seed=1)
  builder = data.prepare("babi", data_dir, **options)
  cfg = builder.builder_config
  assert builder.data_path == data_dir / "babi" / cfg.name / "1.0.0"
  assert cfg.name == "qa2_T300_F4_noise_n10-4_s1"
  sources = builder.as_data_source()
  stored = {}
  for split, seed, n in [("train", 2, 10), ("test", 3, 4)]:
    stored[split] = _read_all(sources[split])
    assert set(stored[split]) == {"inputs", "targets", "mask"}
    assert stored[split]["inputs"].shape == (n, 300)
    assert _rows(stored[split]) == _rows(data.babi(seed, n, 300, "qa2", num_facts=4))
  assert not set(_rows(stored["train"])) & set(_rows(stored["test"]))
  for key, value in [("task", "qa1"), ("num_facts", 3), ("context_len", 301)]:
    assert data.babi_config(**(options | {key: value})).name != cfg.name


@pytest.mark.parametrize(
  ("options", "name"),
  [
    (dict(task="qa9"), "task"),
    (dict(num_facts=100), "context_len"),
    (dict(filler="corpus"), "corpus_file"),
    (dict(seed=-2), "seed"),
    (dict(kind="pk"), "options"),
  ],
)
def test_builder_bad_options(tmp_path, options, name):
  with pytest.raises(ValueError, match=rf"^{name}:"):
    data.prepare("babi", tmp_path, **(dict(context_len=300, train_size=4, test_size=2) | options))
