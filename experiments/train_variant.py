r"""One MQAR run of a model variant in the ``make train`` setting, with model fields as JSON.

    python -m experiments.train_variant --name=moneta_lr01 --model=moneta \
      --overrides='{"max_lr": 0.01}' --workdir_root=runs/variants --out=docs/results/miras_learn.jsonl

``--model``: a model name (``titans_mac``, …) or a memory preset (then ``miras_lm`` with it);
``--overrides``: fields of the model's config class (pairs such as ``preset_options`` as lists of
[name, value] pairs, tuples as lists), set on ``configs/mqar.py`` (600 steps, batch 32, peak lr
``--lr``). One checkpoint at the end, no mid-run evaluation (the loop's final evaluation gives
``acc``). Appends one JSON line to ``--out``: name, model, overrides, lr, steps, seed, task (when not
the default), eval accuracy and loss, status and seconds. A workdir that holds a checkpoint resumes.

``--task``: ``mqar64`` (``configs/mqar.py``'s data: 64 tokens, 8 pairs, vocabulary 64) or
``mqar256``, the harder MQAR of issue 14's protocol (256 tokens, 32 pairs, vocabulary 256; chance
1/128), same model shape, budget and schedule.
"""

from __future__ import annotations

import json

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """The flags (defined when run as a script, so that tests can import ``variant_config``)."""
  flags.DEFINE_string("name", None, "Variant name (its workdir and the line's name).")
  flags.DEFINE_string("model", "titans_lmm", "Model name or memory preset.")
  flags.DEFINE_string("overrides", "{}", "JSON object of model config fields.")
  flags.DEFINE_float("lr", 3e-3, "Peak learning rate.")
  flags.DEFINE_integer("steps", 600, "Optimizer steps.")
  flags.DEFINE_integer("seed", 0, "Parameter init and data order.")
  flags.DEFINE_string("workdir_root", "runs/variants", "Parent of the run's workdir.")
  flags.DEFINE_string("data_dir", "runs/variants/tfds", "Prepared datasets (shared by runs).")
  flags.DEFINE_string("out", "runs/variants/results.jsonl", "JSON-lines file the result goes to.")
  flags.DEFINE_enum("task", "mqar64", list(TASKS), "MQAR setting (TASKS).")
  flags.mark_flags_as_required(["name"])


TASKS = {  # --task → MQAR builder options replacing configs/mqar.py's (the vocabulary also the model's)
  "mqar64": {},
  "mqar256": dict(seq_len=256, num_pairs=32, vocab=256),
}


def variant_config(
  model: str, overrides: dict, *, lr: float, steps: int, seed: int, data_dir: str, task="mqar64"
):
  """``configs/mqar.py`` for ``model`` with ``overrides`` (JSON lists become tuples), on ``task``
  (a key of ``TASKS``)."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
  from configs import common, mqar
  from miras_jax import models

  overrides = dict(overrides)
  model, preset = models.resolve(model)  # a memory preset: miras_lm with that rule
  if preset is not None:
    overrides["preset"] = preset
  tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v  # JSON lists
  overrides = {k: tuples(v) for k, v in overrides.items()}
  if "vocab" in TASKS[task]:
    overrides.setdefault("vocab", TASKS[task]["vocab"])
  c = common.with_overrides(mqar.get_config(model), lr=lr, steps=steps, **overrides)
  with c.unlocked():
    c.train.seed = seed
    c.data.data_dir = data_dir
    c.train.eval_every = 0  # the final evaluation only
    c.train.checkpoint_every = 100000  # one checkpoint, at the end
    c.train.keep_checkpoints = 1
    c.train.async_checkpoints = False
    c.data.options.update(TASKS[task])
  return c


def main(argv):
  del argv
  from miras_jax.eval import sweeps
  from miras_jax.train.loop import train

  overrides = json.loads(FLAGS.overrides)
  c = variant_config(FLAGS.model, overrides, lr=FLAGS.lr, steps=FLAGS.steps, seed=FLAGS.seed,
                     data_dir=FLAGS.data_dir, task=FLAGS.task)  # fmt: skip
  sweeps.quiet()
  summary = train(c, f"{FLAGS.workdir_root}/{FLAGS.name}")
  line = dict(name=FLAGS.name, model=FLAGS.model, overrides=overrides, lr=FLAGS.lr,
              steps=FLAGS.steps, seed=FLAGS.seed, **({"task": FLAGS.task} if FLAGS.task != "mqar64" else {}),
              acc=summary.get("eval/accuracy"),
              loss=summary.get("eval/loss"), status=summary.get("status"),
              seconds=round(summary.get("total_time_s", 0.0), 1))  # fmt: skip
  print(json.dumps(line), flush=True)
  with open(FLAGS.out, "a") as f:
    f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
