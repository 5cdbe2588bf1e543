"""The sweeps' needle config: RULER S-NIAH-PK (a 5–7 digit passkey in repeated noise sentences),
byte level (vocab 256), trained at one context length; the sweeps evaluate at several.

  python -m experiments.train --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle
  python -m experiments.eval --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle \
    --tasks=s_niah_pk --lengths=128,256,512

``arg``: a model name (default titans_mac) or a memory preset name (then miras_lm with that
preset). The hybrid models get an attention window / segment of ``WINDOW`` tokens, shorter than
the training context, so the needle is out of the attention's reach and only the memory can carry
it. Sizes follow ``configs/sweeps/mqar.py``.
"""

import ml_collections

from configs import common
from miras_jax import models

DATA_DIR = "runs/sweeps/tfds"  # prepared datasets, shared by all sweep runs (git-ignored)
CONTEXT = 128  # training context length (bytes; S-NIAH-PK needs >= 108)
WINDOW = 16  # sliding window (MAG, MAL) / segment (MAC) of the attention, < CONTEXT


def get_config(arg: str | None = None):
  name = arg or "titans_mac"
  overrides = dict(vocab=256, dim=64, layers=2, heads=2, head_dim=32, mlp_hidden=128)
  if name not in models.names():
    overrides["preset"] = name  # a memory preset: miras_lm with that rule
    name = "miras_lm"
  if name != "transformer":
    overrides.update(chunk_size=16, gate_rank=16)
  if name in ("titans_mag", "titans_mal", "hybrid_lm"):
    overrides["window"] = WINDOW
  if name == "titans_mac":
    overrides["segment"] = WINDOW
  c = common.base(name, "tiny", **overrides)
  c.data.name = "s_niah"
  c.data.options = ml_collections.ConfigDict(
    dict(kind="pk", context_len=CONTEXT, filler="noise", train_size=20000, test_size=256, seed=0)
  )  # builder options: needle kind, context length, haystack filler, examples per split, seed
  c.data.data_dir = DATA_DIR  # prepared datasets shared by every run of the sweeps
  c.data.eval_split = "test"  # held-out split of the loop's evaluation
  c.data.pack_len = 0  # needle examples are fixed-length
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.warmup_steps = 30  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # no decoupled weight decay (a short synthetic run)
  c.train.steps = 300  # optimizer steps
  c.train.batch_size = 16  # sequences per step
  c.train.log_every = 10  # steps between metric lines (the loss curve)
  c.train.eval_every = 0  # the loop evaluates at the end only
  c.train.eval_batches = 4  # batches of the loop's final evaluation
  c.train.checkpoint_every = 100000  # one checkpoint, at the end (evaluate restores it)
  c.train.keep_checkpoints = 1  # only the final checkpoint is needed
  c.train.async_checkpoints = False  # the sweep evaluates right after training
  return c
