"""Sweep (e): Titans MAC vs MAG vs MAL on recall beyond the attention window (Titans §5.3–5.4,
Table 2 / Fig 6: MAC ≥ MAG ≥ MAL on needle tasks longer than the attention span).

  nice -n 5 .venv/bin/python -m experiments.sweep_titans_variants --seeds=3                # MQAR
  nice -n 5 .venv/bin/python -m experiments.sweep_titans_variants --seeds=3 --task=s_niah_pk

The attention of each variant sees ``WINDOW`` = 16 tokens (MAC: segments of 16; MAG, MAL: a
16-token sliding window), fewer than the training context (MQAR: 64 tokens; S-NIAH-PK: 128), so
recall from further back must go through the memory (2-layer Titans MLP, chunk 16). Trained at one
length, evaluated at it and at longer ones (MQAR 64/128/256; S-NIAH-PK 128/256/512). Configs:
``configs/sweeps/mqar.py`` and ``configs/sweeps/needle.py``. ``--inner_clip=c`` runs the needle
task's guarded memories with another inner-gradient clip (sweep name + ``_clip<c>``).
"""

from absl import app, flags

from configs.sweeps import mqar, needle
from experiments import sweeplib

_TASK = flags.DEFINE_enum("task", "mqar", ["mqar", "s_niah_pk"], "task to train and evaluate on")
_CLIP = flags.DEFINE_float(
  "inner_clip", 0.0, "grad_clip of the clipped memories (0: the config's); sweep name + _clip<c>"
)

MODELS = ("titans_mac", "titans_mag", "titans_mal")


def variants(task: str):
  if task == "s_niah_pk":
    return [(m, needle.get_config(m)) for m in MODELS]
  out = []
  for m in MODELS:
    window = {"segment": needle.WINDOW} if m == "titans_mac" else {"window": needle.WINDOW}
    out.append((m, sweeplib.with_overrides(mqar.get_config(m), **window)))
  return out


def main(argv):
  del argv
  task = _TASK.value
  if task == "mqar":
    lengths, sweep, metric = (64, 128, 256), "titans_variants", "token_accuracy"
  else:
    lengths, sweep, metric = (128, 256, 512), "titans_variants_needle", "exact_match"
  todo = variants(task)
  if _CLIP.value:  # another inner clip for the guarded memories (finding 4 of docs/results.md)
    todo = [(n, mqar.with_inner_clip(c, _CLIP.value)) for n, c in todo]
    sweep += f"_clip{_CLIP.value:g}"
  sweeplib.main(sweep, todo, tasks=(task,), lengths=lengths, metric=metric,
                title=f"Titans MAC / MAG / MAL, attention window {needle.WINDOW}, on {task}")  # fmt: skip


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
