"""Sweep (f, issue 7): the M3 optimizer (Nested Learning, ``optimizer.name="m3"``) vs AdamW on the
tiny MQAR model of ``configs/mqar.py``: same model, data, steps, batch and schedule shape, each
optimizer over its own grid of peak learning rates (``LRS``).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/optimizer.py --steps=300 --seeds=3

``configs/mqar.py`` trains 600 steps at batch 32; to fit the CPU budget this sweep trains
``--steps`` (default 300) at batch 16 (``BATCH``), both optimizers alike, with 50 warmup steps and
the config's cosine decay to 0.1 × peak. M3 runs with its defaults (β = (0.9, 0.95, 0.9): the
configs' b2, f = 100, cubic Newton–Schulz with 10 steps). Variants are named
``<optimizer>_lr<peak>``. Writes the seeds' training-loss curves
(``docs/results/optimizer_loss.png``) next to the usual table and accuracy plot, and
``docs/results/optimizer_first_step.json``: the size of each optimizer's first step per unit of
learning rate (``Δθ / lr``) on one batch of this model, overall and for the parameter where it is
largest. That is why M3 needs a far smaller peak lr than AdamW: Newton–Schulz makes every element of
NS(M1) about 1/√n whatever its own gradient, and the elementwise division by √V then scales it by
1/|g_ij| (Adam divides each element by its own second moment, so its ratio is about ±1).
"""

from configs import common
from configs import mqar as mqar_run

BATCH = 16  # sequences per step (configs/mqar.py: 32)
DEFAULT_STEPS = 300  # steps when --steps is 0 (configs/mqar.py: 600)
LRS = {
  "adamw": (1e-3, 3e-3, 1e-2),  # around the configs' 3e-3
  "m3": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3),  # down to where M3's first steps match Adam's size
  "muon": (3e-3, 1e-2, 3e-2),  # orthogonalised EMA momentum without M3's sums and 1/√V
}  # peak learning rates per optimizer
FIRST_STEP = ("adamw_lr0.003", "m3_lr0.0003", "muon_lr0.01")  # best rate of each (table)


def get_config(arg: str | None = None):
  variants = []
  for name, lrs in LRS.items():
    for lr in lrs:
      c = mqar_run.get_config()
      with c.unlocked():
        c.optimizer.name = name
        c.optimizer.lr = lr
        c.train.batch_size = BATCH
        c.train.steps = DEFAULT_STEPS
        c.train.eval_every = 0
        c.train.checkpoint_every = 100000
        c.train.keep_checkpoints = 1
        c.train.async_checkpoints = False
        c.train.log_every = 10
        c.data.data_dir = "runs/sweeps/tfds"
      variants.append((f"{name}_lr{lr:g}", c))
  seq_len = mqar_run.get_config().data.options.seq_len
  report = {"first_step": FIRST_STEP, "lrs": LRS}  # measured first updates; loss-curve panels
  return common.sweep("optimizer", "M3 vs AdamW on MQAR", "token_accuracy", ("mqar",), (seq_len,),
                      variants, report="optimizer", report_options=report)  # fmt: skip
