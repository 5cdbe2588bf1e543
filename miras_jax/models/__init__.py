"""Models, each a frozen dataclass config plus an NNX module in one module per family, looked up
by name.

model = miras_jax.models.get("titans_mac", models.config("titans_mac", "tiny"), rngs=nnx.Rngs(0))
logits, cache = model(tokens)                       # tokens: [B, T] int
tokens = models.generate(model, prompt, 32, rng=jax.random.key(0), temperature=0.8, top_p=0.9)
params = models.stacked_params(params)  # an unrolled model's parameters for scan_layers=True

    miras_lm        Llama macro-architecture with the MIRAS block in place of attention (MIRAS §5.4)
    hybrid_lm       Samba-style memory block → sliding-window attention → MLP (MIRAS Fig 2, "-H")
    titans_mac      memory as context (Titans Eq 21–25)
    titans_mag      memory as gating (Titans Eq 26–28)
    titans_mal      memory as a layer (Titans Eq 29–31)
    transformer     Transformer++ (Llama) baseline
    hope            self-modifying Titans + Continuum Memory System (Nested Learning Eq 94–97)
    hope_attention  softmax attention + Continuum Memory System (Nested Learning §8.3)
"""

import importlib
import pkgutil

from miras_jax.models.base import (
  LM,
  SIZES,
  LMConfig,
  MemoryFields,
  stacked_params,
  unstacked_params,
)
from miras_jax.models.generate import generate, sample_logits
from miras_jax.models.registry import (
  config,
  config_class,
  get,
  model_class,
  names,
  register,
  resolve,
)

# Importing a family's module registers its models: every module of the package is imported.
for _info in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_info.name}")

from miras_jax.models.hope import Hope, HopeAttention, HopeAttentionConfig, HopeConfig  # noqa: E402
from miras_jax.models.hybrid_lm import HybridLM, HybridLMConfig  # noqa: E402
from miras_jax.models.miras_lm import MirasLM, MirasLMConfig  # noqa: E402
from miras_jax.models.titans_mac import TitansMAC, TitansMACConfig  # noqa: E402
from miras_jax.models.titans_mag import TitansMAG, TitansMAGConfig  # noqa: E402
from miras_jax.models.titans_mal import TitansMAL, TitansMALConfig  # noqa: E402
from miras_jax.models.transformer import Transformer, TransformerConfig  # noqa: E402

__all__ = [
  "LM",
  "SIZES",
  "Hope",
  "HopeAttention",
  "HopeAttentionConfig",
  "HopeConfig",
  "HybridLM",
  "HybridLMConfig",
  "LMConfig",
  "MemoryFields",
  "MirasLM",
  "MirasLMConfig",
  "TitansMAC",
  "TitansMACConfig",
  "TitansMAG",
  "TitansMAGConfig",
  "TitansMAL",
  "TitansMALConfig",
  "Transformer",
  "TransformerConfig",
  "config",
  "config_class",
  "generate",
  "get",
  "model_class",
  "names",
  "register",
  "resolve",
  "sample_logits",
  "stacked_params",
  "unstacked_params",
]
