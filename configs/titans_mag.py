"""Titans MAG (memory as gating, Eq 26–28).

Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/titans_mag.py:tiny --workdir=/tmp/titans_mag
  python -m experiments.train --config=configs/titans_mag.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("titans_mag", arg, preset="titans_lmm")
