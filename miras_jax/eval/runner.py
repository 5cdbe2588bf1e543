"""Evaluate a trained run: per task and context length, masked-token and exact-match accuracy.

Tasks: every evaluation a task module of miras_jax.data registers (``TASKS``: name → ``EvalTask``,
a deterministic generator of ``{inputs, targets, mask}`` batches), today

  mqar        the run's MQAR options at the given length (needs the run's vocabulary)
  s_niah_pk   RULER S-NIAH-PK: a passkey in repeated noise (byte level, vocab ≥ 256)
  s_niah_n    S-NIAH-N: a number needle keyed by a word
  s_niah_w    S-NIAH-W: a uuid needle keyed by a word
  babi_qa1    bAbI qa1-style: where is a person, facts spread through filler
  babi_qa2    bAbI qa2-style: where is an object someone carried

and ``perplexity``: the run's held-out split (text corpora), the length is the run's pack_len.

``token_accuracy`` is the fraction of answer tokens predicted right (argmax, teacher-forced);
``exact_match`` the fraction of examples whose answer tokens are all right.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from miras_jax import data as mdata
from miras_jax.train import mesh as mesh_lib
from miras_jax.train.checkpoint import Checkpointer
from miras_jax.train.loop import build
from miras_jax.train.settings import RunSettings, settings_from_config

TASKS = mdata.registry.EVAL_TASKS  # name -> EvalTask, filled by the task modules of miras_jax.data


def _restore(run: RunSettings, workdir: Path, mesh):
  built = build(run, mesh)
  model_config, graphdef, abstract, shardings = (
    built.model_config,
    built.graphdef,
    built.abstract,
    built.shardings,
  )
  checkpoints = Checkpointer(str(workdir / "checkpoints"), async_save=False)
  try:
    restored = checkpoints.restore(abstract)
  finally:
    checkpoints.close()
  if restored is None:
    raise ValueError(f"no checkpoint in {str(workdir / 'checkpoints')!r}: train the run first")
  step, state, _ = restored
  return model_config, graphdef, state.params, shardings.params, step


def _scores(graphdef):
  """Per example: (answer tokens right, answer tokens, masked nll sum)."""

  def scores(params, batch):
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"])
    logp = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
    nll = -np.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    mask = batch["mask"].astype(np.float32)
    right = (logits.argmax(-1) == batch["targets"]).astype(np.float32) * mask
    return right.sum(-1), mask.sum(-1), (nll * mask).sum(-1)

  return scores


def evaluate(
  config,
  workdir: str,
  *,
  tasks: tuple[str, ...],
  lengths: tuple[int, ...] = (),
  examples: int = 256,
  batch_size: int = 16,
  seed: int = 1234,
) -> dict[str, Any]:
  """Restores ``workdir``'s latest checkpoint and scores it; writes ``workdir/eval.json``.

  ``lengths``: context lengths for the synthetic tasks (default: the run's training length).
  Returns ``{"step", "model", "results": [{task, length, token_accuracy, exact_match, examples,
  loss}], "perplexity": {...} | None}``.
  """
  run = settings_from_config(config)
  workdir = Path(workdir).expanduser().resolve()
  unknown = [t for t in tasks if t not in TASKS and t != "perplexity"]
  if unknown:
    raise ValueError(f"tasks: unknown {unknown}; known: {sorted(TASKS) + ['perplexity']}")
  if examples < 1 or batch_size < 1:
    raise ValueError(f"examples and batch_size must be >= 1; got {examples}, {batch_size}")
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model_config, graphdef, params, param_sh, step = _restore(run, workdir, mesh)
  scores = jax.jit(_scores(graphdef))
  train_len = run.data.pack_len or run.data.options.get("seq_len", 0)
  lengths = tuple(lengths) or ((train_len,) if train_len else ())
  results = []
  for task in tasks:
    if task == "perplexity":
      continue
    if TASKS[task].byte_level and model_config.vocab < 256:
      raise ValueError(f"task {task!r} is byte level: the model's vocab {model_config.vocab} < 256")
    for length in lengths:
      batch = TASKS[task].examples(run.data.options, seed, examples, int(length))
      right = total = nll = exact = 0.0
      for i in range(0, examples - examples % batch_size or examples, batch_size):
        part = {k: np.asarray(batch[k][i : i + batch_size]) for k in ("inputs", "targets", "mask")}
        r, c, s = (np.asarray(x) for x in scores(params, part))
        right, total, nll = right + r.sum(), total + c.sum(), nll + s.sum()
        exact += float(np.sum(r == c))
      n = examples - examples % batch_size or examples
      results.append(
        dict(
          task=task,
          length=int(length),
          examples=int(n),
          token_accuracy=float(right / max(total, 1.0)),
          exact_match=float(exact / n),
          loss=float(nll / max(total, 1.0)),
        )
      )
  perplexity = None
  if "perplexity" in tasks:
    perplexity = _perplexity(run, workdir, scores, params, batch_size, examples)
  out = {"step": int(step), "model": run.model.name, "workdir": str(workdir), "results": results,
         "perplexity": perplexity}  # fmt: skip
  (workdir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
  return out


def _perplexity(run, workdir, scores, params, batch_size, examples):
  if not run.data.pack_len:
    raise ValueError("perplexity needs a text run (data.pack_len > 0)")
  data_dir = run.data.data_dir or str(workdir / "tfds")
  source = mdata.prepare(run.data.name, data_dir, **run.data.options).as_data_source()
  loader = mdata.make_loader(
    source[run.data.eval_split], batch_size=batch_size, seed=0, shuffle=False,
    shard_index=0, shard_count=1, num_epochs=1, pack_len=run.data.pack_len,
  )  # fmt: skip
  nll = tokens = 0.0
  for _, batch in zip(range(max(1, examples // batch_size)), loader, strict=False):
    _, c, s = (np.asarray(x) for x in scores(params, batch))
    nll, tokens = nll + s.sum(), tokens + c.sum()
  loss = nll / max(tokens, 1.0)
  return {"split": run.data.eval_split, "tokens": int(tokens), "loss": float(loss),
          "perplexity": math.exp(min(loss, 50.0))}  # fmt: skip


def plot(evals: list[dict[str, Any]], path: str, metric: str = "exact_match") -> None:
  """Accuracy vs context length: one line per (model run, task); saved as a PNG at ``path``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for ev in evals:
    label = Path(ev["workdir"]).name
    for task in sorted({r["task"] for r in ev["results"]}):
      rows = sorted((r["length"], r[metric]) for r in ev["results"] if r["task"] == task)
      ax.plot(*zip(*rows, strict=True), marker="o", label=f"{label} · {task}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel(metric.replace("_", " "))
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
