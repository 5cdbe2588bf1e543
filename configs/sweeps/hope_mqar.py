"""Hope at CPU scale on the sweeps' MQAR task: the base of the Table 6 ablation
(``configs/sweeps/hope_ablation.py``). Narrower than the other sweeps' models (width 32): Hope's
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
  c = mqar.short_run(c)
  c.train.steps = 200  # optimizer steps (Hope is ~1.7 s per step on 2 CPU cores)
  return c
