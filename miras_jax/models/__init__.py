"""Models, each a frozen dataclass config plus an NNX module, looked up by name.

model = miras_jax.models.get("titans_mac", models.config("titans_mac", "tiny"), rngs=nnx.Rngs(0))
logits, cache = model(tokens)                       # tokens: [B, T] int
tokens = models.generate(model, prompt, 32, rng=jax.random.key(0), temperature=0.8, top_p=0.9)
"""

from flax import nnx

from miras_jax.models.config import (
  SIZES,
  HopeAttentionConfig,
  HopeConfig,
  HybridLMConfig,
  LMConfig,
  MirasLMConfig,
  TitansMACConfig,
  TitansMAGConfig,
  TitansMALConfig,
  TransformerConfig,
)
from miras_jax.models.generate import generate, sample_logits
from miras_jax.models.lm import (
  LM,
  Hope,
  HopeAttention,
  HybridLM,
  MirasLM,
  TitansMAC,
  TitansMAG,
  TitansMAL,
  Transformer,
)

_REGISTRY = {
  "miras_lm": MirasLM,
  "hybrid_lm": HybridLM,
  "titans_mac": TitansMAC,
  "titans_mag": TitansMAG,
  "titans_mal": TitansMAL,
  "transformer": Transformer,
  "hope": Hope,
  "hope_attention": HopeAttention,
}


def names() -> list[str]:
  return list(_REGISTRY)


def _model(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def config_class(name: str) -> type:
  """The config dataclass of model ``name`` (its fields are what ``config`` overrides may set)."""
  return _model(name).config_class


def config(name: str, size: str = "tiny", **overrides):
  """The config of model ``name`` at ``size`` (one of ``SIZES``) with ``overrides`` applied."""
  return _model(name).config_class.sized(size, **overrides)


def get(name: str, config=None, *, rngs: nnx.Rngs):
  """Builds model ``name`` from ``config`` (its config class's defaults when None)."""
  model = _model(name)
  return model(config if config is not None else model.config_class(), rngs=rngs)


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
  "names",
  "sample_logits",
]
