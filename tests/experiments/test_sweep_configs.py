"""The sweeps' configs: numerical guards and the MQAR re-run at another lr."""

import pytest

import miras_jax as mj
from configs.sweeps import miras_models, mqar, needle, titans_variants


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


def test_needle_sweeps_at_the_block_defaults_drop_only_the_guards():
  for sweep, model in [(miras_models, "moneta"), (miras_models, "memora")]:
    guarded = dict(sweep.get_config("s_niah_pk").variants)[model]
    plain = dict(sweep.get_config("s_niah_pk,defaults=1").variants)[model]
    assert "preset_options" in guarded.model.overrides
    assert "preset_options" not in plain.model.overrides
    rest = {k: v for k, v in guarded.model.overrides.items() if k != "preset_options"}
    assert dict(plain.model.overrides) == rest
    assert plain.optimizer.lr == guarded.optimizer.lr and plain.train.steps == guarded.train.steps
  assert miras_models.get_config("s_niah_pk,defaults=1").name == "miras_models_needle_defaults"
  mac = dict(titans_variants.get_config("s_niah_pk,defaults=1").variants)["titans_mac"]
  assert "preset_options" not in mac.model.overrides
  assert (
    titans_variants.get_config("s_niah_pk,defaults=1").name == "titans_variants_needle_defaults"
  )
  for sweep in (miras_models, titans_variants):
    with pytest.raises(ValueError, match="defaults=1 applies to the s_niah_pk sweep only"):
      sweep.get_config("mqar,defaults=1")
