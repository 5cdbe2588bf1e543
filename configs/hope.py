"""Hope (Nested Learning Eq 94–97): self-modifying Titans + Continuum Memory System in a Llama-style
LM. Sizes: tiny (default, CPU), 170m, 340m, 760m, 1.3b. Language modelling on the local text corpus
(Tiny Shakespeare unless --config.data.options.corpus_dir=DIR or --config.data.name=<tfds name>).

  python -m experiments.train --config=configs/hope.py:tiny --workdir=/tmp/hope
  python -m experiments.train --config=configs/hope.py:340m --workdir=DIR --config.mesh.fsdp=8
"""

from configs import common


def get_config(arg: str | None = None):
  return common.model_config("hope", arg)
