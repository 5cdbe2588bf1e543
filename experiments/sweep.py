"""Runs any sweep: the spec in ``configs/sweeps/<sweep>.py`` (its docstring has the command).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/chunk_size.py --seeds=3
  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/miras_models.py:s_niah_pk

Each (variant, seed) trains and is evaluated once; a stopped sweep resumes (finished runs are
skipped, a half-trained run resumes from its checkpoint). ``--aggregate_only`` re-publishes the
finished runs' table, plot and lines to ``--docs``.
"""

from absl import app, flags
from ml_collections import config_flags

from miras_jax.eval import sweeps

_SWEEP = config_flags.DEFINE_config_file(
  "sweep", None, "a sweep spec: configs/sweeps/<sweep>.py[:arg]"
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "seeds per variant (0 … seeds-1)")
_OUT = flags.DEFINE_string("out", "runs/sweeps", "output root (OUT/<sweep>/…)")
_STEPS = flags.DEFINE_integer("steps", 0, "training steps per run (0: the config's)")
_DOCS = flags.DEFINE_string("docs", "docs/results", "where the table, plot and lines are published")
_AGGREGATE = flags.DEFINE_bool("aggregate_only", False, "only aggregate and publish finished runs")
_ONLY = flags.DEFINE_list("only", [], "run only these variants (default all)")
flags.mark_flag_as_required("sweep")


def main(argv):
  del argv
  sweeps.run(_SWEEP.value, seeds=_SEEDS.value, out=_OUT.value, steps=_STEPS.value,
             docs=_DOCS.value, aggregate_only=_AGGREGATE.value, only=_ONLY.value)  # fmt: skip


if __name__ == "__main__":
  app.run(main)
