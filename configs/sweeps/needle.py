"""The sweeps' needle config: RULER S-NIAH-PK (a 5–7 digit passkey in repeated noise sentences),
byte level (vocab 256), trained at one context length; the sweeps evaluate at several.

  python -m experiments.train --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle
  python -m experiments.eval --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle \
    --tasks=s_niah_pk --lengths=128,256,512

``arg``: a model name (default titans_mac) or a memory preset name (then miras_lm with that
preset: ``miras_jax.models.resolve``). The hybrid models get an attention window / segment of ``WINDOW`` tokens, shorter than
the training context, so the needle is out of the attention's reach and only the memory can carry
it. Sizes follow ``configs/sweeps/mqar.py``; training is longer (1000 steps) at a higher peak lr
(1e-2): a pilot at the MQAR sweeps' 300 steps and 3e-3 (titans_mal) scored 0, while Gated
DeltaNet at 1000 steps and 1e-2 reached exact match 0.43 at 128 bytes (76 s on 2 CPU cores).

At that lr every memory runs with the sweeps' numerical guards (``mqar.GUARDS`` as the model's
``preset_defaults``, applied to the preset it runs: the
inner-gradient clip of MLP memories, Moneta's and Memora's floors; linear memories such as Gated
DeltaNet keep their exact, unguarded form), unless ``config(name, guards=False)`` (the sweeps'
``defaults=1``) leaves them at the block's defaults.
"""

import ml_collections

from configs import common
from configs.sweeps import mqar

CONTEXT = 128  # training context length (bytes; S-NIAH-PK needs >= 108)
WINDOW = 16  # sliding window (MAG, MAL) / segment (MAC) of the attention, < CONTEXT


def get_config(arg: str | None = None):
  return config(arg or "titans_mac")


def config(name: str, guards: bool = True):
  """The needle config of model or preset ``name``; ``guards=False`` leaves the memory at the
  block's own defaults (its η cap, δ_0, initial memory and inner clip, docs/models.md) instead of
  the sweeps' numerical guards."""
  overrides = dict(vocab=256, dim=64, layers=2, heads=2, head_dim=32, mlp_hidden=128)
  if name != "transformer":
    overrides.update(chunk_size=16, gate_rank=16)
  if name in ("titans_mag", "titans_mal", "hybrid_lm"):
    overrides["window"] = WINDOW
  if name == "titans_mac":
    overrides["segment"] = WINDOW
  c = common.base(name, "tiny", **overrides)
  if guards:  # the guards of the memory preset the model runs (its preset field, set or default)
    c.model.preset_defaults = ml_collections.ConfigDict(mqar.GUARDS)
  c.data.name = "s_niah"
  c.data.options = ml_collections.ConfigDict(
    dict(kind="pk", context_len=CONTEXT, filler="noise", train_size=20000, test_size=256, seed=0)
  )  # builder options: needle kind, context length, haystack filler, examples per split, seed
  c = mqar.short_run(c)
  c.optimizer.lr = 1e-2  # peak lr (at the MQAR sweeps' 3e-3 a 300-step pilot learned nothing)
  c.train.steps = 1000  # optimizer steps (the passkey copy is learned after ~500)
  return c
