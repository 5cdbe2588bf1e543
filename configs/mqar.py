"""MQAR (multi-query associative recall) with a small Titans LMM model: the CPU default that
``make train`` runs, offline, in a few minutes on 2 cores.

  python -m experiments.train --config=configs/mqar.py --workdir=/tmp/mqar
  python -m experiments.train --config=configs/mqar.py:titans_mac --workdir=/tmp/mqar_mac
  python -m experiments.train --config=configs/mqar.py:hope --workdir=/tmp/mqar_hope

``arg``: the model (default miras_lm with the titans_lmm memory). Chance accuracy on the queried
values is 1 / (vocab / 2).
"""

from configs import common


def get_config(arg: str | None = None):
  name = arg or "miras_lm"
  overrides = dict(vocab=64, dim=64, layers=2, heads=2, head_dim=32, mlp_hidden=128)
  if name == "hope":
    overrides.update(chunk_size=8, memory_chunk_size=8)
  if name == "miras_lm":
    overrides["preset"] = "titans_lmm"
  c = common.base(name, "tiny", **overrides)
  c.model.defaults.chunk_size = 16  # memory chunk of every model with a memory (Hope: 8, above)
  c.model.defaults.gate_rank = 16  # rank of the memory's gate projections, where it has them
  c.data.name = "mqar"
  c.data.options = common.ml_collections.ConfigDict(
    dict(seq_len=64, vocab=64, num_pairs=8, train_size=20000, test_size=512, seed=0)
  )  # builder options: sequence length, vocabulary, key-value pairs, examples per split, seed
  c.data.eval_split = "test"
  c.data.pack_len = 0  # MQAR examples are fixed-length
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  c.train.steps = 600
  c.train.batch_size = 32
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  return c
