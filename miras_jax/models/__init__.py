"""Models, each a frozen dataclass config plus an NNX module, looked up by name.

model = miras_jax.models.get("miras_lm", MirasLMConfig(preset="moneta"), rngs=nnx.Rngs(0))
"""

from flax import nnx

from miras_jax.models.miras_lm import MirasLM, MirasLMConfig

_REGISTRY = {"miras_lm": (MirasLM, MirasLMConfig)}


def names() -> list[str]:
  return list(_REGISTRY)


def get(name: str, config=None, *, rngs: nnx.Rngs):
  """Builds model ``name`` from ``config`` (its config class's defaults when None)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
  module, config_cls = _REGISTRY[name]
  config = config if config is not None else config_cls()
  if not isinstance(config, config_cls):
    raise ValueError(
      f"config for {name!r} must be a {config_cls.__name__}; got {type(config).__name__}"
    )
  return module(config, rngs=rngs)


__all__ = ["MirasLM", "MirasLMConfig", "get", "names"]
