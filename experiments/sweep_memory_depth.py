"""Sweep (a): deep (2-layer MLP) vs linear Titans memory on MQAR (Titans §3.1, §5.5 Fig 7: deeper
memories recall better).

  nice -n 5 .venv/bin/python -m experiments.sweep_memory_depth --seeds=3

Variants (miras_lm, ``preset="titans_lmm"``, config ``configs/sweeps/mqar.py``): the memory
``M`` is linear (L_M = 1, ``preset_options=(("memory", "linear"),)``), the paper's 2-layer SiLU MLP
(L_M = 2, the preset's default) or a 3-layer one. Results: ``runs/sweeps/memory_depth/`` and
``docs/results/memory_depth.*``.
"""

from absl import app

from configs.sweeps import mqar
from experiments import sweeplib

SWEEP = "memory_depth"
DEEP3 = {"depth": 3, "expansion": 4, "activation": "silu"}  # Titans' MLP with one more layer


def variants():
  base = mqar.get_config("titans_lmm")
  return [
    ("linear_LM1", sweeplib.with_overrides(base, preset_options=(("memory", "linear"),))),
    ("mlp_LM2", base),
    ("mlp_LM3", sweeplib.with_overrides(base, preset_options=(("memory", DEEP3),))),
  ]


def main(argv):
  del argv
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.SEQ_LEN,), metric="token_accuracy",
                title="Titans memory depth on MQAR")  # fmt: skip


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
