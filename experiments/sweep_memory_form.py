"""Sweep (c′): the memory form or the rule? At lr 1e-2 on MQAR Moneta, Yaad and Memora stayed at
chance while the same-size Titans LMM learned (``sweep_miras_models --lr=1e-2``, sweep (f)). They
differ in two things: the memory (MIRAS §5.4's residual form x + LN(W₁ GELU(W₂ x)) against Titans'
plain W₁ SiLU(W₂ x)) and the rule (ℓp / Huber bias and ℓq / decay retention against Titans' ℓ2
bias with momentum and decay). This sweep crosses them: the Titans, Moneta and Yaad rules each with
both memories, same parameter count (the LayerNorm has no parameters).

  nice -n 5 .venv/bin/python -m experiments.sweep_memory_form --seeds=3

Setting: ``configs/sweeps/mqar.py`` at peak lr ``LR`` with the sweeps' numerical guards
(``mqar.guard_options``), as in ``sweep_miras_models --lr=1e-2``, whose Moneta and Yaad runs are
reused for the residual-LN variants of those rules (same config).
"""

from absl import app

from configs.sweeps import mqar
from experiments import sweeplib

SWEEP = "memory_form"
LR = 1e-2  # peak lr (the MQAR re-run's)
PLAIN = {"depth": 2, "expansion": 4, "activation": "silu"}  # Titans §3.1 (titans_lmm's default)
RESIDUAL_LN = {"depth": 2, "expansion": 4, "activation": "gelu", "residual_ln": True}  # MIRAS §5.4
DEFAULT = {"titans_lmm": "plain", "moneta": "residual_ln", "yaad": "residual_ln"}  # preset memory
REUSE = {f"{p}_residual_ln": (f"miras_models_lr{LR:g}", p) for p in ("moneta", "yaad")}


def variants():
  out = []
  for preset, default in DEFAULT.items():
    for form, memory in (("plain", PLAIN), ("residual_ln", RESIDUAL_LN)):
      options = mqar.guard_options(preset)
      if form != default:  # the preset's own memory is left implicit (its runs are reused)
        options += (("memory", memory),)
      c = sweeplib.with_overrides(mqar.get_config(preset), lr=LR, preset_options=options)
      out.append((f"{preset}_{form}", c))
  return out


def main(argv):
  del argv
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.SEQ_LEN,), metric="token_accuracy",
                title=f"Memory form x rule on MQAR (lr {LR:g}, guards)", reuse=REUSE)  # fmt: skip


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
