"""The variant runner's config: configs/mqar.py with the given model fields, nothing else changed."""

from configs import mqar
from experiments.train_variant import variant_config


def test_preset_becomes_miras_lm_with_that_memory_and_fields_are_set():
  c = variant_config(
    "yaad", {"delta_init": 20.0, "channel_gates": ["lr"], "preset_options": [["momentum", True]]},
    lr=1e-2, steps=7, seed=3, data_dir="d",
  )  # fmt: skip
  assert c.model.name == "miras_lm" and c.model.overrides.preset == "yaad"
  assert c.model.overrides.delta_init == 20.0 and c.model.overrides.channel_gates == ("lr",)
  assert c.model.overrides.preset_options == (("momentum", True),)
  assert (c.optimizer.lr, c.train.steps, c.train.seed, c.data.data_dir) == (1e-2, 7, 3, "d")
  base = mqar.get_config("miras_lm")
  assert c.train.batch_size == base.train.batch_size and c.data.options == base.data.options


def test_model_names_pass_through():
  c = variant_config("titans_mac", {}, lr=3e-3, steps=600, seed=0, data_dir="d")
  assert (
    c.model.name == "titans_mac"
    and c.model.overrides == mqar.get_config("titans_mac").model.overrides
  )
