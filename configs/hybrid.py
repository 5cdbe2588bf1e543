"""Samba-style hybrids (Moneta-H; --config.model.overrides.preset=yaad / memora / gated_delta_net for the others).

Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/hybrid.py:tiny --workdir=/tmp/hybrid
  python -m experiments.train --config=configs/hybrid.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("hybrid_lm", arg, preset="moneta")
