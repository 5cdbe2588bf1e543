"""miras_jax.eval.sweeps: statistics, aggregation, resumable runs, reuse and publishing on fake
run lines (nothing is trained)."""

import importlib
import json
import math
import pathlib

import ml_collections
import pytest

from miras_jax.eval import sweeps


def _line(variant, seed, acc, *, params=100, loss=1.0):
  return {
    "sweep": "s", "variant": variant, "seed": seed, "model": "miras_lm", "overrides": {},
    "params": params, "steps": 10, "batch_size": 4, "train_seconds": 2.0, "eval_seconds": 0.5,
    "final_loss": loss, "eval_accuracy": acc, "loss_curve": [[10, loss]],
    "eval": {"mqar": {"64": {"exact_match": acc / 2, "token_accuracy": acc}}},
  }  # fmt: skip


def _config(steps=10):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(name="miras_lm", overrides={}))
  c.train = ml_collections.ConfigDict(dict(steps=steps, batch_size=4))
  return c


def test_stats_sample_std_and_range():
  s = sweeps.stats([0.2, 0.4, 0.6])
  assert s["mean"] == pytest.approx(0.4)
  assert s["std"] == pytest.approx(0.2)  # ddof = 1
  assert (s["min"], s["max"], s["n"]) == (0.2, 0.6, 3)
  assert sweeps.stats([0.5])["std"] == 0.0
  with pytest.raises(ValueError, match="no values"):
    sweeps.stats([])


def test_aggregate_per_variant_in_order():
  lines = [_line("b", 0, 0.1), _line("a", 0, 0.5), _line("a", 1, 0.7), _line("b", 1, 0.3)]
  rows = sweeps.aggregate(lines, order=["a", "b", "missing"])
  assert [r["variant"] for r in rows] == ["a", "b"]
  a = rows[0]["eval"]["mqar@64"]
  assert a["token_accuracy"]["mean"] == pytest.approx(0.6)
  assert a["token_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
  assert a["exact_match"]["max"] == pytest.approx(0.35)
  assert rows[1]["seeds"] == [0, 1]
  md = sweeps.table(rows, "token_accuracy")
  assert "| a | 100 | 2 |" in md and "0.600 ± 0.141 (0.500–0.700)" in md


def test_run_sweep_resumes_and_reuses(tmp_path):
  calls = []

  def fake(sweep, variant, seed, config, workdir, **kw):
    calls.append((variant, seed))
    return _line(variant, seed, 0.1 * (seed + 1)) | {"sweep": sweep}

  variants = [("x", _config()), ("y", _config())]
  sweeps.run_sweep("s", variants[:1], [0, 1], str(tmp_path), tasks=("mqar",), lengths=(64,),
                     runner=fake)  # fmt: skip
  lines = sweeps.run_sweep("s", variants, [0, 1], str(tmp_path), tasks=("mqar",), lengths=(64,),
                             runner=fake)  # fmt: skip
  assert calls == [("x", 0), ("x", 1), ("y", 0), ("y", 1)]  # x's runs were not repeated
  assert len(lines) == 4
  # Another sweep reuses x's runs for its variant "base" (same model, overrides, steps, batch).
  reused = sweeps.run_sweep("t", [("base", _config()), ("other", _config(steps=20))], [0, 1],
                              str(tmp_path), tasks=("mqar",), lengths=(64,), runner=fake,
                              reuse={"base": ("s", "x"), "other": ("s", "x")})  # fmt: skip
  base = [r for r in reused if r["variant"] == "base"]
  assert [r["reused_from"] for r in base] == ["s/x", "s/x"]
  assert calls[4:] == [("other", 0), ("other", 1)]  # steps differ: not reused


def test_a_run_the_guard_stopped_is_a_diverged_line_not_an_error(tmp_path, monkeypatch):
  """The loop's divergence guard ends a run with status "diverged" and maybe no checkpoint: the
  line counts it (final_loss None, the step) and scores 0, without evaluating."""
  from miras_jax.eval import runner
  from miras_jax.train import loop

  def train(config, workdir):
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "loss": 2.5}\n')
    return {"status": "diverged", "step": 20, "diverged_step": 20, "params": 7}

  def evaluate(*args, **kwargs):
    raise AssertionError("a diverged run is not evaluated")

  monkeypatch.setattr(loop, "train", train)
  monkeypatch.setattr(runner, "evaluate", evaluate)
  c = _config()
  with c.unlocked():
    c.model.size = "tiny"
  line = sweeps.run_one("s", "x", 0, c, tmp_path, tasks=("mqar",), lengths=(64, 128), examples=4,
                        batch_size=2)  # fmt: skip
  assert line["final_loss"] is None and line["nonfinite_from_step"] == 20 and line["steps"] == 20
  assert line["loss_curve"] == [(10, 2.5), (20, None)]
  assert line["eval"] == {
    "mqar": {n: {"exact_match": 0.0, "token_accuracy": 0.0} for n in ("64", "128")}
  }
  rows = sweeps.aggregate([line, _line("x", 1, 0.8)])
  assert rows[0]["diverged"] == 1 and rows[0]["eval"]["mqar@64"]["token_accuracy"]["mean"] == 0.4


def test_run_sweep_rejects_bad_names(tmp_path):
  with pytest.raises(ValueError, match="unique"):
    sweeps.run_sweep("s", [("x", None), ("x", None)], [0], str(tmp_path), tasks=(), lengths=())
  with pytest.raises(ValueError, match="path components"):
    sweeps.run_sweep("s", [("a/b", None)], [0], str(tmp_path), tasks=(), lengths=())


def test_publish_writes_table_plot_and_lines(tmp_path):
  out, docs = tmp_path / "runs", tmp_path / "docs"
  (out / "s").mkdir(parents=True)
  lines = [_line("a", 0, 0.5), _line("a", 1, 0.7)]
  (out / "s" / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  rows = sweeps.finish("s", str(out), ["a"], title="t", docs=str(docs), metric="token_accuracy")
  assert rows[0]["eval"]["mqar@64"]["token_accuracy"]["n"] == 2
  assert (docs / "s.png").stat().st_size > 0
  published = sweeps.read_lines(docs / "s.jsonl")
  assert len(published) == 2 and "loss_curve" not in published[0]
  assert json.loads((docs / "s_aggregate.json").read_text())[0]["variant"] == "a"


def test_diverged_runs_are_counted_not_averaged():
  lines = [
    _line("a", 0, 0.5, loss=1.0),
    _line("a", 1, 0.0, loss=None),
    _line("a", 2, 0.4, loss=3.0),
  ]
  rows = sweeps.aggregate(lines)
  assert rows[0]["diverged"] == 1
  assert rows[0]["final_loss"]["mean"] == pytest.approx(2.0)
  assert "(1 of 3 diverged: NaN loss)" in sweeps.table(rows)
  all_nan = sweeps.aggregate([_line("b", 0, 0.0, loss=None)])
  assert "| — (1 of 1 diverged" in sweeps.table(all_nan)


# Every published sweep: (config module, argument). Re-aggregating its published lines with the
# spec's variant order and metric must reproduce its table and aggregate byte for byte.
PUBLISHED = [
  ("chunk_size", None),
  ("memory_depth", None),
  ("titans_ablation", None),
  ("memory_form", None),
  ("inner_clip", None),
  ("hope_ablation", None),
  ("miras_models", None),
  ("miras_models", "lr=0.01"),
  ("miras_models", "s_niah_pk"),
  ("miras_models", "s_niah_pk,clip=10"),
  ("miras_models", "s_niah_pk,defaults=1"),
  ("titans_variants", None),
  ("titans_variants", "s_niah_pk"),
  ("titans_variants", "s_niah_pk,clip=10"),
  ("titans_variants", "s_niah_pk,defaults=1"),
  ("optimizer", None),
]
DOCS = pathlib.Path(__file__).parents[2] / "docs" / "results"


def _spec(module, arg):
  return importlib.import_module(f"configs.sweeps.{module}").get_config(arg)


@pytest.mark.parametrize(("module", "arg"), PUBLISHED)
def test_each_published_sweep_reaggregates_byte_for_byte(module, arg):
  spec = _spec(module, arg)
  sweeps.check_spec(spec)
  lines = sweeps.read_lines(DOCS / f"{spec.name}.jsonl")
  rows = sweeps.aggregate(lines, [name for name, _ in spec.variants])
  assert sweeps.table(rows, spec.metric) == (DOCS / f"{spec.name}.md").read_text()
  assert json.dumps(rows, indent=1) + "\n" == (DOCS / f"{spec.name}_aggregate.json").read_text()
  # the spec's variants are the runs that were published (model and config fields); the ablation's
  # lines predate the preset options (its presets then had their own names), and the matched
  # widths are computed when the sweep runs (checked below)
  configs = dict(spec.variants)
  for line in lines:
    if "reused_from" in line or module == "titans_ablation":
      continue
    if line["variant"] in dict(spec.get("match_params") or {}):
      continue
    c = configs[line["variant"]]
    name = sweeps._model_settings(c).name  # a preset's name resolves to miras_lm with it
    assert (name, sweeps._model_fields(c)) == (line["model"], line["overrides"])


def test_matched_widths_are_the_published_ones():
  spec = _spec("miras_models", None)
  variants = dict(sweeps.variants_of(spec))
  for line in sweeps.read_lines(DOCS / f"{spec.name}.jsonl"):
    c = variants[line["variant"]]
    assert sweeps._model_fields(c) == line["overrides"], line["variant"]


def test_every_sweep_config_is_a_valid_spec_and_bad_specs_are_named():
  names = {p.stem for p in (DOCS.parents[1] / "configs" / "sweeps").glob("*.py")}
  bases = {"__init__", "mqar", "needle", "hope_mqar"}  # run configs the sweeps build on
  assert names - bases == {m for m, _ in PUBLISHED}
  spec = _spec("chunk_size", None)
  with spec.unlocked():
    spec.metric = "bleu"
  with pytest.raises(ValueError, match="metric must be one of"):
    sweeps.check_spec(spec)
  spec = _spec("chunk_size", None)
  with spec.unlocked():
    spec.reuse = {"chunk5": ("memory_depth", "mlp_LM2")}
  with pytest.raises(ValueError, match=r"reuse names unknown variants \['chunk5'\]"):
    sweeps.check_spec(spec)


def test_hope_ablation_lists_the_selfmod_memories():
  from configs.sweeps import hope_ablation
  from miras_jax.core.selfmod import MEMORIES

  assert hope_ablation.MEMORIES == MEMORIES


def test_run_aggregate_only_republishes_a_sweep(tmp_path):
  spec = _spec("chunk_size", None)
  (tmp_path / "out" / spec.name).mkdir(parents=True)
  lines = (DOCS / f"{spec.name}.jsonl").read_text()
  (tmp_path / "out" / spec.name / "results.jsonl").write_text(lines)
  sweeps.run(spec, out=str(tmp_path / "out"), docs=str(tmp_path / "docs"), aggregate_only=True)
  assert (tmp_path / "docs" / f"{spec.name}.md").read_text() == (
    DOCS / f"{spec.name}.md"
  ).read_text()
  with pytest.raises(ValueError, match=r"only: unknown variants \['chunk5'\]"):
    sweeps.run(spec, out=str(tmp_path / "out"), docs=str(tmp_path / "docs"), only=["chunk5"])
