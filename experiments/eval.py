"""Evaluation entry point: restore a run's latest checkpoint, score tasks per context length.

  python -m experiments.eval --config=configs/mqar.py --workdir=runs/mqar --lengths=64,128,256
  python -m experiments.eval --config=configs/lm_text.py --workdir=/tmp/lm --tasks=perplexity

``--config.x.y=v`` overrides the config as for ``experiments.train`` (``model.overrides.FIELD`` may
set any field of the model's config). Writes ``WORKDIR/eval.json`` and ``WORKDIR/eval.png`` (accuracy vs context length; add other runs'
lines with --compare=DIR1,DIR2, each holding an eval.json).
"""

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "the run's config file[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run's directory (checkpoints/)")
_TASKS = flags.DEFINE_list("tasks", None, "tasks (default: mqar for MQAR runs, else perplexity)")
_LENGTHS = flags.DEFINE_list("lengths", [], "context lengths (default: the training length)")
_EXAMPLES = flags.DEFINE_integer("examples", 256, "examples per task and length")
_BATCH = flags.DEFINE_integer("batch_size", 16, "examples per forward pass")
_COMPARE = flags.DEFINE_list("compare", [], "other run directories whose eval.json to plot too")
flags.mark_flags_as_required(["config", "workdir"])
_assignments: list[tuple[str, str]] = []  # the --config.PATH=VALUE flags, for apply_overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from miras_jax.eval import evaluate, plot
  from miras_jax.train.settings import apply_overrides

  config = _CONFIG.value
  apply_overrides(config, _assignments)
  tasks = _TASKS.value or (["mqar"] if config.data.name == "mqar" else ["perplexity"])
  out = evaluate(
    config,
    _WORKDIR.value,
    tasks=tuple(tasks),
    lengths=tuple(int(x) for x in _LENGTHS.value),
    examples=_EXAMPLES.value,
    batch_size=_BATCH.value,
  )
  others = [json.loads((Path(d) / "eval.json").read_text()) for d in _COMPARE.value]
  if out["results"]:
    plot([out, *others], str(Path(out["workdir"]) / "eval.png"))
  print(json.dumps(out))


if __name__ == "__main__":
  from miras_jax.train.settings import assignment_flags_parser

  app.run(main, flags_parser=assignment_flags_parser(_assignments))
