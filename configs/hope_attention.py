"""Hope-Attention (Nested Learning §8.3): softmax attention + Continuum Memory System per block.
Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus.

  python -m experiments.train --config=configs/hope_attention.py:tiny --workdir=/tmp/hope_attention
  python -m experiments.train --config=configs/hope_attention.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("hope_attention", arg)
