r"""Recall capacity of every parametric preset's memory before training (``miras_jax.eval.capacity``).

    python -m experiments.bench_capacity                       # the table of docs/benchmarks.md
    python -m experiments.bench_capacity --presets=moneta,yaad --pairs=8 --d=32

For each preset, the memory block the models build (``nn.NeuralMemory`` at head dim ``--d``: its
rule, initial memory, gate values at initialisation and ``max_lr`` cap) writes n random pairs
(unit keys, N(0, I) values) in one pass with a constant inner lr η and retention 1, then reads them
back with the same keys. One JSON line per (preset, n, η): mean cosine(read, value) and the
nearest-value accuracy among the n values, in the models' chunked form (``--chunk``, the MQAR
configs' 16) over ``--trials`` random draws. η runs over ``max_lr`` × {0.01, 0.03, 0.1, 0.3, 1}
(the range the block's gate can reach) unless ``--lrs`` is given. ``--table=FILE`` prints the
markdown tables of docs/benchmarks.md from such a file.
"""

from __future__ import annotations

import json

from absl import app, flags

import miras_jax as mj
from miras_jax.eval import capacity

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", None, "Presets (default: every preset a NeuralMemory accepts).")
flags.DEFINE_list("pairs", ["1", "4", "8", "16", "32"], "Numbers n of pairs written.")
flags.DEFINE_list("lrs", None, "Inner learning rates η (default: max_lr × 0.01…1).")
flags.DEFINE_integer("d", 32, "Head dim (d_k = d_v), the MQAR configs' 32.")
flags.DEFINE_integer("chunk", 16, "Chunk size of the memory's chunked form (1: token-serial).")
flags.DEFINE_integer("trials", 32, "Random draws of keys and values per cell.")
flags.DEFINE_multi_string("option", [], "preset option name=value (python literal), repeatable.")
flags.DEFINE_string("table", None, "Print the markdown tables of a JSON-lines file and exit.")

FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)


def default_presets() -> list[str]:
  """Every parametric preset a ``NeuralMemory`` writes one key per token with."""
  out = []
  for name in mj.presets.names():
    rule = mj.presets.get(name)
    if isinstance(rule, mj.Rule) and not rule.multi_step:
      out.append(name)
  return out


def tables(lines: list[dict]) -> str:
  """Two markdown tables: 8 pairs across η (cosine / accuracy), and the best η for each n."""
  presets = list(dict.fromkeys(x["preset"] for x in lines))
  eights = [x for x in lines if x["pairs"] == 8]
  out = ["| preset | memory | max_lr | " + " | ".join(f"η = {f:g}·max_lr" for f in FRACTIONS)
         + " |", "|---|---|---|" + "---|" * len(FRACTIONS)]  # fmt: skip
  for p in presets:
    row = sorted((x for x in eights if x["preset"] == p), key=lambda x: x["lr"])
    if not row:
      continue
    cells = [f"{x['cosine']:.2f} / {x['accuracy']:.2f}" for x in row]
    out.append(f"| {p} | {row[0]['memory']} | {row[0]['max_lr']:g} | " + " | ".join(cells) + " |")
  ns = sorted({x["pairs"] for x in lines})
  out += ["", "| preset | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
  for p in presets:
    cells = []
    for n in ns:
      if not any(x["preset"] == p and x["pairs"] == n for x in lines):
        cells.append("")
        continue
      best = max((x for x in lines if x["preset"] == p and x["pairs"] == n),
                 key=lambda x: x["accuracy"] + 1e-3 * x["cosine"])  # fmt: skip
      cells.append(f"{best['accuracy']:.2f} ({best['cosine']:.2f}, η {best['lr']:g})")
    out.append(f"| {p} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def main(argv):
  del argv
  import ast

  if FLAGS.table:
    with open(FLAGS.table) as f:
      print(tables([json.loads(line) for line in f if line.strip()]))
    return

  options = {}
  for item in FLAGS.option:
    key, _, value = item.partition("=")
    options[key] = ast.literal_eval(value)
  for preset in FLAGS.presets or default_presets():
    block = capacity.block_memory(preset, FLAGS.d, preset_options=options)
    lrs = [float(x) for x in FLAGS.lrs] if FLAGS.lrs else [f * block.max_lr for f in FRACTIONS]
    for n in map(int, FLAGS.pairs):
      rows = capacity.recall(block, n, lrs, trials=FLAGS.trials, chunk_size=FLAGS.chunk)
      for lr, r in zip(lrs, rows, strict=True):
        line = dict(preset=preset, options=options, memory=block.rule.memory.name, d=FLAGS.d,
                    chunk=FLAGS.chunk, pairs=n, lr=round(lr, 6), max_lr=block.max_lr,
                    cosine=round(r["cosine"], 4), accuracy=round(r["accuracy"], 4))  # fmt: skip
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
  app.run(main)
