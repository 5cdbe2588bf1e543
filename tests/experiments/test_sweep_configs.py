"""The sweeps' configs: numerical guards and the MQAR re-run at another lr."""

import pytest

import miras_jax as mj
from configs.sweeps import miras_models, mqar, needle


@pytest.mark.parametrize("preset", ["titans_lmm", "moneta", "yaad", "memora", "gated_delta_net"])
def test_guard_options_are_valid_preset_options(preset):
  options = dict(mqar.guard_options(preset))
  rule = mj.presets.get(preset, **options)  # every guard is an option the preset takes
  mlp = isinstance(rule.memory, mj.MLPMemory)
  assert (rule.grad_clip == mqar.INNER_CLIP) if mlp else (rule.grad_clip is None)
  if preset == "moneta":
    assert rule.retention.eps == mqar.LQ_EPS
  if preset == "memora":
    assert rule.retention.eps == mqar.KL_EPS


def test_linear_memories_keep_their_exact_form():
  assert mqar.guard_options("gated_delta_net") == ()
  assert "preset_options" not in needle.get_config("gated_delta_net").model.overrides


def test_mqar_rerun_at_another_lr():
  configs = dict(miras_models.get_config("lr=0.01").variants)
  base = dict(miras_models.get_config().variants)
  for name, c in configs.items():
    assert c.optimizer.lr == 1e-2
    assert c.model.overrides.get("mlp_hidden") == base[name].model.overrides.get("mlp_hidden")
  assert dict(configs["moneta"].model.overrides.preset_options) == dict(
    mqar.guard_options("moneta")
  )
  assert "preset_options" not in base["moneta"].model.overrides
  with pytest.raises(ValueError, match="lr= applies to the MQAR sweep only"):
    miras_models.get_config("s_niah_pk,lr=0.01")
  with pytest.raises(ValueError, match="unknown option; known: task, lr, clip"):
    miras_models.get_config("mqar,steps=3")


def test_with_inner_clip_replaces_only_the_clip():
  moneta = needle.get_config("moneta")
  looser = mqar.with_inner_clip(moneta, 10.0)
  assert dict(looser.model.overrides.preset_options) == {"grad_clip": 10.0, "eps": mqar.LQ_EPS}
  assert dict(moneta.model.overrides.preset_options)["grad_clip"] == mqar.INNER_CLIP  # a copy
  gdn = needle.get_config("gated_delta_net")
  assert mqar.with_inner_clip(gdn, 10.0) is gdn  # no clip to replace: unchanged
