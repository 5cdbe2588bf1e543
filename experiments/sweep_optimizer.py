"""Sweep (f, issue 7): the M3 optimizer (Nested Learning, ``optimizer.name="m3"``) vs AdamW on the
tiny MQAR model of ``configs/mqar.py``: same model, data, steps, batch and schedule shape, each
optimizer over its own grid of peak learning rates (``LRS``).

  nice -n 5 .venv/bin/python -m experiments.sweep_optimizer --seeds=3 --steps=300

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

import json
from pathlib import Path

from absl import app, flags

from configs import mqar
from experiments import sweeplib

SWEEP = "optimizer"
BATCH = 16  # sequences per step (configs/mqar.py: 32)
DEFAULT_STEPS = 300  # steps when --steps is 0 (configs/mqar.py: 600)


LRS = {
  "adamw": (1e-3, 3e-3, 1e-2),  # around the configs' 3e-3
  "m3": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3),  # down to where M3's first steps match Adam's size
  "muon": (3e-3, 1e-2, 3e-2),  # orthogonalised EMA momentum without M3's sums and 1/√V
}  # peak learning rates per optimizer


def variants():
  out = []
  for name, lrs in LRS.items():
    for lr in lrs:
      c = mqar.get_config()
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
      out.append((f"{name}_lr{lr:g}", c))
  return out


def plot_curves(lines, path):
  """Training loss against step: one panel per optimizer, one colour per peak lr, one thin line
  per seed (a diverged run's line stops where its loss stopped being finite)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(LRS), figsize=(4 * len(LRS), 3.6), sharey=True)
  for ax, (optimizer, lrs) in zip(axes, LRS.items(), strict=True):
    for i, lr in enumerate(lrs):
      runs = [r for r in lines if r["variant"] == f"{optimizer}_lr{lr:g}"]
      for j, r in enumerate(sorted(runs, key=lambda r: r["seed"])):
        steps = [step for step, _ in r["loss_curve"]]
        losses = [float("nan") if loss is None else loss for _, loss in r["loss_curve"]]
        ax.plot(
          steps, losses, color=f"C{i}", alpha=0.8, lw=1, label=f"lr {lr:g}" if j == 0 else None
        )
    ax.set_title(optimizer, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("training loss (masked answer tokens)")
  fig.suptitle("M3 vs AdamW vs Muon on MQAR (configs/mqar.py model), one line per seed", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def first_step(config) -> dict:
  """The first update per unit of lr, ``Δθ / lr``, of ``config``'s optimizer (constant lr) on one
  training batch from ``train.seed``'s init: its RMS over all parameters, and the parameter with the
  largest RMS (name, RMS, largest element, RMS of its gradient)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from miras_jax.train import mesh as mesh_lib
  from miras_jax.train.loop import _loader, _sources, _workdir, build
  from miras_jax.train.settings import settings_from_config
  from miras_jax.train.step import make_eval_step, make_train_step

  config = sweeplib.with_overrides(config)
  with config.unlocked():
    config.optimizer.warmup_steps = 0  # the peak lr from the first step
    config.optimizer.min_lr_ratio = 1.0
  run = settings_from_config(config)
  built = build(run, mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  graphdef, tx, init = built.graphdef, built.tx, built.init
  state = init(jax.random.key(run.train.seed))
  source, _ = _sources(run, _workdir(run.data.data_dir))
  batch = {k: jnp.asarray(v) for k, v in next(_loader(source, run, seed=run.train.seed, eval_=False)).items()}  # fmt: skip
  new, _ = jax.jit(make_train_step(graphdef, tx))(state, batch)
  lr = run.optimizer.lr
  paths, before = zip(*jax.tree_util.tree_flatten_with_path(state.params)[0], strict=True)
  steps = [np.asarray(b - a) / lr for a, b in zip(before, jax.tree.leaves(new.params), strict=True)]
  rms = [float(np.sqrt(np.mean(x * x))) for x in steps]
  worst = int(np.argmax(rms))

  def loss(params):  # the train step's loss: masked nll sum / tokens
    nll, _, tokens = make_eval_step(graphdef)(params, batch)
    return nll / tokens

  grad = jax.grad(loss)(state.params)
  g = np.asarray(jax.tree.leaves(grad)[worst])
  return {
    "optimizer": run.optimizer.name,
    "lr": lr,
    "rms": float(np.sqrt(sum(float(np.sum(x * x)) for x in steps) / sum(x.size for x in steps))),
    "largest": {
      "param": jax.tree_util.keystr(paths[worst]),
      "shape": list(steps[worst].shape),
      "rms": rms[worst],
      "max_abs": float(np.max(np.abs(steps[worst]))),
      "grad_rms": float(np.sqrt(np.mean(g * g))),
    },
  }


FIRST_STEP = ("adamw_lr0.003", "m3_lr0.0003", "muon_lr0.01")  # best rate of each (table)


def main(argv):
  del argv
  f = flags.FLAGS
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.get_config().data.options.seq_len,),
                metric="token_accuracy", title="M3 vs AdamW on MQAR")  # fmt: skip
  lines = sweeplib.read_lines(Path(f.out) / SWEEP / "results.jsonl")
  plot_curves(lines, str(Path(f.docs) / "optimizer_loss.png"))
  configs = dict(variants())
  sizes = [dict(variant=name, **first_step(configs[name])) for name in FIRST_STEP]
  (Path(f.docs) / "optimizer_first_step.json").write_text(json.dumps(sizes, indent=1) + "\n")
  for row in sizes:
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
