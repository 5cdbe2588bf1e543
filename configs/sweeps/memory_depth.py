"""Sweep (a): deep (2-layer MLP) vs linear Titans memory on MQAR (Titans §3.1, §5.5 Fig 7: deeper
memories recall better).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/memory_depth.py --seeds=3

Variants (miras_lm, ``preset="titans_lmm"``, config ``configs/sweeps/mqar.py``): the memory
``M`` is linear (L_M = 1, ``preset_options=(("memory", "linear"),)``), the paper's 2-layer SiLU MLP
(L_M = 2, the preset's default) or a 3-layer one. Results: ``runs/sweeps/memory_depth/`` and
``docs/results/memory_depth.*``.
"""

from configs import common
from configs.sweeps import mqar

DEEP3 = {"depth": 3, "expansion": 4, "activation": "silu"}  # Titans' MLP with one more layer


def get_config(arg: str | None = None):
  base = mqar.get_config("titans_lmm")
  variants = [
    ("linear_LM1", common.with_overrides(base, preset_options=(("memory", "linear"),))),
    ("mlp_LM2", base),
    ("mlp_LM3", common.with_overrides(base, preset_options=(("memory", DEEP3),))),
  ]
  return common.sweep("memory_depth", "Titans memory depth on MQAR", "token_accuracy", ("mqar",),
                      (mqar.SEQ_LEN,), variants)  # fmt: skip
