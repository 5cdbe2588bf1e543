"""Sweep (c′): the memory form or the rule? At lr 1e-2 on MQAR Moneta, Yaad and Memora stayed at
chance while the same-size Titans LMM learned (``miras_models.py:lr=0.01``, sweep (f)). They
differ in two things: the memory (MIRAS §5.4's residual form x + LN(W₁ GELU(W₂ x)) against Titans'
plain W₁ SiLU(W₂ x)) and the rule (ℓp / Huber bias and ℓq / decay retention against Titans' ℓ2
bias with momentum and decay). This sweep crosses them: the Titans, Moneta and Yaad rules each with
both memories, same parameter count (the LayerNorm has no parameters).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/memory_form.py --seeds=3

Setting: ``configs/sweeps/mqar.py`` at peak lr ``LR`` with the sweeps' numerical guards
(``mqar.guard_options``), as in ``miras_models.py:lr=0.01``, whose Moneta and Yaad runs are
reused for the residual-LN variants of those rules (same config).
"""

from configs import common
from configs.sweeps import mqar

LR = 1e-2  # peak lr (the MQAR re-run's)
PLAIN = {"depth": 2, "expansion": 4, "activation": "silu"}  # Titans §3.1 (titans_lmm's default)
RESIDUAL_LN = {"depth": 2, "expansion": 4, "activation": "gelu", "residual_ln": True}  # MIRAS §5.4
DEFAULT = {"titans_lmm": "plain", "moneta": "residual_ln", "yaad": "residual_ln"}  # preset memory
REUSE = {f"{p}_residual_ln": (f"miras_models_lr{LR:g}", p) for p in ("moneta", "yaad")}


def get_config(arg: str | None = None):
  variants = []
  for preset, default in DEFAULT.items():
    for form, memory in (("plain", PLAIN), ("residual_ln", RESIDUAL_LN)):
      options = mqar.guard_options(preset)
      if form != default:  # the preset's own memory is left implicit (its runs are reused)
        options += (("memory", memory),)
      c = common.with_overrides(mqar.get_config(preset), lr=LR, preset_options=options)
      variants.append((f"{preset}_{form}", c))
  return common.sweep("memory_form", f"Memory form x rule on MQAR (lr {LR:g}, guards)",
                      "token_accuracy", ("mqar",), (mqar.SEQ_LEN,), variants, reuse=REUSE)  # fmt: skip
