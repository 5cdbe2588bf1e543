"""Titans MAC (memory as context, Eq 21–25).

Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/titans_mac.py:tiny --workdir=/tmp/titans_mac
  python -m experiments.train --config=configs/titans_mac.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("titans_mac", arg, preset="titans_lmm")
