"""Models by name. Each family module registers its model class where it is defined
(``@register("name")``); ``miras_jax.models`` imports every module of the package, so a new
family is one module and nothing else lists it."""

from __future__ import annotations

from flax import nnx

_REGISTRY: dict[str, type] = {}


def register(name: str):
  """Class decorator: makes the ``LM`` subclass available as model ``name``."""

  def add(cls):
    known = _REGISTRY.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
      raise ValueError(f"model {name!r} is already registered by {known.__qualname__}")
    _REGISTRY[name] = cls
    return cls

  return add


def names() -> list[str]:
  """The registered model names, sorted."""
  return sorted(_REGISTRY)


def resolve(name: str) -> tuple[str, str | None]:
  """``(model, preset)`` for a run's model name: a registered model as it is (preset None), or the
  name of a parametric memory preset (``miras_jax.presets``) as ``miras_lm`` with that preset, so
  that configs and command lines can name a memory (``moneta``) without asking the registry."""
  if name in _REGISTRY:
    return name, None
  import miras_jax as mj

  if name in mj.presets.names() and isinstance(mj.presets.get(name), mj.Rule):
    return "miras_lm", name
  memories = ", ".join(n for n in mj.presets.names() if n != "softmax_attention")
  raise ValueError(
    f"{name!r}: must be one of {', '.join(names())}, or a memory preset (miras_lm with it: "
    f"{memories})"
  )


def model_class(name: str) -> type:
  """The model class registered as ``name``."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
  return _REGISTRY[name]


def config_class(name: str) -> type:
  """The config dataclass of model ``name`` (its fields are what ``config`` overrides may set)."""
  return model_class(name).config_class


def config(name: str, size: str = "tiny", **overrides):
  """The config of model ``name`` at ``size`` (one of ``SIZES``) with ``overrides`` applied."""
  return model_class(name).config_class.sized(size, **overrides)


def get(name: str, config=None, *, rngs: nnx.Rngs):
  """Builds model ``name`` from ``config`` (its config class's defaults when None)."""
  model = model_class(name)
  return model(config if config is not None else model.config_class(), rngs=rngs)
