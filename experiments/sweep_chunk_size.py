"""Sweep (d): the memory's chunk size b on MQAR (Titans §3.2 / MIRAS: the memory is updated once
per chunk of b tokens in the parallel form; smaller chunks update more often, which should be
more accurate, but run more sequential chunk steps, which is slower).

  nice -n 5 .venv/bin/python -m experiments.sweep_chunk_size --seeds=3

Variants: miras_lm with the titans_lmm memory (2-layer MLP, mini-batch chunked form) and
``chunk_size`` 4, 16 (the sweeps' default) and 64 (= the whole 64-token MQAR sequence: one memory
update per sequence for the gradient's base point), config ``configs/sweeps/mqar.py``. The
``chunk16`` runs are reused from the memory-depth sweep (same config) when it has them.
"""

from absl import app

from configs.sweeps import mqar
from experiments import sweeplib

SWEEP = "chunk_size"
CHUNKS = (4, 16, 64)


def variants():
  base = mqar.get_config("titans_lmm")
  return [(f"chunk{b}", sweeplib.with_overrides(base, chunk_size=b)) for b in CHUNKS]


def main(argv):
  del argv
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.SEQ_LEN,), metric="token_accuracy",
                title="Titans LMM chunk size on MQAR",
                reuse={"chunk16": ("memory_depth", "mlp_LM2")})  # fmt: skip


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
