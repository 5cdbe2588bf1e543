"""Hope at CPU scale on the sweeps' MQAR task: the base of the Table 6 ablation
(``experiments/sweep_hope_ablation.py``). Narrower than the other sweeps' models (width 32): Hope's
token-serial inner writes cost about 0.9 s per step on 2 CPU cores at this size.

  python -m experiments.train --config=configs/sweeps/hope_mqar.py --workdir=/tmp/hope_mqar
  python -m experiments.train --config=configs/sweeps/hope_mqar.py:hope_attention --workdir=/tmp/ha

``arg``: hope (default) or hope_attention.
"""

import ml_collections

from configs import common
from configs.sweeps import mqar


def get_config(arg: str | None = None):
  name = arg or "hope"
  overrides = dict(
    vocab=mqar.VOCAB,  # MQAR vocabulary
    dim=32,  # model width
    layers=2,  # blocks
    heads=2,  # heads of the mixer
    head_dim=16,  # head dim (each self-modifying memory maps 16 → 32 → 16)
    mlp_hidden=64,  # width of each CMS level (or the SwiGLU without CMS)
    cms_chunk_sizes=(4, 8, 32),  # CMS levels update every 4, 8 and 32 tokens
    cms_lrs=(1e-2, 1e-2, 1e-2),  # inner rate of each CMS level
  )
  if name == "hope":
    overrides.update(chunk_size=8, memory_chunk_size=8)  # self-modifying memories' chunks
  c = common.base(name, "tiny", **overrides)
  c.data.name = "mqar"
  c.data.options = ml_collections.ConfigDict(
    dict(seq_len=mqar.SEQ_LEN, vocab=mqar.VOCAB, num_pairs=mqar.PAIRS, train_size=20000,
         test_size=512, seed=0)
  )  # the sweeps' MQAR options (configs/sweeps/mqar.py)  # fmt: skip
  c.data.data_dir = mqar.DATA_DIR  # prepared datasets shared with the other sweeps
  c.data.eval_split = "test"  # held-out split of the loop's evaluation
  c.data.pack_len = 0  # MQAR examples are fixed-length
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.warmup_steps = 30  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # no decoupled weight decay (a short synthetic run)
  c.train.steps = 200  # optimizer steps
  c.train.batch_size = 16  # sequences per step
  c.train.log_every = 10  # steps between metric lines (the loss curve)
  c.train.eval_every = 0  # the loop evaluates at the end only
  c.train.eval_batches = 4  # batches of the loop's final evaluation
  c.train.checkpoint_every = 100000  # one checkpoint, at the end (evaluate restores it)
  c.train.keep_checkpoints = 1  # only the final checkpoint is needed
  c.train.async_checkpoints = False  # the sweep evaluates right after training
  return c
