"""Nested Learning Table 6 at CPU scale: Hope and its ablations on MQAR.

  nice -n 5 .venv/bin/python -m experiments.sweep --sweep=configs/sweeps/hope_ablation.py --seeds=2

Variants (``hope``, config ``configs/sweeps/hope_mqar.py``; the paper's Table 6 columns):

  hope               the full model: DGD, inner momentum, weight decay α, CMS, adaptive k and v
  no_dgd             plain GD in the self-modifying memories (no −η' W x xᵀ term)
  no_momentum        no inner momentum
  no_weight_decay    α = 1
  no_cms             a SwiGLU MLP in place of the CMS
  no_inner_k         M_k frozen at its meta-learned initial state
  no_inner_v         M_v frozen at its meta-learned initial state

The paper's "w/o inner-proj q" has no counterpart: q = W_q x is non-adaptive in our Hope, as the
paper's text says (notes §9.6). Results: ``runs/sweeps/hope_ablation/`` and
``docs/results/hope_ablation.*``.
"""

from configs import common
from configs.sweeps import hope_mqar, mqar

# Hope's self-modifying memories (miras_jax.core.selfmod.MEMORIES; a test holds them equal)
MEMORIES = ("k", "v", "eta", "alpha", "memory")


def get_config(arg: str | None = None):
  base = hope_mqar.get_config("hope")
  without = lambda name: tuple(m for m in MEMORIES if m != name)  # noqa: E731
  variants = [
    ("hope", base),
    ("no_dgd", common.with_overrides(base, dgd=False)),
    ("no_momentum", common.with_overrides(base, momentum=False)),
    ("no_weight_decay", common.with_overrides(base, retention=False)),
    ("no_cms", common.with_overrides(base, cms=False)),
    ("no_inner_k", common.with_overrides(base, adaptive=without("k"))),
    ("no_inner_v", common.with_overrides(base, adaptive=without("v"))),
  ]
  return common.sweep("hope_ablation", "Hope ablations on MQAR (Nested Learning Table 6)",
                      "token_accuracy", ("mqar",), (mqar.SEQ_LEN,), variants)  # fmt: skip
