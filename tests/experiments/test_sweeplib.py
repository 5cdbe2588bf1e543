"""experiments.sweeplib: statistics, aggregation, resumable runs, reuse and publishing, on fake
run lines (nothing is trained)."""

import json
import math

import ml_collections
import pytest

from experiments import sweeplib


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
  s = sweeplib.stats([0.2, 0.4, 0.6])
  assert s["mean"] == pytest.approx(0.4)
  assert s["std"] == pytest.approx(0.2)  # ddof = 1
  assert (s["min"], s["max"], s["n"]) == (0.2, 0.6, 3)
  assert sweeplib.stats([0.5])["std"] == 0.0
  with pytest.raises(ValueError, match="no values"):
    sweeplib.stats([])


def test_aggregate_per_variant_in_order():
  lines = [_line("b", 0, 0.1), _line("a", 0, 0.5), _line("a", 1, 0.7), _line("b", 1, 0.3)]
  rows = sweeplib.aggregate(lines, order=["a", "b", "missing"])
  assert [r["variant"] for r in rows] == ["a", "b"]
  a = rows[0]["eval"]["mqar@64"]
  assert a["token_accuracy"]["mean"] == pytest.approx(0.6)
  assert a["token_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
  assert a["exact_match"]["max"] == pytest.approx(0.35)
  assert rows[1]["seeds"] == [0, 1]
  md = sweeplib.table(rows, "token_accuracy")
  assert "| a | 100 | 2 |" in md and "0.600 ± 0.141 (0.500–0.700)" in md


def test_run_sweep_resumes_and_reuses(tmp_path):
  calls = []

  def fake(sweep, variant, seed, config, workdir, **kw):
    calls.append((variant, seed))
    return _line(variant, seed, 0.1 * (seed + 1)) | {"sweep": sweep}

  variants = [("x", _config()), ("y", _config())]
  sweeplib.run_sweep("s", variants[:1], [0, 1], str(tmp_path), tasks=("mqar",), lengths=(64,),
                     runner=fake)  # fmt: skip
  lines = sweeplib.run_sweep("s", variants, [0, 1], str(tmp_path), tasks=("mqar",), lengths=(64,),
                             runner=fake)  # fmt: skip
  assert calls == [("x", 0), ("x", 1), ("y", 0), ("y", 1)]  # x's runs were not repeated
  assert len(lines) == 4
  # Another sweep reuses x's runs for its variant "base" (same model, overrides, steps, batch).
  reused = sweeplib.run_sweep("t", [("base", _config()), ("other", _config(steps=20))], [0, 1],
                              str(tmp_path), tasks=("mqar",), lengths=(64,), runner=fake,
                              reuse={"base": ("s", "x"), "other": ("s", "x")})  # fmt: skip
  base = [r for r in reused if r["variant"] == "base"]
  assert [r["reused_from"] for r in base] == ["s/x", "s/x"]
  assert calls[4:] == [("other", 0), ("other", 1)]  # steps differ: not reused


def test_run_sweep_rejects_bad_names(tmp_path):
  with pytest.raises(ValueError, match="unique"):
    sweeplib.run_sweep("s", [("x", None), ("x", None)], [0], str(tmp_path), tasks=(), lengths=())
  with pytest.raises(ValueError, match="path components"):
    sweeplib.run_sweep("s", [("a/b", None)], [0], str(tmp_path), tasks=(), lengths=())


def test_publish_writes_table_plot_and_lines(tmp_path):
  out, docs = tmp_path / "runs", tmp_path / "docs"
  (out / "s").mkdir(parents=True)
  lines = [_line("a", 0, 0.5), _line("a", 1, 0.7)]
  (out / "s" / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  rows = sweeplib.finish("s", str(out), ["a"], title="t", docs=str(docs), metric="token_accuracy")
  assert rows[0]["eval"]["mqar@64"]["token_accuracy"]["n"] == 2
  assert (docs / "s.png").stat().st_size > 0
  published = sweeplib.read_lines(docs / "s.jsonl")
  assert len(published) == 2 and "loss_curve" not in published[0]
  assert json.loads((docs / "s_aggregate.json").read_text())[0]["variant"] == "a"


def test_diverged_runs_are_counted_not_averaged():
  lines = [
    _line("a", 0, 0.5, loss=1.0),
    _line("a", 1, 0.0, loss=None),
    _line("a", 2, 0.4, loss=3.0),
  ]
  rows = sweeplib.aggregate(lines)
  assert rows[0]["diverged"] == 1
  assert rows[0]["final_loss"]["mean"] == pytest.approx(2.0)
  assert "(1 of 3 diverged: NaN loss)" in sweeplib.table(rows)
  all_nan = sweeplib.aggregate([_line("b", 0, 0.0, loss=None)])
  assert "| — (1 of 1 diverged" in sweeplib.table(all_nan)
