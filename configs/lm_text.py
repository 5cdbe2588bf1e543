"""Language modelling on a local text corpus (byte-level tokens), any model of the registry.

``arg``: a model name (default miras_lm with the Titans LMM memory), optionally ``name,size``.

  python -m experiments.train --config=configs/lm_text.py --workdir=/tmp/lm_text
  python -m experiments.train --config=configs/lm_text.py:titans_mac,tiny --workdir=/tmp/mac \
      --config.data.options.corpus_dir=/path/to/txt/dir --config.train.steps=2000
"""

from configs import common


def get_config(arg: str | None = None):
  name, _, size = (arg or "miras_lm").partition(",")
  return common.base(name, size or "tiny")
