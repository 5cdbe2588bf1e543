"""Sweep (b): Titans' LMM with and without momentum, with and without forgetting, on MQAR (Titans
Table 5 ablation: both the momentum S_t and the weight decay α_t help).

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/titans_ablation.py --seeds=3

Variants (miras_lm, 2-layer SiLU MLP memory, config ``configs/sweeps/mqar.py``):

  momentum+forget   titans_lmm: S_t = μ_t S_{t−1} − θ_t ∇ℓ(W_{t−1}); W_t = α_t W_{t−1} + S_t
  forget_only       no momentum (μ = 0): W_t = α_t W_{t−1} − θ_t ∇ℓ(W_{t−1})
  momentum_only     no forgetting (α = 1): W_t = W_{t−1} + S_t
  neither           W_t = W_{t−1} − θ_t ∇ℓ(W_{t−1})  (TTT-MLP's rule with Titans' SiLU memory)

The ablated rules are the ``titans_lmm`` preset's own switches
(``preset_options=(("momentum", False),)`` and ``(("forget", False),)``, Titans Table 5), so each
variant is a plain config override. The ``momentum+forget`` runs are reused from the memory-depth
sweep (same config) when it has them.
"""

from configs import common
from configs.sweeps import mqar

ABLATIONS = {
  "forget_only": (("momentum", False),),
  "momentum_only": (("forget", False),),
  "neither": (("momentum", False), ("forget", False)),
}  # variant → the titans_lmm preset options that switch its parts off


def get_config(arg: str | None = None):
  base = mqar.get_config("titans_lmm")
  variants = [("momentum+forget", base)] + [
    (name, common.with_overrides(base, preset_options=options))
    for name, options in ABLATIONS.items()
  ]
  return common.sweep("titans_ablation", "Titans LMM: momentum / forgetting ablation on MQAR",
                      "token_accuracy", ("mqar",), (mqar.SEQ_LEN,), variants,
                      reuse={"momentum+forget": ("memory_depth", "mlp_LM2")})  # fmt: skip
