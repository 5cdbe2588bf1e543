"""Sweep (b): Titans' LMM with and without momentum, with and without forgetting, on MQAR (Titans
Table 5 ablation: both the momentum S_t and the weight decay α_t help).

  nice -n 5 .venv/bin/python -m experiments.sweep_titans_ablation --seeds=3

Variants (miras_lm, 2-layer SiLU MLP memory, config ``configs/sweeps/mqar.py``):

  momentum+forget   titans_lmm: S_t = μ_t S_{t−1} − θ_t ∇ℓ(W_{t−1}); W_t = α_t W_{t−1} + S_t
  forget_only       no momentum (μ = 0): W_t = α_t W_{t−1} − θ_t ∇ℓ(W_{t−1})
  momentum_only     no forgetting (α = 1): W_t = W_{t−1} + S_t
  neither           W_t = W_{t−1} − θ_t ∇ℓ(W_{t−1})  (TTT-MLP's rule with Titans' SiLU memory)

``miras_jax`` has no switch that turns Titans' momentum or forgetting gate off (the preset takes
only ``memory=`` and ``use_loss=``), so the three ablated rules are composed here from the same
parts (``Rule(memory, L2 bias, Decay | NoRetention, Momentum | GD)``) and registered as presets of
this process (``sweeplib.register_preset``). The ``momentum+forget`` runs are reused from the
memory-depth sweep (same config) when it has them.
"""

from absl import app

from configs.sweeps import mqar
from experiments import sweeplib
from miras_jax.core import algorithms as algos
from miras_jax.core import biases, presets
from miras_jax.core import retention as ret
from miras_jax.core.rule import Rule

SWEEP = "titans_ablation"


def _rule(name, algorithm, retention):
  def make(memory=None, use_loss=False):
    mem = presets.resolve_memory(memory, presets.TITANS_MLP)
    return Rule(name, mem, biases.L2(), retention, algorithm, use_loss=use_loss)

  return make


ABLATIONS = {
  "titans_lmm_forget_only": _rule("titans_lmm_forget_only", algos.GD(), ret.Decay("any")),
  "titans_lmm_momentum_only": _rule(
    "titans_lmm_momentum_only", algos.Momentum(), ret.NoRetention()
  ),
  "titans_lmm_neither": _rule("titans_lmm_neither", algos.GD(), ret.NoRetention()),
}


def variants():
  for name, make in ABLATIONS.items():
    sweeplib.register_preset(name, make)
  return [
    ("momentum+forget", mqar.get_config("titans_lmm")),
    ("forget_only", mqar.get_config("titans_lmm_forget_only")),
    ("momentum_only", mqar.get_config("titans_lmm_momentum_only")),
    ("neither", mqar.get_config("titans_lmm_neither")),
  ]


def main(argv):
  del argv
  sweeplib.main(SWEEP, variants(), tasks=("mqar",), lengths=(mqar.SEQ_LEN,), metric="token_accuracy",
                title="Titans LMM: momentum / forgetting ablation on MQAR",
                reuse={"momentum+forget": ("memory_depth", "mlp_LM2")})  # fmt: skip


if __name__ == "__main__":
  sweeplib.define_flags()
  app.run(main)
