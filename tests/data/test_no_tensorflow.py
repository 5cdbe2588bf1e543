"""The data stack works without TensorFlow (and without flax), checked in a fresh interpreter.

The script installs an import hook that makes every ``import tensorflow…`` fail and records the
attempt, then builds MQAR, reads one batch and reports. (The obvious ``sys.modules["tensorflow"] =
None`` cannot be used: tfds decides whether TensorFlow is loaded by ``"tensorflow" in sys.modules``,
so that entry makes tfds itself try ``tf.dtypes`` and fail at import time.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
  """
  import importlib.abc, importlib.machinery, json, sys

  attempts = []

  class _Fail(importlib.abc.Loader):
    def create_module(self, spec):
      attempts.append(spec.name)
      raise ImportError(f"TensorFlow is blocked in this test: {spec.name}")

    def exec_module(self, module):
      raise ImportError("blocked")

  class _BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name == "tensorflow" or name.startswith("tensorflow."):
        return importlib.machinery.ModuleSpec(name, _Fail())
      return None

  sys.meta_path.insert(0, _BlockTensorFlow())

  import tensorflow_datasets as tfds
  from miras_jax import data

  builder = data.prepare(
    "mqar", sys.argv[1], seq_len=16, vocab=32, num_pairs=2, train_size=8, test_size=4
  )
  source = tfds.data_source(f"mqar/{builder.builder_config.name}", split="train", data_dir=sys.argv[1])
  batch = next(data.make_loader(source, batch_size=4, seed=0, shard_index=0, shard_count=1))
  print(json.dumps({
    "shapes": {k: list(v.shape) for k, v in batch.items()},
    "attempts": attempts,
    "tensorflow_loaded": "tensorflow" in sys.modules,
    "flax_loaded": "flax" in sys.modules,
  }))
  """
)


def test_builds_and_loads_without_tensorflow(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["shapes"] == {"inputs": [4, 16], "targets": [4, 16], "mask": [4, 16]}
  assert report["attempts"] == [], "something tried to import TensorFlow"
  assert not report["tensorflow_loaded"]
  assert not report["flax_loaded"], "miras_jax.data must not import flax"
