"""Sweeps: train + evaluate every (variant, seed) of a sweep, resumably, then aggregate over seeds
into a markdown table, a PNG and a JSON-lines file.

A sweep is data: a config file ``configs/sweeps/<sweep>.py`` whose ``get_config(arg)`` returns its
spec (``Sweep``: name, title, metric, evaluation tasks and lengths, the variants as ``(name, run
config)`` pairs, runs reused from other sweeps, parameter matching, an optional report), and one
entry point runs any of them (``python -m experiments.sweep --sweep=configs/sweeps/<sweep>.py``;
``run`` here).

Layout under ``OUT/<sweep>/``::

  <variant>/seed<k>/   the run's workdir (checkpoints, metrics.jsonl, eval.json)
  results.jsonl        one JSON object per finished run (see ``run_one``)
  summary.md           the aggregated table (mean ± std, min–max over seeds)
  <sweep>.png          the plot

A run whose (variant, seed) already has a line in ``results.jsonl`` is skipped, so a sweep that was
stopped resumes where it left off (a half-trained run resumes from its last checkpoint).
``publish`` copies the aggregated table, the PNG and the raw lines to ``docs/results/``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

METRICS = ("exact_match", "token_accuracy")


def enable_compilation_cache(path: str = ".jax_cache/sweeps") -> None:
  """JAX's persistent compilation cache (seeds after the first reuse the compiled programs)."""
  import jax

  Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(Path(path).resolve()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def read_lines(path: Path) -> list[dict]:
  """The JSON objects of a JSON-lines file ([] when it does not exist)."""
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _loss_curve(workdir: Path) -> list[tuple[int, float | None]]:
  """``[(step, loss)]`` of the logged steps; the loss is None where it was not finite (the
  metrics writer stores NaN / inf as null)."""
  rows = read_lines(workdir / "metrics.jsonl")
  return [
    (int(r["step"]), None if r["loss"] is None else float(r["loss"]))
    for r in rows
    if "loss" in r and "step" in r
  ]


def run_one(
  sweep: str,
  variant: str,
  seed: int,
  config,
  workdir: Path,
  *,
  tasks: Sequence[str],
  lengths: Sequence[int],
  examples: int,
  batch_size: int,
) -> dict:
  """Trains ``config`` with ``train.seed = seed`` in ``workdir``, evaluates it; returns the line:

  ``{sweep, variant, seed, params, steps, batch_size, train_seconds, eval_seconds, final_loss,
  final_accuracy, eval_accuracy, loss_curve: [[step, loss]], eval: {task: {length: {exact_match,
  token_accuracy}}}, model, overrides}``. ``final_loss`` / ``final_accuracy`` are the last logged
  training batch's; ``eval_accuracy`` is the loop's held-out accuracy at the last step. A run the
  loop's divergence guard stopped is not evaluated: its line has ``final_loss`` None (counted as
  diverged by ``aggregate``), ``nonfinite_from_step`` the step, and 0 in every evaluation cell, as
  the earlier runs that trained on with NaN parameters scored.
  """
  from miras_jax.eval.runner import evaluate
  from miras_jax.train.loop import train

  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.seed = int(seed)
  t0 = time.perf_counter()
  summary = train(config, str(workdir))
  t1 = time.perf_counter()
  status = summary.get("status")
  curve = _loss_curve(workdir)
  evals: dict[str, dict[str, dict[str, float]]] = {}
  if status == "diverged":
    curve.append((int(summary["diverged_step"]), None))
    for task in tasks:
      evals[task] = {str(n): {m: 0.0 for m in METRICS} for n in lengths}
  elif status != "completed":
    raise RuntimeError(f"{sweep}/{variant}/seed{seed}: training ended {status!r}")
  else:
    ev = evaluate(
      config, str(workdir), tasks=tuple(tasks), lengths=tuple(lengths), examples=examples,
      batch_size=batch_size,
    )  # fmt: skip
    for r in ev["results"]:
      evals.setdefault(r["task"], {})[str(r["length"])] = {m: r[m] for m in METRICS}
  t2 = time.perf_counter()
  return {
    "sweep": sweep,
    "variant": variant,
    "seed": int(seed),
    "model": _model_settings(config).name,
    "overrides": _model_fields(config),
    "params": int(summary["params"]),
    "steps": int(summary["step"]),
    "batch_size": int(config.train.batch_size),
    "train_seconds": round(t1 - t0, 2),
    "eval_seconds": round(t2 - t1, 2),
    "final_loss": curve[-1][1] if curve else None,
    "nonfinite_from_step": next((step for step, loss in curve if loss is None), None),
    "eval_accuracy": summary.get("eval/accuracy"),
    "loss_curve": curve,
    "eval": evals,
  }


def _model_settings(config):
  from miras_jax.train import settings

  m = config.model
  defaults = dict(m.get("defaults") or {})
  tables = dict(m.get("preset_defaults") or {})
  return settings.ModelSettings(
    m.name, m.get("size", "tiny"), dict(m.overrides), defaults, tables
  ).resolved()


def _model_fields(config) -> dict:
  """The model config fields ``config`` sets (its model defaults that apply, then its overrides),
  as recorded in a result line."""
  from miras_jax.train import settings

  return {k: _jsonable(v) for k, v in settings.model_fields(_model_settings(config)).items()}


def _jsonable(v):
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, dict) or hasattr(v, "items"):
    return {str(k): _jsonable(x) for k, x in v.items()}
  return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


def run_sweep(
  sweep: str,
  variants: Sequence[tuple[str, Any]],
  seeds: Iterable[int],
  out: str,
  *,
  tasks: Sequence[str],
  lengths: Sequence[int],
  examples: int = 256,
  batch_size: int = 64,
  runner: Callable[..., dict] = run_one,
  reuse: dict[str, tuple[str, str]] | None = None,
) -> list[dict]:
  """Runs every (variant, seed) not yet in ``OUT/<sweep>/results.jsonl``; returns all lines.

  ``variants``: ``(name, config)`` pairs (names must be unique and path-safe). Each finished run
  appends its line at once, so a stopped sweep loses at most the run in progress.
  """
  names = [name for name, _ in variants]
  if len(set(names)) != len(names):
    raise ValueError(f"variant names must be unique; got {names}")
  bad = [n for n in names if not n or "/" in n or n != n.strip()]
  if bad:
    raise ValueError(f"variant names must be non-empty path components; got {bad}")
  root = Path(out) / sweep
  root.mkdir(parents=True, exist_ok=True)
  results = root / "results.jsonl"
  seeds = list(seeds)
  for name, config in variants:
    for seed in seeds:
      done = {(r["variant"], r["seed"]) for r in read_lines(results)}
      if (name, seed) in done:
        print(f"[{sweep}] {name} seed {seed}: done, skipped", flush=True)
        continue
      copied = _reused(Path(out), (reuse or {}).get(name), seed, config)
      if copied is not None:
        copied.update(
          sweep=sweep, variant=name, reused_from=copied["sweep"] + "/" + copied["variant"]
        )
        with results.open("a") as f:
          f.write(json.dumps(copied) + "\n")
        print(f"[{sweep}] {name} seed {seed}: reused {copied['reused_from']}", flush=True)
        continue
      workdir = root / name / f"seed{seed}"
      line = runner(
        sweep, name, seed, config, workdir, tasks=tasks, lengths=lengths, examples=examples,
        batch_size=batch_size,
      )  # fmt: skip
      with results.open("a") as f:
        f.write(json.dumps(line) + "\n")
      print(f"[{sweep}] {name} seed {seed}: {_short(line)}", flush=True)
  return read_lines(results)


def _reused(out: Path, source: tuple[str, str] | None, seed: int, config) -> dict | None:
  if source is None:
    return None
  other, variant = source
  want = _model_fields(config)
  for r in read_lines(out / other / "results.jsonl"):
    same = (r["variant"], r["seed"], r["model"], r["overrides"], r["steps"], r["batch_size"]) == (
      variant, seed, _model_settings(config).name, want, config.train.steps, config.train.batch_size
    )  # fmt: skip
    if same:
      return dict(r)
  return None


def _short(line: dict) -> str:
  accs = ", ".join(
    f"{task}@{length} {m['exact_match']:.3f} / {m['token_accuracy']:.3f}"
    for task, by_len in line["eval"].items()
    for length, m in by_len.items()
  )
  return f"train {line['train_seconds']:.0f}s, loss {line['final_loss']}, exact match / token accuracy: {accs}"


# ---- aggregation --------------------------------------------------------------------------------
def stats(values: Sequence[float]) -> dict[str, float]:
  """``{mean, std, min, max, n}``; ``std`` is the sample standard deviation (ddof 1; 0 for n=1)."""
  values = [float(v) for v in values]
  if not values:
    raise ValueError("stats of no values")
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return dict(mean=statistics.fmean(values), std=std, min=min(values), max=max(values),
              n=len(values))  # fmt: skip


def aggregate(lines: Sequence[dict], order: Sequence[str] | None = None) -> list[dict]:
  """Per variant (in ``order``, else first appearance): params, seeds, mean train seconds, final
  loss statistics and, per ``task@length`` and metric, the statistics over seeds."""
  variants = list(order) if order else list(dict.fromkeys(r["variant"] for r in lines))
  rows = []
  for v in variants:
    runs = [r for r in lines if r["variant"] == v]
    if not runs:
      continue
    cells: dict[str, dict[str, list[float]]] = {}
    for r in runs:
      for task, by_len in r["eval"].items():
        for length, metrics in by_len.items():
          for m, x in metrics.items():
            cells.setdefault(f"{task}@{length}", {}).setdefault(m, []).append(x)
    rows.append(
      dict(
        variant=v,
        params=sorted({r["params"] for r in runs}),
        seeds=sorted(r["seed"] for r in runs),
        steps=sorted({r["steps"] for r in runs}),
        train_seconds=stats([r["train_seconds"] for r in runs]),
        final_loss=stats(
          [r["final_loss"] for r in runs if r["final_loss"] is not None] or [math.nan]
        ),
        diverged=sum(r["final_loss"] is None for r in runs),
        eval={
          key: {m: stats(xs) for m, xs in by_metric.items()}
          for key, by_metric in sorted(cells.items(), key=lambda kv: _cell_key(kv[0]))
        },
      )
    )
  return rows


def _cell_key(cell: str):
  task, _, length = cell.rpartition("@")
  return (task, int(length))


def fmt(s: dict, digits: int = 3) -> str:
  """``mean ± std (min–max)``."""
  return (
    f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"
  )


def table(rows: Sequence[dict], metric: str = "exact_match") -> str:
  """Markdown table: one row per variant, one column per ``task@length`` (``metric``)."""
  cells = list(dict.fromkeys(c for r in rows for c in r["eval"]))
  head = ["variant", "params", "seeds", "train s/run", "final train loss"] + [
    f"{c} {metric}" for c in cells
  ]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    params = "/".join(f"{p:,}" for p in r["params"])
    finite = len(r["seeds"]) - r.get("diverged", 0)
    loss = fmt(r["final_loss"]) if finite else "—"  # the statistics of the finite runs
    if r.get("diverged"):
      loss += f" ({r['diverged']} of {len(r['seeds'])} diverged: NaN loss)"
    row = [r["variant"], params, str(len(r["seeds"])), f"{r['train_seconds']['mean']:.0f}", loss]
    row += [fmt(r["eval"][c][metric]) if c in r["eval"] else "—" for c in cells]
    out.append("| " + " | ".join(row) + " |")
  return "\n".join(out) + "\n"


def plot(rows: Sequence[dict], path: str, title: str, metric: str = "exact_match") -> None:
  """One panel per task: bars (one length) or lines against context length (several lengths),
  mean with min–max error bars, seeds as dots."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = list(dict.fromkeys(c.rpartition("@")[0] for r in rows for c in r["eval"]))
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks, strict=True):
    lengths = sorted(
      {int(c.rpartition("@")[2]) for r in rows for c in r["eval"] if c.startswith(task + "@")}
    )
    if len(lengths) == 1:
      key = f"{task}@{lengths[0]}"
      xs = range(len(rows))
      means = [r["eval"][key][metric]["mean"] for r in rows]
      lo = [m - r["eval"][key][metric]["min"] for m, r in zip(means, rows, strict=True)]
      hi = [r["eval"][key][metric]["max"] - m for m, r in zip(means, rows, strict=True)]
      ax.bar(xs, means, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.7)
      ax.set_xticks(list(xs), [r["variant"] for r in rows], rotation=20, ha="right", fontsize=8)
      ax.set_xlabel(f"length {lengths[0]}")
    else:
      for r in rows:
        ls = [n for n in lengths if f"{task}@{n}" in r["eval"]]
        s = [r["eval"][f"{task}@{n}"][metric] for n in ls]
        means = [x["mean"] for x in s]
        ax.errorbar(ls, means, yerr=[[m - x["min"] for m, x in zip(means, s, strict=True)],
                                     [x["max"] - m for m, x in zip(means, s, strict=True)]],
                    marker="o", capsize=3, label=r["variant"])  # fmt: skip
      ax.set_xscale("log", base=2)
      ax.set_xlabel("context length (tokens)")
      ax.legend(fontsize=8)
    ax.set_title(task, fontsize=9)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  fig.suptitle(title + "\n(mean; bars / whiskers: min–max over seeds)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def publish(sweep: str, out: str, rows: Sequence[dict], docs: str = "docs/results", *,
            title: str, metric: str = "exact_match") -> dict[str, Path]:  # fmt: skip
  """Writes ``OUT/<sweep>/summary.md`` and ``<sweep>.png`` and copies them with the raw lines
  (``results.jsonl`` without the loss curves) and the aggregate (``<sweep>_aggregate.json``) to
  ``docs``; returns the written paths."""
  root = Path(out) / sweep
  docs_dir = Path(docs)
  docs_dir.mkdir(parents=True, exist_ok=True)
  md = table(rows, metric)
  (root / "summary.md").write_text(md)
  png = root / f"{sweep}.png"
  plot(rows, str(png), title, metric)
  paths = {
    "table": docs_dir / f"{sweep}.md",
    "plot": docs_dir / f"{sweep}.png",
    "lines": docs_dir / f"{sweep}.jsonl",
    "aggregate": docs_dir / f"{sweep}_aggregate.json",
  }
  paths["table"].write_text(md)
  shutil.copyfile(png, paths["plot"])
  lines = read_lines(root / "results.jsonl")
  with paths["lines"].open("w") as f:
    for line in lines:
      f.write(json.dumps({k: v for k, v in line.items() if k != "loss_curve"}) + "\n")
  paths["aggregate"].write_text(json.dumps(list(rows), indent=1) + "\n")
  return paths


def finish(sweep: str, out: str, order: Sequence[str], *, title: str, docs: str = "docs/results",
           metric: str = "exact_match") -> list[dict]:  # fmt: skip
  """Aggregates ``OUT/<sweep>/results.jsonl`` (variants in ``order``), publishes, prints the table."""
  lines = read_lines(Path(out) / sweep / "results.jsonl")
  rows = aggregate(lines, order)
  publish(sweep, out, rows, docs, title=title, metric=metric)
  print(table(rows, metric), flush=True)
  return rows


def quiet() -> None:
  """Less absl / orbax logging in the sweep processes."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---- configs and the scripts' shared main -------------------------------------------------------
def count_params(config) -> int:
  """Parameters of the model that ``config`` trains (built abstractly, nothing allocated)."""
  import jax
  import numpy as np
  from flax import nnx

  from miras_jax import models
  from miras_jax.train import settings

  model = _model_settings(config)
  model_config = settings.model_config(model)
  abstract = nnx.eval_shape(lambda: models.get(model.name, model_config, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def match_params(config, target: int, field: str = "mlp_hidden"):
  """A copy of ``config`` whose model's ``field`` (an int, default the SwiGLU width) is the one
  bringing the parameter count nearest to ``target`` (the count grows monotonically with it)."""

  def with_value(v):
    c = copy.deepcopy(config)
    with c.unlocked():
      c.model.overrides[field] = int(v)
    return c

  lo, hi = 1, 8 * max(int(config.model.overrides.get(field, 64)), 64)
  while count_params(with_value(hi)) < target:
    hi *= 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if count_params(with_value(mid)) < target:
      lo = mid
    else:
      hi = mid
  best = min((lo, hi), key=lambda v: abs(count_params(with_value(v)) - target))
  return with_value(best)


def _with_steps(config, steps: int):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.train.steps = int(steps)
  return c


# ---- sweeps as data -----------------------------------------------------------------------------
SPEC_FIELDS = {
  "name": "the sweep's name: OUT/<name>/ and docs/results/<name>.{md,png,jsonl}",
  "title": "the plot's title",
  "metric": "the table's metric: exact_match | token_accuracy",
  "tasks": "evaluation tasks (miras_jax.eval.TASKS)",
  "lengths": "evaluation context lengths",
  "variants": "(name, run config) pairs, in the table's order",
}
SPEC_DEFAULTS = {
  "examples": 256,  # evaluation examples per task and length
  "batch_size": 64,  # evaluation batch
  "reuse": {},  # variant -> (sweep, variant) whose finished runs of the same config are copied
  "match_params": {},  # variant -> the variant whose parameter count its mlp_hidden is matched to
  "report": "",  # a REPORTS entry run after publishing ("" none)
  "report_options": {},  # what the report reads
}
REPORTS: dict[str, Callable] = {}  # name -> fn(spec, variants: dict, out, docs), extra outputs


def check_spec(spec) -> None:
  """Raises ``ValueError`` naming a missing or unknown field of a sweep spec."""
  missing = [k for k in SPEC_FIELDS if k not in spec]
  unknown = [k for k in spec if k not in SPEC_FIELDS and k not in SPEC_DEFAULTS]
  if missing or unknown:
    raise ValueError(
      f"sweep spec: missing {missing}, unknown {unknown}; fields: "
      f"{sorted(SPEC_FIELDS) + sorted(SPEC_DEFAULTS)}"
    )
  if spec.metric not in METRICS:
    raise ValueError(f"sweep spec: metric must be one of {METRICS}; got {spec.metric!r}")
  names = [name for name, _ in spec.variants]
  for field in ("reuse", "match_params"):
    bad = sorted(set(dict(spec.get(field) or {})) - set(names))
    if bad:
      raise ValueError(f"sweep spec: {field} names unknown variants {bad}; variants: {names}")
  report = spec.get("report") or ""
  if report and report not in REPORTS:
    raise ValueError(f"sweep spec: unknown report {report!r}; known: {sorted(REPORTS)}")


def _field(spec, name):
  value = spec.get(name)
  return SPEC_DEFAULTS[name] if value is None else value


def variants_of(spec) -> list[tuple[str, Any]]:
  """The spec's ``(name, config)`` variants, with ``match_params`` applied: the named variants'
  SwiGLU width is set so that their parameter count matches their target variant's."""
  check_spec(spec)
  configs = dict(spec.variants)
  for name, source in dict(_field(spec, "match_params")).items():
    configs[name] = match_params(configs[name], count_params(configs[source]))
  return [(name, configs[name]) for name, _ in spec.variants]


def run(spec, *, seeds: int = 3, out: str = "runs/sweeps", steps: int = 0,
        docs: str = "docs/results", aggregate_only: bool = False,
        only: Sequence[str] = ()) -> list[dict]:  # fmt: skip
  """Runs the sweep ``spec`` (every variant × seeds 0 … seeds−1 not yet finished under
  ``OUT/<name>/``), then aggregates, publishes to ``docs`` and runs its report; returns the rows.

  ``steps``: training steps of every run (0: the configs'); ``only``: run only these variants (all
  are aggregated); ``aggregate_only``: train nothing.
  """
  quiet()
  variants = variants_of(spec)
  if steps:
    variants = [(n, _with_steps(c, steps)) for n, c in variants]
  order = [n for n, _ in variants]
  unknown = [n for n in only if n not in order]
  if unknown:
    raise ValueError(f"only: unknown variants {unknown}; known: {order}")
  todo = [(n, c) for n, c in variants if not only or n in only]
  reuse = {k: tuple(v) for k, v in dict(_field(spec, "reuse")).items()}
  if not aggregate_only:
    enable_compilation_cache()
    run_sweep(spec.name, todo, range(seeds), out, tasks=tuple(spec.tasks),
              lengths=tuple(spec.lengths), examples=int(_field(spec, "examples")),
              batch_size=int(_field(spec, "batch_size")), reuse=reuse)  # fmt: skip
  rows = finish(spec.name, out, order, title=spec.title, docs=docs, metric=spec.metric)
  if _field(spec, "report"):
    REPORTS[_field(spec, "report")](spec, dict(variants), out, docs)
  return rows


# ---- reports ------------------------------------------------------------------------------------
def optimizer_report(spec, variants: dict, out: str, docs: str) -> None:
  """The optimizer sweep's extras: the seeds' training-loss curves (``docs/optimizer_loss.png``)
  and the first step per unit of lr of the ``report_options.first_step`` variants
  (``docs/optimizer_first_step.json``)."""
  options = spec.report_options
  lines = read_lines(Path(out) / spec.name / "results.jsonl")
  plot_loss_curves(lines, dict(options.lrs), str(Path(docs) / "optimizer_loss.png"))
  sizes = [dict(variant=name, **first_step(variants[name])) for name in options.first_step]
  (Path(docs) / "optimizer_first_step.json").write_text(json.dumps(sizes, indent=1) + "\n")
  for row in sizes:
    print(json.dumps(row), flush=True)


REPORTS["optimizer"] = optimizer_report


def plot_loss_curves(lines, lrs: dict, path: str) -> None:
  """Training loss against step: one panel per optimizer of ``lrs`` (optimizer -> peak lrs), one
  colour per peak lr, one thin line per seed (a diverged run's line stops where its loss stopped
  being finite)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(lrs), figsize=(4 * len(lrs), 3.6), sharey=True)
  for ax, (optimizer, rates) in zip(axes, lrs.items(), strict=True):
    for i, lr in enumerate(rates):
      runs = [r for r in lines if r["variant"] == f"{optimizer}_lr{lr:g}"]
      for j, r in enumerate(sorted(runs, key=lambda r: r["seed"])):
        steps = [step for step, _ in r["loss_curve"]]
        losses = [float("nan") if loss is None else loss for _, loss in r["loss_curve"]]
        ax.plot(
          steps, losses, color=f"C{i}", alpha=0.8, lw=1, label=f"lr {lr:g}" if j == 0 else None
        )
    ax.set_title(optimizer, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("training loss (masked answer tokens)")
  fig.suptitle("M3 vs AdamW vs Muon on MQAR (configs/mqar.py model), one line per seed", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def first_step(config) -> dict:
  """The first update per unit of lr, ``Δθ / lr``, of ``config``'s optimizer (constant lr) on one
  training batch from ``train.seed``'s init: its RMS over all parameters, and the parameter with the
  largest RMS (name, RMS, largest element, RMS of its gradient)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from miras_jax.train import mesh as mesh_lib
  from miras_jax.train.loop import build, first_train_batch
  from miras_jax.train.settings import settings_from_config
  from miras_jax.train.step import make_eval_step, make_train_step

  config = copy.deepcopy(config)
  with config.unlocked():
    config.optimizer.warmup_steps = 0  # the peak lr from the first step
    config.optimizer.min_lr_ratio = 1.0
  run = settings_from_config(config)
  built = build(run, mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  graphdef, tx, init = built.graphdef, built.tx, built.init
  state = init(jax.random.key(run.train.seed))
  batch = {k: jnp.asarray(v) for k, v in first_train_batch(run, run.data.data_dir).items()}
  new, _ = jax.jit(make_train_step(graphdef, tx))(state, batch)
  lr = run.optimizer.lr
  paths, before = zip(*jax.tree_util.tree_flatten_with_path(state.params)[0], strict=True)
  steps = [np.asarray(b - a) / lr for a, b in zip(before, jax.tree.leaves(new.params), strict=True)]
  rms = [float(np.sqrt(np.mean(x * x))) for x in steps]
  worst = int(np.argmax(rms))

  def loss(params):  # the train step's loss: masked nll sum / tokens
    nll, _, tokens = make_eval_step(graphdef)(params, batch)
    return nll / tokens

  grad = jax.grad(loss)(state.params)
  g = np.asarray(jax.tree.leaves(grad)[worst])
  return {
    "optimizer": run.optimizer.name,
    "lr": lr,
    "rms": float(np.sqrt(sum(float(np.sum(x * x)) for x in steps) / sum(x.size for x in steps))),
    "largest": {
      "param": jax.tree_util.keystr(paths[worst]),
      "shape": list(steps[worst].shape),
      "rms": rms[worst],
      "max_abs": float(np.max(np.abs(steps[worst]))),
      "grad_rms": float(np.sqrt(np.mean(g * g))),
    },
  }
