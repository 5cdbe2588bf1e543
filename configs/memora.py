"""Memora (MIRAS §5.3): the KL-retention memory in a Llama LM.

Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/memora.py:tiny --workdir=/tmp/memora
  python -m experiments.train --config=configs/memora.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("miras_lm", arg, preset="memora")
