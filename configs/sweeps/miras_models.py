"""Sweep (c): Moneta vs Yaad vs Memora vs Gated DeltaNet vs Transformer++ at about equal parameter
counts (MIRAS Tables 3–4, Fig 4: the MIRAS variants are competitive with or better than the
baselines on recall and needle tasks).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/miras_models.py --seeds=3   # MQAR
  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/miras_models.py:s_niah_pk --seeds=3
  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/miras_models.py:lr=0.01 --seeds=3   # MQAR, lr 1e-2

Every model has the same shape (2 blocks, width 64, 2 heads × 32); the MIRAS models use their
paper memory (2-layer GELU MLP with residual LayerNorm) and are the largest, so the SwiGLU width of
Gated DeltaNet (linear memory) and the Transformer is raised until their parameter count is the
nearest to Moneta's (``sweeps.match_params``); Yaad and Memora keep the common width. Configs:
``configs/sweeps/mqar.py`` (MQAR) and ``configs/sweeps/needle.py`` (S-NIAH-PK, trained and
evaluated at 128 and 256 bytes; the memory models are miras_lm, no attention). On the needle task
(lr 1e-2, 1000 steps) the MIRAS models' memories run with the sweeps' numerical guards
(``mqar.guard_options``: the inner-gradient clip, Moneta's and Memora's floors; not in the paper).

``lr=LR`` re-runs the MQAR comparison at another peak lr (the sweeps' 3e-3 is under-tuned for 300
steps: docs/results.md) as sweep ``miras_models_lr<lr>``, every memory with the sweeps' numerical
guards (``mqar.guard_options``), as on the needle task. ``clip=C`` runs the guarded
memories with another clip (sweep name + ``_clip<C>``). ``defaults=1`` (needle only) runs the
memories at the block's own defaults instead of the guards (sweep name + ``_defaults``):

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/miras_models.py:s_niah_pk,defaults=1 --seeds=3
"""

from configs import common
from configs.sweeps import mqar, needle

MODELS = ("moneta", "yaad", "memora", "gated_delta_net", "transformer")
MATCHED = ("gated_delta_net", "transformer")  # SwiGLU width raised to Moneta's parameter count


def get_config(arg: str | None = None):
  """``arg``: ``[TASK][,lr=LR][,clip=C][,defaults=1]``: TASK mqar (default) or s_niah_pk; LR the
  peak lr of every model with the numerical guards (MQAR only); C another inner clip of the
  guarded memories; defaults=1 the block's defaults instead of the guards (needle only). The
  sweep's name gets ``_lr<LR>``, ``_clip<C>`` and ``_defaults``."""
  o = common.parse_arg(arg, task="mqar", lr=0.0, clip=0.0, defaults=0)
  task, lr, clip, defaults = o["task"], float(o["lr"]), float(o["clip"]), int(o["defaults"])
  if task not in ("mqar", "s_niah_pk"):
    raise ValueError(f"task must be mqar or s_niah_pk; got {task!r}")
  if defaults and task != "s_niah_pk":
    raise ValueError("defaults=1 applies to the s_niah_pk sweep only (MQAR runs no guards)")
  if task == "mqar":
    configs = {m: mqar.get_config(m) for m in MODELS}
  else:
    configs = {m: needle.config(m, guards=not defaults) for m in MODELS}
  if lr:
    if task != "mqar":
      raise ValueError(f"lr= applies to the MQAR sweep only; got task {task}")
    for m, c in configs.items():
      guards = mqar.guard_options(m) if m != "transformer" else ()
      model = {"preset_options": guards} if guards else {}
      configs[m] = common.with_overrides(c, lr=lr, **model)
  if clip:  # another inner clip for the guarded memories (finding 4 of docs/results.md)
    configs = {m: mqar.with_inner_clip(c, clip) for m, c in configs.items()}
  name = "miras_models" if task == "mqar" else "miras_models_needle"
  name += (f"_lr{lr:g}" if lr else "") + (f"_clip{clip:g}" if clip else "")
  name += "_defaults" if defaults else ""
  length = mqar.SEQ_LEN if task == "mqar" else needle.CONTEXT
  lengths = (length,) if task == "mqar" else (length, 2 * length)  # needle: also 2× the training
  return common.sweep(name, f"MIRAS models vs baselines at ~equal parameters on {task}",
                      "token_accuracy" if task == "mqar" else "exact_match", (task,), lengths,
                      [(m, configs[m]) for m in MODELS],
                      match_params={m: "moneta" for m in MATCHED})  # fmt: skip
