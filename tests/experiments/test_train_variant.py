"""The variant runner's config: configs/mqar.py with the given model fields, nothing else changed."""

import pytest

from configs import mqar
from experiments.train_variant import variant_config


def test_preset_becomes_miras_lm_with_that_memory_and_fields_are_set():
  c = variant_config(
    "yaad",
    {"delta_init": 20.0, "channel_gates": ["lr"], "preset_options": [["momentum", True]],
     "gate_init": [["retention", 0.998]]},
    lr=1e-2, steps=7, seed=3, data_dir="d",
  )  # fmt: skip
  assert c.model.name == "miras_lm" and c.model.overrides.preset == "yaad"
  assert c.model.overrides.delta_init == 20.0 and c.model.overrides.channel_gates == ("lr",)
  assert c.model.overrides.preset_options == (("momentum", True),)
  assert c.model.overrides.gate_init == (("retention", 0.998),)
  assert (c.optimizer.lr, c.train.steps, c.train.seed, c.data.data_dir) == (1e-2, 7, 3, "d")
  base = mqar.get_config("miras_lm")
  assert c.train.batch_size == base.train.batch_size and c.data.options == base.data.options


def test_model_names_pass_through():
  c = variant_config("titans_mac", {}, lr=3e-3, steps=600, seed=0, data_dir="d")
  assert (
    c.model.name == "titans_mac"
    and c.model.overrides == mqar.get_config("titans_mac").model.overrides
  )


def test_the_harder_mqar_changes_only_the_data_and_the_vocabulary():
  base = variant_config("moneta", {}, lr=3e-3, steps=600, seed=0, data_dir="d")
  hard = variant_config("moneta", {}, lr=3e-3, steps=600, seed=0, data_dir="d", task="mqar256")
  assert (hard.data.options.seq_len, hard.data.options.num_pairs) == (256, 32)
  assert hard.data.options.vocab == hard.model.overrides.vocab == 256
  assert base.data.options.seq_len == 64 and base.model.overrides.vocab == 64
  assert {k: v for k, v in hard.model.overrides.items() if k != "vocab"} == {
    k: v for k, v in base.model.overrides.items() if k != "vocab"
  }
  assert hard.train == base.train and hard.optimizer == base.optimizer
  with pytest.raises(ValueError, match="task must be one of mqar64, mqar256"):
    variant_config("moneta", {}, lr=3e-3, steps=600, seed=0, data_dir="d", task="mqar1k")
