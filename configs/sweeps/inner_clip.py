"""Sweep (g): how much does the inner-gradient clip cost? The sweeps at lr 1e-2 clip every MLP
memory's per-token inner gradient to norm ``mqar.INNER_CLIP`` = 1 (``mqar.guard_options``), but
the diagnosed divergence had median per-token norms of ~11, so a clip of 1 shrinks most writes
about tenfold. This sweep runs the Titans LMM and Moneta on the sweeps' MQAR at lr 1e-2 with the
clip off, at 10, 3 and 1 (Moneta keeps its ℓq floor throughout).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/inner_clip.py --seeds=3

The clip-1 runs are those of ``sweep_memory_form`` (``titans_lmm_plain``) and
``miras_models.py:lr=0.01`` (``moneta``): same configs, reused.
"""

from configs import common
from configs.sweeps import mqar

LR = 1e-2  # peak lr (the MQAR re-run's)
CLIPS = {"titans_lmm": (None, 10.0, 3.0, 1.0), "moneta": (10.0, 1.0)}  # None: no clip
REUSE = {
  "titans_lmm_clip1": ("memory_form", "titans_lmm_plain"),
  "moneta_clip1": (f"miras_models_lr{LR:g}", "moneta"),
}


def get_config(arg: str | None = None):
  variants = []
  for preset, clips in CLIPS.items():
    for clip in clips:
      options = tuple((k, v) for k, v in mqar.guard_options(preset) if k != "grad_clip")
      if clip is not None:
        options = (("grad_clip", clip),) + options
      name = f"{preset}_clip{clip:g}" if clip is not None else f"{preset}_noclip"
      model = {"preset_options": options} if options else {}
      variants.append((name, common.with_overrides(mqar.get_config(preset), lr=LR, **model)))
  return common.sweep("inner_clip", f"Inner-gradient clip on MQAR (lr {LR:g})", "token_accuracy",
                      ("mqar",), (mqar.SEQ_LEN,), variants, reuse=REUSE)  # fmt: skip
