"""Sweep (e): Titans MAC vs MAG vs MAL on recall beyond the attention window (Titans §5.3–5.4,
Table 2 / Fig 6: MAC ≥ MAG ≥ MAL on needle tasks longer than the attention span).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/titans_variants.py --seeds=3   # MQAR
  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/titans_variants.py:s_niah_pk --seeds=3

The attention of each variant sees ``WINDOW`` = 16 tokens (MAC: segments of 16; MAG, MAL: a
16-token sliding window), fewer than the training context (MQAR: 64 tokens; S-NIAH-PK: 128), so
recall from further back must go through the memory (2-layer Titans MLP, chunk 16). Trained at one
length, evaluated at it and at longer ones (MQAR 64/128/256; S-NIAH-PK 128/256/512). Configs:
``configs/sweeps/mqar.py`` and ``configs/sweeps/needle.py``. The argument ``clip=C`` runs the needle
task's guarded memories with another inner-gradient clip (sweep name + ``_clip<C>``);
``defaults=1`` runs its memories at the block's defaults instead of the guards:

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/titans_variants.py:s_niah_pk,defaults=1 --seeds=3
"""

from configs import common
from configs.sweeps import mqar, needle

MODELS = ("titans_mac", "titans_mag", "titans_mal")


def get_config(arg: str | None = None):
  """``arg``: ``[TASK][,clip=C][,defaults=1]``: TASK mqar (default) or s_niah_pk; C another inner
  clip of the guarded memories (the sweep's name gets ``_clip<C>``); defaults=1 (needle only) the
  block's defaults instead of the guards (name + ``_defaults``)."""
  o = common.parse_arg(arg, task="mqar", clip=0.0, defaults=0)
  task, clip, defaults = o["task"], float(o["clip"]), int(o["defaults"])
  if defaults and task != "s_niah_pk":
    raise ValueError("defaults=1 applies to the s_niah_pk sweep only (MQAR runs no guards)")
  if task == "s_niah_pk":
    variants = [(m, needle.config(m, guards=not defaults)) for m in MODELS]
    lengths, name, metric = (128, 256, 512), "titans_variants_needle", "exact_match"
    name += "_defaults" if defaults else ""
  elif task == "mqar":
    variants = []
    for m in MODELS:
      window = {"segment": needle.WINDOW} if m == "titans_mac" else {"window": needle.WINDOW}
      variants.append((m, common.with_overrides(mqar.get_config(m), **window)))
    lengths, name, metric = (64, 128, 256), "titans_variants", "token_accuracy"
  else:
    raise ValueError(f"task must be mqar or s_niah_pk; got {task!r}")
  if clip:  # another inner clip for the guarded memories (finding 4 of docs/results.md)
    variants = [(n, mqar.with_inner_clip(c, clip)) for n, c in variants]
    name += f"_clip{clip:g}"
  return common.sweep(name, f"Titans MAC / MAG / MAL, attention window {needle.WINDOW}, on {task}",
                      metric, (task,), lengths, variants)  # fmt: skip
