"""The run's ``ml_collections.ConfigDict`` turned, once, into typed frozen dataclasses.

``settings_from_config(config)`` checks every key: an unknown key (a typo such as
``train.stpes``) is a ``ValueError`` naming its dotted path and the known keys, before anything
runs. Layers never see the config; the loop passes each part where it is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
  name: str = "miras_lm"  # a name from miras_jax.models.names()
  size: str = "tiny"  # tiny | 170m | 340m | 760m | 1.3b
  overrides: dict = dataclasses.field(default_factory=dict)  # fields of the model's config class


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
_FREE_FORM = {("model", "overrides"), ("data", "options")}  # checked by the model / the builder


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
  """``config``: a ConfigDict (or dict) with sections model, data, optimizer, train, mesh."""
  raw = _plain(config)
  unknown = sorted(set(raw) - set(_SECTIONS))
  if unknown:
    raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(_SECTIONS)}")
  parts = {}
  for section, cls in _SECTIONS.items():
    values = dict(raw.get(section, {}))
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - known)
    if bad:
      raise ValueError(
        f"unknown config key(s) {', '.join(f'{section}.{k}' for k in bad)}; "
        f"known in {section}: {sorted(known)}"
      )
    for name in values:
      if (section, name) in _FREE_FORM:
        values[name] = dict(values[name] or {})
    parts[section] = cls(**values)
  run = RunSettings(**parts)
  _check(run)
  return run


def _check(run: RunSettings) -> None:
  t = run.train
  for name in (
    "steps",
    "batch_size",
    "grad_accum",
    "log_every",
    "eval_batches",
    "keep_checkpoints",
  ):
    if getattr(t, name) < 1:
      raise ValueError(f"train.{name} must be >= 1; got {getattr(t, name)}")
  if t.batch_size % t.grad_accum:
    raise ValueError(
      f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum ({t.grad_accum})"
    )
  if t.checkpoint_every < 1:
    raise ValueError(f"train.checkpoint_every must be >= 1; got {t.checkpoint_every}")
  if run.optimizer.name not in ("adamw", "muon", "m3", "sgd"):
    raise ValueError(f"optimizer.name must be adamw, muon, m3 or sgd; got {run.optimizer.name!r}")
