"""Tasks by name. Each task module (``synthetic``, ``needle``, ``babi``, ``text_corpus``) registers,
where it is defined, the tfds dataset ``prepare`` builds from its options and the evaluations the
runner scores, so a new task is one module: its generator, its builder config and its evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A local tfds dataset: ``prepare(name, data_dir, **options)`` builds ``builder`` with the
  config ``make_config(**options)`` (``config_class`` lists the option names)."""

  name: str
  builder: type  # a tfds GeneratorBasedBuilder
  config_class: type  # its BuilderConfig dataclass; the fields beyond tfds' are the options
  make_config: Callable[..., Any]  # options -> a validated config
  required: dict = dataclasses.field(default_factory=dict)  # option without a default -> what it is


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """An evaluation: ``examples(options, seed, n, length)`` gives ``{inputs, targets, mask}`` arrays
  ``[n, length]`` (``options``: the run's data options), scored by token accuracy and exact match
  on the masked answer tokens."""

  name: str
  examples: Callable[[dict, int, int, int], dict]
  byte_level: bool  # its tokens are bytes: the model needs a vocabulary of at least 256
  description: str  # one line for the runner's task list


DATASETS: dict[str, Dataset] = {}
EVAL_TASKS: dict[str, EvalTask] = {}


def _origin(entry) -> str:
  return getattr(entry, "builder", getattr(entry, "examples", None)).__module__


def _add(table: dict, entry) -> None:
  """Adds ``entry``; the same name from another module is an error (a module imported again, e.g.
  reloaded, replaces its own entry)."""
  known = table.get(entry.name)
  if known is not None and _origin(known) != _origin(entry):
    raise ValueError(f"task {entry.name!r} is already registered by {_origin(known)}")
  table[entry.name] = entry


def register_dataset(name: str, builder: type, config_class: type, make_config, required=None):
  """Makes ``prepare(name, …)`` build ``builder``; returns the entry."""
  entry = Dataset(name, builder, config_class, make_config, dict(required or {}))
  _add(DATASETS, entry)
  return entry


def register_eval_task(name: str, examples, *, byte_level: bool, description: str):
  """Makes ``eval.evaluate(tasks=(name,))`` score ``examples``; returns the entry."""
  entry = EvalTask(name, examples, byte_level, description)
  _add(EVAL_TASKS, entry)
  return entry
