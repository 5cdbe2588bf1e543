"""The sweeps' needle config: RULER S-NIAH-PK (a 5–7 digit passkey in repeated noise sentences),
byte level (vocab 256), trained at one context length; the sweeps evaluate at several.

  python -m experiments.train --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle
  python -m experiments.eval --config=configs/sweeps/needle.py:titans_mac --workdir=/tmp/needle \
    --tasks=s_niah_pk --lengths=128,256,512

``arg``: a model name (default titans_mac) or a memory preset name (then miras_lm with that
preset). The hybrid models get an attention window / segment of ``WINDOW`` tokens, shorter than
the training context, so the needle is out of the attention's reach and only the memory can carry
it. Sizes follow ``configs/sweeps/mqar.py``; training is longer (1000 steps) at a higher peak lr
(1e-2): a pilot at the MQAR sweeps' 300 steps and 3e-3 (titans_mal) scored 0, while Gated
DeltaNet at 1000 steps and 1e-2 reached exact match 0.43 at 128 bytes (76 s on 2 CPU cores).

At that lr every MLP memory (Moneta, Yaad, Memora, Titans LMM and the MAC / MAG / MAL hybrids)
runs with its inner gradient clipped per token to norm ``INNER_CLIP`` (``grad_clip``, not in the
papers): without it Moneta's inner loop blew up to NaN by optimizer step 60. Linear memories (Gated
DeltaNet) keep their exact, unclipped form. Moneta also floors ‖A‖_4 at ``LQ_EPS`` in its
normaliser W = A / ‖A‖_4² (``presets.moneta(eps=)``, not in the paper): in a run without it the
learned retention gate reached α ≈ 1e-5, emptied A to ‖A‖_4 ≈ 1e-9 (W ≈ 1e9) and the outer
gradients went NaN at step 168; in healthy steps ‖A‖_4 stayed above 0.025, where the floor is inactive.
Memora floors W at ``KL_EPS`` before log W (``presets.memora(eps=)``): without it, retention gates
α ≈ 1e-10 met weights ≈ 1e-22, the derivative α / W of α log W overflowed and training went NaN at
step ~375 (after reaching loss 0.2); from the same checkpoint with the floor, gradient norms stayed ~1.
"""

import ml_collections

import miras_jax as mj
from configs import common
from configs.sweeps import mqar
from miras_jax import models

CONTEXT = 128  # training context length (bytes; S-NIAH-PK needs >= 108)
WINDOW = 16  # sliding window (MAG, MAL) / segment (MAC) of the attention, < CONTEXT
INNER_CLIP = 1.0  # per-token inner-gradient norm clip of the MLP memories (grad_clip)
LQ_EPS = 0.01  # Moneta's floor of ‖A‖_4 in its ℓq normaliser (presets.moneta eps)
KL_EPS = 1e-6  # Memora's floor of W before log W (presets.memora eps; the library default is 1e-30)


def get_config(arg: str | None = None):
  name = arg or "titans_mac"
  overrides = dict(vocab=256, dim=64, layers=2, heads=2, head_dim=32, mlp_hidden=128)
  if name not in models.names():
    overrides["preset"] = name  # a memory preset: miras_lm with that rule
    name = "miras_lm"
  if name != "transformer":
    overrides.update(chunk_size=16, gate_rank=16)
    rule = mj.presets.get(overrides.get("preset", "titans_lmm"))
    if isinstance(rule, mj.Rule) and isinstance(rule.memory, mj.MLPMemory):
      overrides["preset_options"] = (("grad_clip", INNER_CLIP),)
    eps = {"moneta": LQ_EPS, "memora": KL_EPS}.get(overrides.get("preset"))
    if eps is not None:
      overrides["preset_options"] += (("eps", eps),)
  if name in ("titans_mag", "titans_mal", "hybrid_lm"):
    overrides["window"] = WINDOW
  if name == "titans_mac":
    overrides["segment"] = WINDOW
  c = common.base(name, "tiny", **overrides)
  c.data.name = "s_niah"
  c.data.options = ml_collections.ConfigDict(
    dict(kind="pk", context_len=CONTEXT, filler="noise", train_size=20000, test_size=256, seed=0)
  )  # builder options: needle kind, context length, haystack filler, examples per split, seed
  c = mqar.short_run(c)
  c.optimizer.lr = 1e-2  # peak lr (at the MQAR sweeps' 3e-3 a 300-step pilot learned nothing)
  c.train.steps = 1000  # optimizer steps (the passkey copy is learned after ~500)
  return c
