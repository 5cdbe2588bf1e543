"""Sweep (f, issue 7): the M3 optimizer (Nested Learning, ``optimizer.name="m3"``) vs AdamW on the
tiny MQAR model of ``configs/mqar.py``: same model, data, steps, batch, learning-rate schedule.

  nice -n 5 .venv/bin/python -m experiments.sweep_optimizer --seeds=3 --steps=300

``configs/mqar.py`` trains 600 steps at batch 32; to fit the CPU budget this sweep trains
``--steps`` (default 300) at batch 16 (``BATCH``), both optimizers alike, with the config's peak lr
3e-3 and 50 warmup steps (M3 with its defaults: β = (0.9, 0.999, 0.9), f = 100, cubic Newton–Schulz
with 10 steps). Writes the seeds' training-loss curves (``docs/results/optimizer_loss.png``) next
to the usual table and accuracy plot.
"""

from pathlib import Path

from absl import app, flags

from configs import mqar
from experiments import sweeplib

SWEEP = "optimizer"
BATCH = 16  # sequences per step (configs/mqar.py: 32)
DEFAULT_STEPS = 300  # steps when --steps is 0 (configs/mqar.py: 600)


def variants():
  out = []
  for name in ("adamw", "m3"):
    c = mqar.get_config()
    with c.unlocked():
      c.optimizer.name = name
      c.train.batch_size = BATCH
      c.train.steps = DEFAULT_STEPS
      c.train.eval_every = 0
      c.train.checkpoint_every = 100000
      c.train.keep_checkpoints = 1
      c.train.async_checkpoints = False
      c.train.log_every = 10
      c.data.data_dir = "runs/sweeps/tfds"
    out.append((name, c))
  return out


def plot_curves(lines, path):
  """Training loss against step, one thin line per seed, coloured per variant."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  colours = {}
  for r in lines:
    colour = colours.setdefault(r["variant"], f"C{len(colours)}")
    steps = [step for step, _ in r["loss_curve"]]
    losses = [float("nan") if loss is None else loss for _, loss in r["loss_curve"]]
    label = (
      r["variant"]
      if r["seed"] == min(x["seed"] for x in lines if x["variant"] == r["variant"])
      else None
    )
    ax.plot(steps, losses, color=colour, alpha=0.8, lw=1, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (masked answer tokens)")
  ax.set_title("M3 vs AdamW on MQAR (configs/mqar.py model), one line per seed", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.get_config().data.options.seq_len,),
                metric="token_accuracy", title="M3 vs AdamW on MQAR")  # fmt: skip
  lines = sweeplib.read_lines(Path(f.out) / SWEEP / "results.jsonl")
  plot_curves(lines, str(Path(f.docs) / "optimizer_loss.png"))


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
