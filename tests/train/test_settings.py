"""``miras_jax.train.settings``: every numeric field range-checked in one place with a one-line
error naming the field, the value and the allowed range; model overrides checked against the
model's config class; ``apply_overrides`` (the launcher's ``--config.PATH=VALUE``) typed and
checked."""

import dataclasses
import math

import pytest

from configs import mqar
from miras_jax.train import settings as S

# Per numeric field: a value just outside its range and one just inside (from the documented ranges:
# the field comments in settings.py and docs/training.md).
CASES = {
  "data.pack_len": (-1, 0),
  "optimizer.lr": (0.0, 1e-9),
  "optimizer.warmup_steps": (-1, 0),
  "optimizer.min_lr_ratio": (1.5, 1.0),
  "optimizer.weight_decay": (-1e-3, 0.0),
  "optimizer.b1": (1.0, 0.999),
  "optimizer.b2": (-0.1, 0.0),
  "optimizer.eps": (0.0, 1e-12),
  "optimizer.clip_norm": (-1.0, 0.0),
  "train.steps": (0, 1),
  "train.batch_size": (0, 1),
  "train.grad_accum": (0, 1),
  "train.seed": (-1, 0),
  "train.log_every": (0, 1),
  "train.eval_every": (-1, 0),
  "train.eval_batches": (0, 1),
  "train.checkpoint_every": (0, 1),
  "train.keep_checkpoints": (0, 1),
  "train.max_skipped": (-1, 0),
  "mesh.data": (-2, -1),
  "mesh.fsdp": (0, 1),
  "mesh.tensor": (0, 1),
}


def _config(**fields):
  """The MQAR config as plain dicts (a ConfigDict would refuse some wrong types itself)."""
  c = mqar.get_config().to_dict()
  for dotted, value in fields.items():
    section, name = dotted.split(".")
    c[section][name] = value
  return c


def test_every_numeric_field_has_a_range():
  numeric = {
    f"{section}.{f.name}"
    for section, cls in S._SECTIONS.items()
    for f in dataclasses.fields(cls)
    if f.type in ("int", "float")
  }
  assert numeric == set(S.RANGES) == set(CASES)


@pytest.mark.parametrize("dotted", sorted(CASES))
def test_out_of_range_values_are_one_line_errors(dotted):
  bad, good = CASES[dotted]
  if dotted in ("train.batch_size", "train.grad_accum"):
    S.settings_from_config(_config(**{"train.batch_size": good, "train.grad_accum": good}))
  elif dotted != "mesh.data":
    S.settings_from_config(_config(**{dotted: good}))
  with pytest.raises(S.ConfigError) as e:
    S.settings_from_config(_config(**{dotted: bad}))
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{dotted} = {bad!r}: must be"), message


@pytest.mark.parametrize("value", [math.nan, math.inf, "3e-3", True])
def test_non_numbers_and_non_finite_values_are_rejected(value):
  with pytest.raises(
    S.ConfigError, match=r"optimizer.lr = .*: must be a finite number in \(0, inf\)"
  ):
    S.settings_from_config(_config(**{"optimizer.lr": value}))


def test_integer_fields_reject_floats_and_choices_are_checked():
  with pytest.raises(S.ConfigError, match=r"train.steps = 10.0: must be an int in \[1, inf\)"):
    S.settings_from_config(_config(**{"train.steps": 10.0}))
  with pytest.raises(
    S.ConfigError, match="train.on_nonfinite = 'ignore': must be one of stop, skip"
  ):
    S.settings_from_config(_config(**{"train.on_nonfinite": "ignore"}))
  with pytest.raises(S.ConfigError, match="optimizer.name = 'adam': must be one of adamw"):
    S.settings_from_config(_config(**{"optimizer.name": "adam"}))
  with pytest.raises(S.ConfigError, match="mesh.data = 0"):
    S.settings_from_config(_config(**{"mesh.data": 0}))


def test_model_overrides_are_checked_against_the_model_config():
  c = mqar.get_config()
  c.model.overrides.max_lr = 5.0
  with pytest.raises(S.ConfigError, match=r"max_lr must be in \[0, 1\].*got 5.0"):
    S.settings_from_config(c)
  c = mqar.get_config()
  with c.unlocked():
    c.model.overrides.segment = 4  # a field of titans_mac, not of miras_lm
  with pytest.raises(S.ConfigError, match="segment not a field of MirasLMConfig.*fields: .*max_lr"):
    S.settings_from_config(c)
  c = mqar.get_config()
  c.model.name = "mamba"
  with pytest.raises(S.ConfigError, match="model.name = 'mamba': must be one of .*titans_mac"):
    S.settings_from_config(c)


def test_a_memory_presets_name_is_miras_lm_with_that_preset():
  c = mqar.get_config()
  c.model.name = "yaad"
  del c.model.overrides["preset"]
  run = S.settings_from_config(c)
  assert run.model.name == "miras_lm" and run.model.overrides["preset"] == "yaad"
  assert S.model_config(run.model).preset == "yaad"
  S.apply_overrides(c, [("model.overrides.delta_init", "7.0")])  # typed by MirasLMConfig's field
  assert c.model.overrides.delta_init == 7.0
  c.model.overrides.preset = "moneta"
  with pytest.raises(S.ConfigError, match="names a memory preset, and model.overrides.preset"):
    S.settings_from_config(c)
  c = mqar.get_config()
  c.model.name = "softmax_attention"  # a preset, but not a memory the block writes
  with pytest.raises(S.ConfigError, match="must be one of .*or a memory preset"):
    S.settings_from_config(c)


def test_preset_defaults_reach_the_preset_the_model_runs():
  table = {"titans_lmm": (("grad_clip", 2.0), ("momentum", False)), "yaad": (("grad_clip", 3.0),)}
  mac = S.ModelSettings("titans_mac", "tiny", {}, {}, table)  # titans_lmm by default
  assert S.model_fields(mac)["preset_options"] == (("grad_clip", 2.0), ("momentum", False))
  own = S.ModelSettings("yaad", "tiny", {"preset_options": (("grad_clip", 9.0),)}, {}, table)
  assert S.model_fields(own)["preset_options"] == (("grad_clip", 9.0),)  # the given one wins
  gdn = S.ModelSettings("gated_delta_net", "tiny", {}, {}, table)
  assert "preset_options" not in S.model_fields(gdn)
  assert "preset_options" not in S.model_fields(
    S.ModelSettings("transformer", "tiny", {}, {}, table)
  )
  assert S.model_config(mac).preset_options == (("grad_clip", 2.0), ("momentum", False))


def test_apply_overrides_types_values_and_sets_undeclared_model_fields():
  c = mqar.get_config("titans_mac")
  S.apply_overrides(
    c,
    [
      ("train.steps", "12"),
      ("optimizer.lr", "1"),  # an int text for a float field
      ("train.async_checkpoints", "false"),
      ("data.options.num_pairs", "4"),
      ("model.overrides.segment", "4"),  # not declared by the config file
      ("model.overrides.max_lr", "0.05"),
      ("model.overrides.channel_gates", "lr,delta"),
      ("model.overrides.preset_options", "(('momentum', True),)"),
    ],
  )
  assert c.train.steps == 12 and c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float)
  assert c.train.async_checkpoints is False and c.data.options.num_pairs == 4
  o = c.model.overrides
  assert (o.segment, o.max_lr, o.channel_gates) == (4, 0.05, ("lr", "delta"))
  assert o.preset_options == (("momentum", True),)
  run = S.settings_from_config(c)
  assert S.model_config(run.model).segment == 4


@pytest.mark.parametrize(
  "path, text, match",
  [
    ("train.stpes", "3", "unknown key 'stpes'; known here: .*steps"),
    ("trian.steps", "3", "unknown key 'trian'"),
    ("train.steps", "abc", "--config.train.steps=abc: expected int"),
    ("train.steps", "2.5", "expected int"),
    ("model.overrides.maxlr", "0.1", "maxlr: not a field of TitansMACConfig.*max_lr"),
    ("model.overrides.segment", "four", "segment=four: expected int"),
  ],
)
def test_apply_overrides_rejects_unknown_keys_and_bad_types(path, text, match):
  with pytest.raises(S.ConfigError, match=match):
    S.apply_overrides(mqar.get_config("titans_mac"), [(path, text)])


def test_model_defaults_apply_only_where_the_model_has_the_field():
  # configs/mqar.py sets chunk_size 16 and gate_rank 16 as defaults, not per model name
  mac = S.model_config(S.settings_from_config(mqar.get_config("titans_mac")).model)
  assert (mac.chunk_size, mac.gate_rank) == (16, 16)
  hope = S.model_config(S.settings_from_config(mqar.get_config("hope")).model)
  assert hope.chunk_size == 8 and not hasattr(hope, "gate_rank")  # the override wins
  transformer = S.model_config(S.settings_from_config(mqar.get_config("transformer")).model)
  assert not hasattr(transformer, "chunk_size")
  model = S.ModelSettings("miras_lm", "tiny", {"gate_rank": 4}, {"gate_rank": 16, "segment": 2})
  assert S.model_config(model).gate_rank == 4  # overrides win; segment is not a miras_lm field
