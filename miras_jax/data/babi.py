"""bAbI qa1/qa2-style tasks with the facts spread through filler text (BABILong style), byte-level:
the numpy generator ``babi``, its tfds dataset (``prepare("babi", …)``) and the evaluations
``babi_qa1`` and ``babi_qa2`` (registered in ``miras_jax.data.registry``).

One example is a byte string of exactly ``context_len`` tokens (``ByteTokenizer`` ids, vocab 256)::

  prompt = haystack[:p1] + fact1 + haystack[p1:p2] + fact2 + … + factK + haystack[pK:] + question
  seq    = prompt + answer                                          (len(seq) == context_len)

The haystack is the filler of ``miras_jax.data.needle`` (``"noise"``: RULER's repeated sentences;
``"corpus"``: sentences of ``corpus_text``, leaving out any sentence that mentions one of the people
or contains "Where is"), a window ending at a sentence end, exactly as long as needed. The ``K =
num_facts`` facts keep their story order and go to the sentence boundaries nearest to ``K`` sorted
uniform fractions of the haystack (several facts may share a boundary; they are then consecutive).

**World.** People ``Mary, John, Daniel, Sandra``; locations ``bathroom, bedroom, garden, hallway,
kitchen, office``; objects (qa2) ``apple, football, milk``. Each fact is one sentence followed by a
space:

- move: ``"{person} {went to|journeyed to|travelled to|moved to|went back to} the {location}."``
- grab (qa2): ``"{person} {picked up|got|grabbed|took} the {object}."``
- drop (qa2): ``"{person} {dropped|put down|discarded|left} the {object}."``

**Semantics** (the simulator, ``babi_solve``; facts are applied in order):

- move ``p l``: ``p`` is now in ``l`` (the objects ``p`` holds go along with ``p``);
- grab ``p o``: ``p`` now holds ``o``;
- drop ``p o``: ``o`` now lies in ``p``'s current location and nobody holds it;
- "Where is ``p``?" is ``p``'s location after the last fact; "Where is the ``o``?" is the current
  location of its holder if someone holds it, else the location where it was last dropped.

The generator only writes stories in which every question has an answer and every action is
physically consistent: the first mention of a person is a move (nobody is anywhere before); moves
go to a different location; ``p`` grabs ``o`` only when nobody holds ``o`` and ``o`` is either not
placed yet or lies in ``p``'s location; ``p`` drops only what ``p`` holds. qa1 stories are moves only
and ask about a person who moved; qa2 stories mix moves (weight 0.5), grabs (0.3) and drops (0.2)
among the possible actions, contain at least one grab (the last fact is forced to be a grab if none
happened earlier) and ask about an object that has been grabbed.

**Question and answer.** qa1: ``"Where is {person}? {person} is in the "``; qa2: ``"Where is the
{object}? The {object} is in the "``; the answer is the location word. The question never contains
the answer (it names a person or an object, never a location).

Training format (as ``miras_jax.data.synthetic.mqar``): ``inputs = seq``, ``targets[t] = inputs[t +
1]`` (``targets[T-1] = EOS_ID = 0``), and ``mask`` is True exactly at the ``A = len(answer)``
positions ``T-A-1 … T-2``, whose targets are the answer bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator

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
from miras_jax.data.needle import _check_choice, _check_context, _check_int, _Filler, _row
from miras_jax.data.registry import register_dataset, register_eval_task

__all__ = [
  "BABI_LOCATIONS",
  "BABI_OBJECTS",
  "BABI_PEOPLE",
  "BABI_TASKS",
  "babi",
  "babi_min_context_len",
  "babi_solve",
]

BABI_TASKS = ("qa1", "qa2")
BABI_PEOPLE = ("Mary", "John", "Daniel", "Sandra")
BABI_LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
BABI_OBJECTS = ("apple", "football", "milk")
_VERBS = {
  "move": ("went to", "journeyed to", "travelled to", "moved to", "went back to"),
  "grab": ("picked up", "got", "grabbed", "took"),
  "drop": ("dropped", "put down", "discarded", "left"),
}
_WEIGHTS = {"move": 0.5, "grab": 0.3, "drop": 0.2}
_MIN_FACTS = {"qa1": 1, "qa2": 2}
_BABI_EXCLUDE = re.compile(r"\b(?:" + "|".join(BABI_PEOPLE) + r")\b|\bWhere is\b", re.IGNORECASE)


def _fact_text(action: str, person: str, verb: str, arg: str) -> str:
  return f"{person} {verb} the {arg}."


def _question(task: str, target: str) -> str:
  if task == "qa1":
    return f"Where is {target}? {target} is in the "
  return f"Where is the {target}? The {target} is in the "


class _World:
  """The state of a story: where each person is, who holds each object, where each object lies."""

  def __init__(self):
    self.place: dict[str, str] = {}  # person -> location
    self.holder: dict[str, str] = {}  # object -> person holding it
    self.lies: dict[str, str] = {}  # object -> location where it was dropped (if not held)

  def apply(self, action: str, person: str, arg: str) -> None:
    if action == "move":
      self.place[person] = arg
    elif action == "grab":
      self.holder[arg] = person
      self.lies.pop(arg, None)
    else:  # drop
      del self.holder[arg]
      self.lies[arg] = self.place[person]

  def where(self, target: str) -> str | None:
    """Location of a person or an object (``None`` if unknown)."""
    if target in self.holder:
      return self.place[self.holder[target]]
    return self.place.get(target, self.lies.get(target))

  def actions(self, task: str) -> dict[str, list[tuple[str, str]]]:
    """The consistent ``(person, arg)`` of each action type in this state."""
    out = {"move": [(p, l) for p in BABI_PEOPLE for l in BABI_LOCATIONS if self.place.get(p) != l]}
    if task == "qa2":
      out["grab"] = [
        (p, o)
        for p in BABI_PEOPLE
        if p in self.place
        for o in BABI_OBJECTS
        if o not in self.holder and self.lies.get(o, self.place[p]) == self.place[p]
      ]
      out["drop"] = [(p, o) for o, p in sorted(self.holder.items())]
    return out


def _story(rng: np.random.Generator, task: str, num_facts: int):
  """``(facts, question, answer)``: facts as sentences, drawn by the rules of the module doc."""
  world, facts, grabbed = _World(), [], []
  for i in range(num_facts):
    options = {a: c for a, c in world.actions(task).items() if c}
    if task == "qa2" and i == num_facts - 1 and not grabbed:
      options = {"grab": options["grab"]}  # someone is somewhere (fact 0 was a move): never empty
    names = sorted(options)
    w = np.array([_WEIGHTS[a] for a in names])
    action = names[rng.choice(len(names), p=w / w.sum())]
    person, arg = options[action][rng.integers(len(options[action]))]
    verb = _VERBS[action][rng.integers(len(_VERBS[action]))]
    world.apply(action, person, arg)
    if action == "grab" and arg not in grabbed:
      grabbed.append(arg)
    facts.append(_fact_text(action, person, verb, arg))
  candidates = sorted(world.place) if task == "qa1" else grabbed
  target = candidates[rng.integers(len(candidates))]
  return facts, _question(task, target), world.where(target)


def babi_min_context_len(task: str, num_facts: int) -> int:
  """The smallest ``context_len`` that ``babi`` accepts: ``num_facts`` longest facts, the longest
  question and answer, and no filler.

  Raises:
    ValueError: unknown ``task`` or ``num_facts`` below the task's minimum (1 for qa1, 2 for qa2).
  """
  _check_choice("task", task, BABI_TASKS)
  num_facts = _check_int("num_facts", num_facts, _MIN_FACTS[task])
  person = max(BABI_PEOPLE, key=len)
  place = max(BABI_LOCATIONS, key=len)
  actions = ("move",) if task == "qa1" else ("move", "grab", "drop")
  fact = max(
    len(_fact_text(a, person, v, max(BABI_LOCATIONS if a == "move" else BABI_OBJECTS, key=len)))
    for a in actions
    for v in _VERBS[a]
  )
  question = len(_question(task, person if task == "qa1" else max(BABI_OBJECTS, key=len)))
  return num_facts * (fact + 1) + question + len(place)


def _babi_examples(seed: int, n: int, context_len: int, task: str, num_facts: int, filler: _Filler):
  """Yields ``(row, answer)`` for ``n`` examples, one ``default_rng(seed)`` in turn."""
  rng = np.random.default_rng(seed)
  for _ in range(n):
    facts, question, answer = _story(rng, task, num_facts)
    units = [(f + " ").encode() for f in facts]
    size = context_len - sum(map(len, units)) - len(question) - len(answer)
    hay, start = filler.window(rng, size)
    cuts = filler.snap(start, size, np.sort(rng.random(num_facts)))
    pieces, prev = [], 0
    for cut, unit in zip(cuts.tolist(), units, strict=True):
      pieces += [hay[prev:cut], unit]
      prev = cut
    seq = b"".join(pieces) + hay[prev:] + question.encode() + answer.encode()
    yield _row(seq, len(answer)), answer


def babi(
  seed: int,
  n: int,
  context_len: int,
  task: str = "qa1",
  num_facts: int = 10,
  filler: str = "noise",
  corpus_text: str | None = None,
) -> dict[str, np.ndarray]:
  """bAbI qa1/qa2-style examples with facts spread through filler, deterministic by ``seed``.

  See the module docstring for the layout, the templates and the exact semantics. Examples are drawn
  one after the other from ``np.random.default_rng(seed)``, so the first ``k`` rows of ``n > k``
  rows equal ``babi(seed, k, …)``.

  Args:
    seed: non-negative integer seed; equal arguments give equal outputs.
    n: number of examples (``>= 1``).
    context_len: ``T``, the exact length of prompt + answer in bytes; at least
      ``babi_min_context_len(task, num_facts)`` (the rest is filler).
    task: ``"qa1"`` (single supporting fact: where is a person) or ``"qa2"`` (two supporting facts:
      where is an object).
    num_facts: facts per story (``>= 1`` for qa1, ``>= 2`` for qa2).
    filler: ``"noise"`` (RULER's repeated sentences) or ``"corpus"`` (sentences of ``corpus_text``).
    corpus_text: the corpus (``str`` or UTF-8 ``bytes``, e.g. Tiny Shakespeare) for
      ``filler="corpus"``; must be ``None`` for ``"noise"``.

  Returns:
    A dict of ``n`` rows:

    - ``"inputs"``: int32 ``[n, T]``, the sequence (prompt then answer bytes);
    - ``"targets"``: int32 ``[n, T]``, next-token targets (``inputs`` shifted left, last ``EOS_ID``);
    - ``"mask"``: bool ``[n, T]``, True exactly at the positions whose target is an answer byte;
    - ``"answer"``: object ``[n]`` of ``str``, the answers (location words, the last bytes of
      ``inputs``).

    Drop ``"answer"`` before handing the dict to jitted code such as the training loop; datasets
    built by ``prepare("babi", …)`` store ``inputs``, ``targets`` and ``mask`` only.

  Raises:
    ValueError: an argument is out of range or of the wrong type (the message names it).
  """
  seed = _check_int("seed", seed, 0)
  n = _check_int("n", n, 1)
  task = _check_choice("task", task, BABI_TASKS)
  num_facts = _check_int("num_facts", num_facts, _MIN_FACTS[task])
  context_len = _check_context(
    context_len, babi_min_context_len(task, num_facts), f"{num_facts} facts"
  )
  stream, _ = _Filler.make(filler, corpus_text, exclude=_BABI_EXCLUDE)
  rows, answers = [], []
  for row, answer in _babi_examples(seed, n, context_len, task, num_facts, stream):
    rows.append(row)
    answers.append(answer)
  out = {k: np.stack([r[k] for r in rows]) for k in ("inputs", "targets", "mask")}
  out["answer"] = np.empty(n, dtype=object)
  out["answer"][:] = answers
  return out


_FACT_RE = re.compile(
  r"\b(?P<person>"
  + "|".join(BABI_PEOPLE)
  + r") (?P<verb>"
  + "|".join(v for vs in _VERBS.values() for v in sorted(vs, key=len, reverse=True))
  + r") the (?P<arg>\w+)\."
)
_VERB_ACTION = {v: a for a, vs in _VERBS.items() for v in vs}


def babi_solve(prompt: str) -> str | None:
  """Answers a ``babi`` prompt: parses its facts and final question, runs the simulator.

  ``prompt`` is the decoded prompt (everything before the answer, i.e. ending with ``"… is in the
  "``), e.g. ``ByteTokenizer().decode(inputs[:T - len(answer)])``. Facts are the sentences matching
  the templates of the module docstring, applied in order of appearance; the question is the last
  ``"Where is …?"``.

  Returns:
    The location the semantics of the module docstring give, or ``None`` if the question's person or
    object has no known location.

  Raises:
    ValueError: ``prompt`` is not a ``str`` or has no question.
  """
  if not isinstance(prompt, str):
    raise ValueError(f"prompt: expected str, got {type(prompt).__name__}")
  questions = re.findall(r"Where is (?:the )?(\w+)\?", prompt)
  if not questions:
    raise ValueError("prompt: expected a question 'Where is …?', found none")
  world = _World()
  for m in _FACT_RE.finditer(prompt):
    action, person, arg = _VERB_ACTION[m["verb"]], m["person"], m["arg"]
    if action == "grab" and (person not in world.place or arg in world.holder):
      continue  # inconsistent (never generated): ignored
    if action == "drop" and world.holder.get(arg) != person:
      continue
    world.apply(action, person, arg)
  return world.where(questions[-1])


# ------------------------------------------------------------------------------------------------
# The tfds dataset and the evaluations


@dataclasses.dataclass(kw_only=True)
class BabiConfig(FillerConfig):
  """Options of ``BabiBuilder`` (see ``miras_jax.data.babi.babi`` for their meaning): the shared
  ``FillerConfig`` fields, the task and the number of facts. Split ``train`` is ``babi(2 * seed,
  train_size, …)`` and ``test`` is ``babi(2 * seed + 1, test_size, …)``.
  """

  task: str = "qa1"
  num_facts: int = 10


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
  tag, shared = filler_options(filler, corpus_file, train_size, test_size, seed)
  path = shared["corpus_file"]
  babi(2 * seed, 1, context_len, task, num_facts, filler, corpus_text(path))
  return BabiConfig(
    name=f"{task}_T{context_len}_F{num_facts}_{tag}_n{train_size}-{test_size}_s{seed}",
    version=VERSION,
    description=f"bAbI: task={task}, context_len={context_len}, num_facts={num_facts}, "
    f"filler={filler}, corpus_file={path}, train_size={train_size}, test_size={test_size}, "
    f"seed={seed}",
    task=task,
    context_len=int(context_len),
    num_facts=int(num_facts),
    **shared,
  )


class BabiBuilder(TaskBuilder, skip_registration=True):
  """bAbI qa1/qa2 facts in filler (BABILong style) as a tfds dataset (splits ``train``, ``test``).

  Each example: ``inputs`` int32 ``[context_len]``, ``targets`` int32 ``[context_len]``, ``mask``
  bool ``[context_len]`` — one row of ``miras_jax.data.babi.babi`` without its ``answer``. Examples
  are generated one at a time. Build it with ``prepare("babi", data_dir, **options)``.
  """

  name = "babi"
  config_class = BabiConfig
  config_function = "babi_config"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.checked_config()
    return task_info(
      self, cfg.context_len, "bAbI qa1/qa2 facts spread through filler (miras_jax.data.babi.babi)."
    )

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    cfg = self.builder_config
    filler, _ = _Filler.make(cfg.filler, corpus_text(cfg.corpus_file), exclude=_BABI_EXCLUDE)
    examples = _babi_examples(seed, n, cfg.context_len, cfg.task, cfg.num_facts, filler)
    for i, (row, _) in enumerate(examples):
      yield i, row


register_dataset("babi", BabiBuilder, BabiConfig, babi_config)
register_eval_task(
  "babi_qa1",
  lambda options, seed, n, length: babi(seed, n, length, "qa1"),
  byte_level=True,
  description="bAbI qa1-style: where is a person, facts spread through filler",
)
register_eval_task(
  "babi_qa2",
  lambda options, seed, n, length: babi(seed, n, length, "qa2"),
  byte_level=True,
  description="bAbI qa2-style: where is an object someone carried",
)
