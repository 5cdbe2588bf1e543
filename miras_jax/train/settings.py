"""The run's ``ml_collections.ConfigDict`` turned, once, into typed frozen dataclasses.

``settings_from_config(config)`` checks the whole run before anything runs, in one place: an
unknown key (a typo such as ``train.stpes``) names its dotted path and the known keys; every
numeric field is checked against its range in ``RANGES`` (type, finiteness and bounds); the model
overrides must be fields of the model's config class (an unknown one lists the valid fields) and
the model config they make is built once, so its own checks run too. Every failure is a
``ConfigError`` (a ``ValueError``) with a one-line message naming the field, the value and what is
allowed; ``experiments/train.py`` prints it and exits with status 2. Layers never see the config;
the loop passes each part where it is needed.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from typing import Any, NamedTuple

# Logical axis (parameter metadata, miras_jax.nn.layers) → mesh axis. ``embed`` is sharded over
# fsdp (ZeRO-3 style: each parameter's model-width dim), the wide dims over tensor.
DEFAULT_RULES = (
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  # a name from miras_jax.models.names(), or a parametric memory preset's (miras_lm with it;
  # models.resolve); settings_from_config stores the resolved name
  name: str = "miras_lm"
  size: str = "tiny"  # tiny | 170m | 340m | 760m | 1.3b
  overrides: dict = dataclasses.field(default_factory=dict)  # fields of the model's config class
  # fields set only where the model's config class has them (overrides win): a task's settings
  # for every memory model (e.g. chunk_size) without a list of model names
  defaults: dict = dataclasses.field(default_factory=dict)
  # preset → preset_options for the memory preset the model runs (its ``preset`` field), placed
  # before the overrides' own preset_options (which win by name): options per memory, as data
  preset_defaults: dict = dataclasses.field(default_factory=dict)

  def resolved(self) -> ModelSettings:
    """These settings with a preset's name as model name turned into ``miras_lm`` + ``preset``."""
    from miras_jax import models

    try:
      name, preset = models.resolve(self.name)
    except ValueError as e:
      raise _unknown_model(e) from e
    if preset is None:
      return self
    if "preset" in self.overrides and self.overrides["preset"] != preset:
      raise ConfigError(
        f"model.name = {self.name!r} names a memory preset, and model.overrides.preset = "
        f"{self.overrides['preset']!r} another one: set one of them"
      )
    overrides = {"preset": preset, **self.overrides}
    return dataclasses.replace(self, name=name, overrides=overrides)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  name: str = "mqar"  # mqar | text_corpus | a tfds catalog name prepared in data_dir
  data_dir: str = ""  # tfds data dir ("" = WORKDIR/tfds)
  options: dict = dataclasses.field(
    default_factory=dict
  )  # builder options (miras_jax.data.prepare)
  train_split: str = "train"  # split to train on
  eval_split: str = "test"  # held-out split to evaluate on
  pack_len: int = 0  # text: tokens per packed training window (0 = examples are fixed-length)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  name: str = "adamw"  # adamw | muon | m3 | sgd
  lr: float = 3e-3  # peak learning rate
  warmup_steps: int = 100  # linear warmup from 0 to lr
  min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio at the last step
  weight_decay: float = 0.1  # decoupled weight decay (not on norms' scales and biases: rank < 2)
  b1: float = 0.9  # Adam β1 (Muon: the momentum β)
  b2: float = 0.95  # Adam β2
  eps: float = 1e-8  # Adam ε
  clip_norm: float = 1.0  # global gradient-norm clipping (0 = off)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  steps: int = 1000  # optimizer steps
  batch_size: int = 32  # global batch (sequences per optimizer step, all processes together)
  grad_accum: int = 1  # micro-batches per step (batch_size must be divisible by it)
  seed: int = 0  # parameter init, data order
  log_every: int = 10  # steps between metric lines
  eval_every: int = 200  # steps between evaluations (0 = only at the end)
  eval_batches: int = 4  # batches per evaluation
  checkpoint_every: int = 200  # steps between checkpoints (and one at the end)
  keep_checkpoints: int = 3  # checkpoints kept on disk
  async_checkpoints: bool = True  # write checkpoints in the background
  on_nonfinite: str = "stop"  # a non-finite loss/gradient: stop (status "diverged") | skip the step
  max_skipped: int = 10  # on_nonfinite="skip": more skipped steps than this stops the run


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  data: int = -1  # data-parallel size (-1: the devices left over by fsdp and tensor)
  fsdp: int = 1  # parameter-sharded data parallelism
  tensor: int = 1  # tensor (model) parallelism
  rules: tuple = DEFAULT_RULES  # (logical axis, mesh axis) pairs


@dataclasses.dataclass(frozen=True)
class RunSettings:
  model: ModelSettings
  data: DataSettings
  optimizer: OptimizerSettings
  train: TrainSettings
  mesh: MeshSettings


_SECTIONS = {
  "model": ModelSettings,
  "data": DataSettings,
  "optimizer": OptimizerSettings,
  "train": TrainSettings,
  "mesh": MeshSettings,
}
_FREE_FORM = {
  ("model", "overrides"),
  ("model", "defaults"),
  ("model", "preset_defaults"),
  ("data", "options"),
}  # checked by the model / the builder


class ConfigError(ValueError):
  """A user's config is wrong: the message is one line naming the field, value and allowed range."""


class Range(NamedTuple):
  """Allowed values of a numeric field: ``lo``/``hi`` bounds (None: unbounded), open or closed."""

  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False  # an int (not a bool, not a float)

  def describe(self) -> str:
    kind = "an int" if self.integer else "a finite number"
    if self.lo is None and self.hi is None:
      return kind
    lo = "-inf" if self.lo is None else f"{self.lo:g}"
    hi = "inf" if self.hi is None else f"{self.hi:g}"
    left = "(" if self.lo_open or self.lo is None else "["
    right = ")" if self.hi_open or self.hi is None else "]"
    return f"{kind} in {left}{lo}, {hi}{right}"

  def admits(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
      return False
    if self.integer and not isinstance(value, int):
      return False
    if not math.isfinite(value):
      return False
    if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
      return False
    return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


_COUNT = Range(1, integer=True)  # a positive count
_NONNEG_INT = Range(0, integer=True)
_FRACTION_OPEN = Range(0, 1, hi_open=True)  # [0, 1)

# The range of every numeric field of the run settings (``section.field``), checked in one place.
RANGES = {
  "data.pack_len": _NONNEG_INT,
  "optimizer.lr": Range(0, lo_open=True),
  "optimizer.warmup_steps": _NONNEG_INT,
  "optimizer.min_lr_ratio": Range(0, 1),
  "optimizer.weight_decay": Range(0),
  "optimizer.b1": _FRACTION_OPEN,
  "optimizer.b2": _FRACTION_OPEN,
  "optimizer.eps": Range(0, lo_open=True),
  "optimizer.clip_norm": Range(0),
  "train.steps": _COUNT,
  "train.batch_size": _COUNT,
  "train.grad_accum": _COUNT,
  "train.seed": _NONNEG_INT,
  "train.log_every": _COUNT,
  "train.eval_every": _NONNEG_INT,
  "train.eval_batches": _COUNT,
  "train.checkpoint_every": _COUNT,
  "train.keep_checkpoints": _COUNT,
  "train.max_skipped": _NONNEG_INT,
  "mesh.data": Range(-1, integer=True),  # -1, or a size >= 1 (0 is rejected below)
  "mesh.fsdp": _COUNT,
  "mesh.tensor": _COUNT,
}
# Fields that name one of a few choices.
CHOICES = {
  "optimizer.name": ("adamw", "muon", "m3", "sgd"),
  "train.on_nonfinite": ("stop", "skip"),
}


def _plain(value: Any) -> Any:
  """ConfigDict / FieldReference → plain Python containers."""
  if hasattr(value, "to_dict"):
    return {k: _plain(v) for k, v in value.to_dict().items()}
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return tuple(_plain(v) for v in value)
  return value


def settings_from_config(config) -> RunSettings:
  """``config``: a ConfigDict (or dict) with sections model, data, optimizer, train, mesh.

  Raises:
    ConfigError: an unknown section, key or model field, or a value outside its range.
  """
  raw = _plain(config)
  unknown = sorted(set(raw) - set(_SECTIONS))
  if unknown:
    raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(_SECTIONS)}")
  parts = {}
  for section, cls in _SECTIONS.items():
    values = dict(raw.get(section, {}))
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - known)
    if bad:
      raise ConfigError(
        f"unknown config key(s) {', '.join(f'{section}.{k}' for k in bad)}; "
        f"known in {section}: {sorted(known)}"
      )
    for name in values:
      if (section, name) in _FREE_FORM:
        values[name] = dict(values[name] or {})
    parts[section] = cls(**values)
  parts["model"] = parts["model"].resolved()
  run = RunSettings(**parts)
  _check(run)
  model_config(run.model)
  return run


def model_config(model: ModelSettings):
  """The model's config (``models.config``) from ``model``, its errors as ``ConfigError``."""
  from miras_jax import models

  model = model.resolved()
  cls = _config_class(model.name)
  fields = sorted(f.name for f in dataclasses.fields(cls))
  unknown = sorted(set(model.overrides) - set(fields))
  if unknown:
    raise ConfigError(
      f"model.overrides: {', '.join(unknown)} not a field of {cls.__name__} "
      f"(model {model.name!r}); its fields: {', '.join(fields)}"
    )
  try:
    return models.config(model.name, model.size, **model_fields(model))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model.overrides ({model.name}, size {model.size}): {e}") from e


def model_fields(model: ModelSettings) -> dict:
  """The config fields ``model`` sets: its ``defaults`` that the model's config class has, then its
  ``overrides`` (which win); with ``preset_defaults`` for the preset it runs, that preset's options
  before the given ``preset_options`` (a given option of the same name wins)."""
  model = model.resolved()
  cls = _config_class(model.name)
  fields = {f.name for f in dataclasses.fields(cls)}
  given = {name: v for name, v in model.defaults.items() if name in fields}
  given.update(model.overrides)
  if "preset" in fields and model.preset_defaults:
    preset = given.get(
      "preset", next(f.default for f in dataclasses.fields(cls) if f.name == "preset")
    )
    table = tuple(tuple(p) for p in model.preset_defaults.get(preset, ()))
    if table:
      own = tuple(given.get("preset_options", ()))
      named = {k for k, _ in own}
      given["preset_options"] = tuple(p for p in table if p[0] not in named) + own
  return given


def _config_class(name: str) -> type:
  """The config dataclass of model ``name``; an unknown name is a ``ConfigError``."""
  from miras_jax import models

  try:
    return models.config_class(models.resolve(name)[0])
  except ValueError as e:
    raise _unknown_model(e) from e


def _unknown_model(error: ValueError) -> ConfigError:
  """``models.resolve``'s error for ``model.name`` as a ConfigError."""
  return ConfigError(f"model.name = {error}")


def _check(run: RunSettings) -> None:
  for dotted, allowed in RANGES.items():
    section, name = dotted.split(".")
    value = getattr(getattr(run, section), name)
    if not allowed.admits(value):
      raise ConfigError(f"{dotted} = {value!r}: must be {allowed.describe()}")
  for dotted, choices in CHOICES.items():
    section, name = dotted.split(".")
    value = getattr(getattr(run, section), name)
    if value not in choices:
      raise ConfigError(f"{dotted} = {value!r}: must be one of {', '.join(choices)}")
  if run.mesh.data == 0:
    raise ConfigError("mesh.data = 0: must be -1 (the devices left over) or a size >= 1")
  t = run.train
  if t.batch_size % t.grad_accum:
    raise ConfigError(
      f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum ({t.grad_accum})"
    )


_ASSIGNMENT = re.compile(r"--config\.([\w.]+)=(.*)", re.S)


def split_assignments(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """``argv`` without its ``--config.PATH=VALUE`` flags, and those as ``(PATH, VALUE)`` pairs for
  ``apply_overrides`` (the launchers parse the rest with absl)."""
  rest, assignments = [], []
  for arg in argv:
    match = _ASSIGNMENT.fullmatch(arg)
    if match:
      assignments.append((match[1], match[2]))
    else:
      rest.append(arg)
  return rest, assignments


def assignment_flags_parser(assignments: list):
  """A ``flags_parser`` for ``absl.app.run``: absl parses the command line without its
  ``--config.PATH=VALUE`` flags, which are appended to ``assignments`` for ``apply_overrides``
  (so that ``--config.model.overrides.FIELD`` may set any field of the model's config)."""
  import sys

  from absl import flags

  def parse(argv: list[str]) -> list[str]:
    rest, found = split_assignments(argv)
    assignments.extend(found)
    sys.argv[:] = rest  # config_flags also reads the overrides from sys.argv
    return flags.FLAGS(rest)

  return parse


def apply_overrides(config, assignments) -> None:
  """Sets ``(dotted path, text)`` pairs from ``--config.PATH=TEXT`` flags on the ConfigDict
  ``config``, each text parsed as the type of the value it replaces (Python literals: numbers,
  True/False, None, tuples; bare words are strings; ``a,b`` for a tuple of strings).

  ``model.overrides.NAME`` may set any field of the model's config class (``config.model.name``,
  after the other assignments), typed by that field; ``data.options.NAME`` may add a builder
  option. Everything else must already be in ``config``.

  Raises:
    ConfigError: an unknown key (the message lists the known ones) or a value of the wrong type.
  """
  model_fields = []
  with config.unlocked():
    for path, text in assignments:
      keys = path.split(".")
      if keys[:2] == ["model", "overrides"] and len(keys) == 3:
        model_fields.append((keys[2], text))
        continue
      node = config
      for i, key in enumerate(keys[:-1]):
        if not hasattr(node, "keys") or key not in node:
          raise ConfigError(f"--config.{path}: unknown key {'.'.join(keys[: i + 1])!r}")
        node = node[key]
      name = keys[-1]
      if not hasattr(node, "keys"):
        raise ConfigError(f"--config.{path}: {'.'.join(keys[:-1])} is not a section")
      if name not in node and keys[:-1] != ["data", "options"]:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"--config.{path}: unknown key {name!r}; known here: {known}")
      current = node[name] if name in node else None
      node[name] = _parse(text, _kind(current), f"--config.{path}")
    if model_fields:
      import ml_collections

      cls = _config_class(config.model.name)
      types = {f.name: f.type for f in dataclasses.fields(cls)}
      overrides = dict(config.model.overrides.to_dict() if config.model.overrides else {})
      for name, text in model_fields:
        if name not in types:
          raise ConfigError(
            f"--config.model.overrides.{name}: not a field of {cls.__name__} (model "
            f"{config.model.name!r}); its fields: {', '.join(sorted(types))}"
          )
        overrides[name] = _parse(text, str(types[name]), f"--config.model.overrides.{name}")
      config.model.overrides = ml_collections.ConfigDict(overrides)


def _kind(value: Any) -> str:
  """The type annotation text ``_parse`` checks a replacement of ``value`` against."""
  if value is None:
    return "Any"
  return type(value).__name__ if isinstance(value, bool | int | float | str | tuple) else "Any"


def _parse(text: str, kind: str, where: str) -> Any:
  """``text`` as a value of the annotated ``kind`` (``int``, ``float``, ``tuple | None``, …)."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  kinds = {k.strip() for k in kind.split("|")}
  if value is None and ("None" in kinds or "Any" in kinds):
    return None
  if "Any" in kinds:
    return value
  if "bool" in kinds:
    if isinstance(value, bool):
      return value
    if text.strip().lower() in ("true", "false"):
      return text.strip().lower() == "true"
  if "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
    return value
  if "float" in kinds and isinstance(value, int | float) and not isinstance(value, bool):
    return float(value)
  if "str" in kinds:
    return text
  if "tuple" in kinds:
    if isinstance(value, list | tuple):
      return _tuples(value)
    if isinstance(value, str):
      return tuple(part.strip() for part in value.split(",") if part.strip())
  raise ConfigError(f"{where}={text}: expected {kind.replace('|', 'or')}")


def _tuples(value):
  return tuple(_tuples(v) if isinstance(v, list | tuple) else v for v in value)
