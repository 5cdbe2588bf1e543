"""The sweeps' configs: numerical guards and the MQAR re-run at another lr. The configs import only
ml_collections (and each other): the guards are a table, a preset's name as model name is resolved
by the library."""

import ast
import pathlib

import pytest

import miras_jax as mj
from configs.sweeps import miras_models, mqar, needle, titans_variants
from miras_jax.eval import sweeps
from miras_jax.train import settings

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"


def _fields(c):
  """The resolved model (name, fields) a config runs."""
  model = sweeps._model_settings(c)
  return model.name, settings.model_fields(model)


@pytest.mark.parametrize("preset", [n for n in mj.presets.names() if n != "softmax_attention"])
def test_guard_options_are_valid_preset_options(preset):
  """Every MLP memory of the library has the clip in the table, every other memory no guard."""
  options = dict(mqar.guard_options(preset))
  rule = mj.presets.get(preset, **options)  # every guard is an option the preset takes
  mlp = isinstance(rule.memory, mj.MLPMemory)
  assert (rule.grad_clip == mqar.INNER_CLIP) if mlp else (rule.grad_clip is None and not options)
  if preset == "moneta":
    assert rule.retention.eps == mqar.LQ_EPS
  if preset == "memora":
    assert rule.retention.eps == mqar.KL_EPS


def test_configs_import_only_ml_collections():
  for path in sorted(CONFIGS.rglob("*.py")):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        roots = {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        roots = {(node.module or "").split(".")[0]}
      else:
        continue
      assert roots <= {"ml_collections", "configs", "copy", "os", "dataclasses", "typing"}, (
        path,
        roots,
      )


def test_the_needle_guards_follow_the_memory_each_model_runs():
  """Guards in the table reach the preset a model runs: Moneta's clip and floor, MAC's titans_lmm
  clip (its preset by default); a linear memory and the Transformer get none."""
  name, fields = _fields(needle.get_config("moneta"))
  assert name == "miras_lm" and fields["preset"] == "moneta"
  assert fields["preset_options"] == mqar.guard_options("moneta")
  _, fields = _fields(needle.get_config("titans_mac"))
  assert fields["preset_options"] == mqar.guard_options("titans_lmm") and "preset" not in fields
  assert "preset_options" not in _fields(needle.get_config("gated_delta_net"))[1]
  assert "preset_options" not in _fields(needle.get_config("transformer"))[1]


def test_linear_memories_keep_their_exact_form():
  assert mqar.guard_options("gated_delta_net") == ()
  assert "preset_options" not in _fields(needle.get_config("gated_delta_net"))[1]


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
  assert dict(_fields(looser)[1]["preset_options"]) == {"grad_clip": 10.0, "eps": mqar.LQ_EPS}
  assert dict(_fields(moneta)[1]["preset_options"])["grad_clip"] == mqar.INNER_CLIP  # a copy
  mac = _fields(mqar.with_inner_clip(needle.get_config("titans_mac"), 3.0))[1]
  assert mac["preset_options"] == (("grad_clip", 3.0),)
  own = mqar.with_inner_clip(
    miras_models.get_config("lr=0.01").variants[0][1], 10.0
  )  # guards given as preset_options
  assert dict(_fields(own)[1]["preset_options"])["grad_clip"] == 10.0
  assert mqar.with_inner_clip(mqar.get_config("gated_delta_net"), 10.0).model.overrides == (
    mqar.get_config("gated_delta_net").model.overrides
  )


def test_needle_sweeps_at_the_block_defaults_drop_only_the_guards():
  for sweep, model in [(miras_models, "moneta"), (miras_models, "memora")]:
    guarded = _fields(dict(sweep.get_config("s_niah_pk").variants)[model])[1]
    c = dict(sweep.get_config("s_niah_pk,defaults=1").variants)[model]
    plain = _fields(c)[1]
    assert "preset_options" in guarded and "preset_options" not in plain
    assert plain == {k: v for k, v in guarded.items() if k != "preset_options"}
    g = dict(sweep.get_config("s_niah_pk").variants)[model]
    assert c.optimizer.lr == g.optimizer.lr and c.train.steps == g.train.steps
  assert miras_models.get_config("s_niah_pk,defaults=1").name == "miras_models_needle_defaults"
  mac = dict(titans_variants.get_config("s_niah_pk,defaults=1").variants)["titans_mac"]
  assert "preset_options" not in _fields(mac)[1]
  assert (
    titans_variants.get_config("s_niah_pk,defaults=1").name == "titans_variants_needle_defaults"
  )
  for sweep in (miras_models, titans_variants):
    with pytest.raises(ValueError, match="defaults=1 applies to the s_niah_pk sweep only"):
      sweep.get_config("mqar,defaults=1")
