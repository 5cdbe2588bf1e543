"""Data for miras_jax: synthetic tasks, tfds builders (array_record, no TensorFlow) and grain loaders.

Example::

  from miras_jax import data
  builder = data.prepare("mqar", "/tmp/tfds", seq_len=64, vocab=128, num_pairs=4,
                         train_size=1000, test_size=100)
  loader = data.make_loader(builder.as_data_source()["train"], batch_size=32, seed=0)
  batch = next(loader)            # {"inputs": int32 [32, 64], "targets": int32 [32, 64], "mask": bool}
  state = loader.get_state()      # JSON-serialisable; loader.set_state(state) resumes exactly

  text = data.prepare("text_corpus", "/tmp/tfds", corpus_dir="corpus/", max_doc_bytes=4096)
  lm = data.make_loader(text.as_data_source()["train"], batch_size=8, seed=0, pack_len=256)

  niah = data.prepare("s_niah", "/tmp/tfds", kind="pk", context_len=1024, depth=0.5)
  qa = data.prepare("babi", "/tmp/tfds", task="qa2", context_len=1024, num_facts=10)

This package imports neither flax nor TensorFlow (tests/data/test_no_tensorflow.py checks both).
"""

import importlib
import pkgutil

from miras_jax.data import registry

# Importing a task module registers its dataset and evaluations: every module here is imported.
for _info in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_info.name}")

from miras_jax.data.babi import (  # noqa: E402  # noqa: E402
  BabiBuilder,
  BabiConfig,
  babi,
  babi_config,
  babi_min_context_len,
  babi_solve,
)
from miras_jax.data.builders import prepare  # noqa: E402
from miras_jax.data.needle import (  # noqa: E402
  SNIAHBuilder,
  SNIAHConfig,
  s_niah,
  s_niah_config,
  s_niah_min_context_len,  # noqa: E402
)
from miras_jax.data.pipeline import Loader, make_loader  # noqa: E402
from miras_jax.data.synthetic import MQARBuilder, MQARConfig, mqar, mqar_config  # noqa: E402
from miras_jax.data.text_corpus import (  # noqa: E402
  TextCorpusBuilder,
  TextCorpusConfig,
  text_corpus_config,
)
from miras_jax.data.tokenizers import EOS_ID, ByteTokenizer, SentencePieceTokenizer  # noqa: E402

__all__ = [
  "EOS_ID",
  "BabiBuilder",
  "BabiConfig",
  "ByteTokenizer",
  "Loader",
  "MQARBuilder",
  "MQARConfig",
  "SNIAHBuilder",
  "SNIAHConfig",
  "SentencePieceTokenizer",
  "TextCorpusBuilder",
  "TextCorpusConfig",
  "babi",
  "babi_config",
  "babi_min_context_len",
  "babi_solve",
  "make_loader",
  "mqar",
  "mqar_config",
  "prepare",
  "s_niah",
  "s_niah_config",
  "s_niah_min_context_len",
  "registry",
  "text_corpus_config",
]
