"""Sweep (d): the memory's chunk size b on MQAR (Titans §3.2 / MIRAS: the memory is updated once
per chunk of b tokens in the parallel form; smaller chunks update more often, which should be
more accurate, but run more sequential chunk steps, which is slower).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/chunk_size.py --seeds=3

Variants: miras_lm with the titans_lmm memory (2-layer MLP, mini-batch chunked form) and
``chunk_size`` 4, 16 (the sweeps' default) and 64 (= the whole 64-token MQAR sequence: one memory
update per sequence for the gradient's base point), config ``configs/sweeps/mqar.py``. The
``chunk16`` runs are reused from the memory-depth sweep (same config) when it has them.
"""

from configs import common
from configs.sweeps import mqar

CHUNKS = (4, 16, 64)  # the memory's chunk sizes b


def get_config(arg: str | None = None):
  base = mqar.get_config("titans_lmm")
  variants = [(f"chunk{b}", common.with_overrides(base, chunk_size=b)) for b in CHUNKS]
  return common.sweep("chunk_size", "Titans LMM chunk size on MQAR", "token_accuracy", ("mqar",),
                      (mqar.SEQ_LEN,), variants, reuse={"chunk16": ("memory_depth", "mlp_LM2")})  # fmt: skip
