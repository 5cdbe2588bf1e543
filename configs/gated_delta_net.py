"""Gated DeltaNet in the same Llama LM (baseline).

Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/gated_delta_net.py:tiny --workdir=/tmp/gated_delta_net
  python -m experiments.train --config=configs/gated_delta_net.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("miras_lm", arg, preset="gated_delta_net")
