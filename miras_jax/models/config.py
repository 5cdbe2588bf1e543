"""Model configs: one frozen dataclass per model, sharing fields, and the size presets.

``Config.sized(size, **overrides)`` gives the paper-size variants: ``tiny`` (CPU tests), ``170m``,
``340m``, ``760m``, ``1.3b``. Widths and depths follow MIRAS Table 5 and Titans §5.1 (12 × 768,
24 × 1024, 24 × 1536, 24 × 2048; 16 heads; Llama-2 vocabulary of 32 000). The papers do not give
the MLP width of each model; we pick the SwiGLU hidden width F of each model and size so that the
parameter count, embeddings and the untied output head included, is the nominal size (the tests
hold every preset within 5%; the counts are in ``docs/models.md``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from miras_jax.core.cms import VARIANTS as CMS_VARIANTS
from miras_jax.core.selfmod import MEMORIES as SELFMOD_MEMORIES

SIZES = ("tiny", "170m", "340m", "760m", "1.3b")

# Shared shape of each size: (layers, dim, heads, head_dim, vocab).
_SHAPES = {
  "tiny": (2, 64, 2, 32, 256),
  "170m": (12, 768, 16, 48, 32000),
  "340m": (24, 1024, 16, 64, 32000),
  "760m": (24, 1536, 16, 96, 32000),
  "1.3b": (24, 2048, 16, 128, 32000),
}


def _paper(mlp_hidden: tuple, layers=(12, 24, 24, 24), **fields) -> dict:
  """``SIZE_FIELDS`` of the four paper sizes (170m, 340m, 760m, 1.3b) from their SwiGLU widths."""
  return {
    size: {"mlp_hidden": f, "layers": n, "remat": True, **fields}
    for size, f, n in zip(SIZES[1:], mlp_hidden, layers, strict=True)
  }


# Blocks with two mixers (memory and attention) are about twice as large: the hybrid and Titans
# models use fewer of them at the paper widths, so that the SwiGLU keeps a usual width.
_HYBRID_LAYERS = (12, 16, 16, 16)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Fields every language model has."""

  vocab: int = 256  # vocabulary size V
  dim: int = 64  # model width E
  layers: int = 2  # number of blocks L
  heads: int = 2  # heads H (memory and attention)
  head_dim: int = 32  # head dim D
  mlp_hidden: int = 172  # SwiGLU hidden width F
  rope_base: float = 10000.0  # RoPE base of the attention layers
  remat: bool = False  # recompute each block in the backward pass (activation memory ∝ L·B·T·E)
  cms: bool = False  # a Continuum Memory System (Nested Learning §7) in place of the SwiGLU MLP
  cms_chunk_sizes: tuple = (2, 8, 32)  # C_ℓ per CMS level: level ℓ updates every C_ℓ tokens
  cms_lrs: tuple = (1e-2, 1e-2, 1e-2)  # η_ℓ per CMS level (0 freezes a level)
  cms_variant: str = "sequential"  # sequential | nested | independent (levels of width mlp_hidden)

  # Per size, the fields beyond the shared shape: the SwiGLU width F (chosen so that the model
  # has its nominal parameter count), and windows, segments, persistent tokens, block counts.
  SIZE_FIELDS: ClassVar[dict] = {}

  def __post_init__(self):
    for name in ("vocab", "dim", "layers", "heads", "head_dim", "mlp_hidden"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(self).__name__}.{name} must be a positive int; got {value!r}")
    if self.cms_variant not in CMS_VARIANTS:
      raise ValueError(f"cms_variant must be one of {CMS_VARIANTS}; got {self.cms_variant!r}")
    if not self.rope_base > 0:
      raise ValueError(f"{type(self).__name__}.rope_base must be > 0; got {self.rope_base!r}")
    if not all(isinstance(c, int) and c >= 1 for c in self.cms_chunk_sizes):
      raise ValueError(f"cms_chunk_sizes must be ints >= 1; got {self.cms_chunk_sizes!r}")
    if not all(0 <= lr < float("inf") for lr in self.cms_lrs):
      raise ValueError(f"cms_lrs must be finite and >= 0; got {self.cms_lrs!r}")
    if len(self.cms_lrs) != len(self.cms_chunk_sizes) or not self.cms_chunk_sizes:
      raise ValueError(
        f"cms_lrs {self.cms_lrs!r} needs one rate per level of cms_chunk_sizes "
        f"{self.cms_chunk_sizes!r}"
      )
    self._check()

  def _check(self):
    pass

  @classmethod
  def sized(cls, size: str, **overrides):
    """The ``size`` preset of this model (one of ``SIZES``), with ``overrides`` applied."""
    if size not in _SHAPES:
      raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    layers, dim, heads, head_dim, vocab = _SHAPES[size]
    fields = dict(layers=layers, dim=dim, heads=heads, head_dim=head_dim, vocab=vocab)
    fields.update(cls.SIZE_FIELDS.get(size, {}))
    fields.update(overrides)
    return cls(**fields)


def _check_max_lr(config, *, allow_default: bool) -> None:
  """η = max_lr·σ(·) ≤ max_lr: a cap above 1 makes a step overshoot even a unit key's own error
  (a delta-rule write with η ≥ 2 diverges); 0 means the block's default when ``allow_default``."""
  if not (0 < config.max_lr <= 1 or (allow_default and config.max_lr == 0)):
    allowed = "in [0, 1] (0: the block's default)" if allow_default else "in (0, 1]"
    raise ValueError(f"{type(config).__name__}.max_lr must be {allowed}; got {config.max_lr!r}")


@dataclasses.dataclass(frozen=True)
class MemoryFields(LMConfig):
  """Fields of the models with a MIRAS / Titans memory block."""

  preset: str = "titans_lmm"  # memory rule (a name from miras_jax.presets)
  preset_options: tuple = ()  # (name, value) pairs passed to presets.get
  chunk_size: int = 64  # chunk size b of the memory's parallel training form
  gate_rank: int = 32  # rank r of the low-rank gate projections
  conv_kernel: int = 4  # taps of the short causal convolution on q, k, v
  max_lr: float = (
    0.0  # cap of the inner lr η = max_lr·σ(·) (0: nn.memory.default_max_lr: 1, 0.1, 0.01)
  )
  channel_gates: tuple = ()  # gates made channel-wise (MIRAS §5.4): any of "lr", "delta", "retention"
  init_scale: float = 0.0  # std·√fan_in of the initial memory (0: default_init_scale: 1, 0.1, 32)
  delta_init: float = 0.0  # Huber threshold δ at initialisation (0: 4·√head_dim)

  def _check(self):
    for name in ("chunk_size", "gate_rank", "conv_kernel"):
      if getattr(self, name) < 1:
        raise ValueError(f"{type(self).__name__}.{name} must be >= 1; got {getattr(self, name)}")
    for name in ("init_scale", "delta_init"):
      if not 0 <= getattr(self, name) < float("inf"):
        raise ValueError(
          f"{type(self).__name__}.{name} must be finite and >= 0; got {getattr(self, name)}"
        )
    _check_max_lr(self, allow_default=True)
    if not isinstance(self.channel_gates, (tuple, list)) or not all(
      isinstance(n, str) for n in self.channel_gates
    ):
      raise ValueError(f"channel_gates must be a tuple of gate names; got {self.channel_gates!r}")
    if not isinstance(self.preset_options, tuple):
      raise ValueError(
        f"preset_options must be a tuple of (name, value) pairs; got {self.preset_options!r}"
      )


@dataclasses.dataclass(frozen=True)
class MirasLMConfig(MemoryFields):
  """``miras_lm``: Llama blocks with the MIRAS memory block in place of attention."""

  SIZE_FIELDS: ClassVar[dict] = _paper((2944, 1792, 3136, 4160))


@dataclasses.dataclass(frozen=True)
class HybridLMConfig(MemoryFields):
  """``hybrid_lm``: Samba-style memory block → sliding-window attention → MLP per layer."""

  window: int = 64  # sliding window w of the attention (tokens t − w < j ≤ t)
  persistent: int = 0  # learned persistent tokens N_p visible to every attention query
  memory_layers: tuple | None = None  # layers with a memory block (None: all; others SWA + MLP)

  SIZE_FIELDS: ClassVar[dict] = _paper((1920, 2304, 4096, 5376), _HYBRID_LAYERS, window=2048)

  def _check(self):
    super()._check()
    if self.window < 1:
      raise ValueError(f"{type(self).__name__}.window must be >= 1; got {self.window}")
    if self.persistent < 0:
      raise ValueError(f"{type(self).__name__}.persistent must be >= 0; got {self.persistent}")
    if self.memory_layers is not None and not all(
      isinstance(i, int) and 0 <= i < self.layers for i in self.memory_layers
    ):
      raise ValueError(
        f"memory_layers must be a tuple of layer indices in [0, {self.layers}); "
        f"got {self.memory_layers!r}"
      )

  def has_memory(self, layer: int) -> bool:
    return self.memory_layers is None or layer in self.memory_layers


@dataclasses.dataclass(frozen=True)
class TitansMALConfig(HybridLMConfig):
  """``titans_mal`` (Titans Eq 29–31): memory layer → sliding-window attention with persistent
  tokens → MLP."""

  window: int = 16  # sliding window w of the attention
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)

  SIZE_FIELDS: ClassVar[dict] = _paper(
    (1920, 2304, 4032, 5376), _HYBRID_LAYERS, window=2048, persistent=32
  )


@dataclasses.dataclass(frozen=True)
class TitansMAGConfig(HybridLMConfig):
  """``titans_mag`` (Titans Eq 26–28): sliding-window attention with persistent tokens and the
  memory in parallel, combined by a gate, then the MLP."""

  window: int = 16  # sliding window w of the attention
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)

  SIZE_FIELDS: ClassVar[dict] = _paper(
    (1920, 2304, 4032, 5376), _HYBRID_LAYERS, window=2048, persistent=32
  )


MAC_WRITES = ("attention", "tokens")  # TitansMACConfig.writes


@dataclasses.dataclass(frozen=True)
class TitansMACConfig(MemoryFields):
  """``titans_mac`` (Titans Eq 21–25): memory as context of a segment-wise attention."""

  segment: int = 8  # segment length C (attention runs within a segment)
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)
  # what the memory learns: "tokens" the segment's normalised inputs z (the default, measured on
  # MQAR: docs/models.md), "attention" the attention outputs y (the paper's Eq 24)
  writes: str = "tokens"

  SIZE_FIELDS: ClassVar[dict] = _paper(
    (1920, 2304, 4032, 5376), _HYBRID_LAYERS, segment=1024, persistent=32
  )

  def _check(self):
    super()._check()
    if self.writes not in MAC_WRITES:
      raise ValueError(f"TitansMACConfig.writes must be one of {MAC_WRITES}; got {self.writes!r}")
    if self.segment < 1:
      raise ValueError(f"TitansMACConfig.segment must be >= 1; got {self.segment}")
    if self.persistent < 0:
      raise ValueError(f"TitansMACConfig.persistent must be >= 0; got {self.persistent}")


@dataclasses.dataclass(frozen=True)
class TransformerConfig(LMConfig):
  """``transformer``: the Transformer++ baseline (Llama: RoPE, RMSNorm, SwiGLU)."""

  window: int | None = None  # sliding window (None: full causal attention)
  max_len: int = 512  # decode cache length for full attention (the longest sequence decoded)

  SIZE_FIELDS: ClassVar[dict] = _paper((3328, 2368, 3904, 5184), max_len=4096)

  def _check(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"TransformerConfig.window must be >= 1 or None; got {self.window}")
    if self.max_len < 1:
      raise ValueError(f"TransformerConfig.max_len must be >= 1; got {self.max_len}")


@dataclasses.dataclass(frozen=True)
class HopeConfig(LMConfig):
  """``hope`` (Nested Learning Eq 94–97): self-modifying Titans, then the CMS, per block."""

  cms: bool = True  # the CMS in place of the SwiGLU (False: Table 6 "w/o CMS")

  chunk_size: int = 8  # C of M_k, M_v, M_eta, M_alpha (their reads use the last chunk's state)
  memory_chunk_size: int = 8  # C of M_memory
  memory_expansion: int = 2  # hidden width of each memory = memory_expansion · head_dim
  max_lr: float = 0.1  # η = max_lr · σ(·)
  dgd: bool = True  # DGD's rank-1 decay in the inner update (False: GD; Table 6 "w/o DGD")
  retention: bool = True  # the α (weight decay) gate (False: α = 1; "w/o weight decay")
  momentum: bool = True  # inner momentum over the DGD steps ("w/o momentum")
  adaptive: tuple = SELFMOD_MEMORIES  # memories learning in context ("w/o inner-proj k/v")
  conv_kernel: int = 4  # taps of the short causal convolution on x

  # Paper sizes: CMS level widths fitted to the nominal count; level chunks 16/128/1024 tokens
  # (the paper gives none for its LM runs; [KM] uses periods 1/4/32/128) and the self-modifying
  # memories' chunks 8 (k, v, η, α) and 64 (memory), [KM]'s choice (§8.2 gives none).
  SIZE_FIELDS: ClassVar[dict] = _paper(
    (1280, 640, 1152, 1472),
    cms_chunk_sizes=(16, 128, 1024),
    cms_lrs=(1e-3, 1e-3, 1e-3),
    memory_chunk_size=64,
  )

  def _check(self):
    for name in ("chunk_size", "memory_chunk_size", "memory_expansion", "conv_kernel"):
      if getattr(self, name) < 1:
        raise ValueError(f"HopeConfig.{name} must be >= 1; got {getattr(self, name)}")
    _check_max_lr(self, allow_default=False)
    unknown = set(self.adaptive) - set(SELFMOD_MEMORIES)
    if unknown:
      raise ValueError(f"adaptive: unknown memories {sorted(unknown)}; known {SELFMOD_MEMORIES}")


@dataclasses.dataclass(frozen=True)
class HopeAttentionConfig(LMConfig):
  """``hope_attention`` (Nested Learning §8.3): softmax attention, then the CMS, per block."""

  cms: bool = True  # the CMS in place of the SwiGLU

  window: int | None = None  # sliding window (None: full causal attention)
  max_len: int = 512  # decode cache length for full attention (the longest sequence decoded)

  SIZE_FIELDS: ClassVar[dict] = _paper(
    (1280, 640, 1216, 1600),
    cms_chunk_sizes=(16, 128, 1024),
    cms_lrs=(1e-3, 1e-3, 1e-3),
    max_len=4096,
  )

  def _check(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"HopeAttentionConfig.window must be >= 1 or None; got {self.window}")
    if self.max_len < 1:
      raise ValueError(f"HopeAttentionConfig.max_len must be >= 1; got {self.max_len}")
