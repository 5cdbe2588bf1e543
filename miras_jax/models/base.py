"""What every language model shares: the config fields and size presets, and the trunk.

Model configs: one frozen dataclass per model, sharing fields, and the size presets.

``Config.sized(size, **overrides)`` gives the paper-size variants: ``tiny`` (CPU tests), ``170m``,
``340m``, ``760m``, ``1.3b``. Widths and depths follow MIRAS Table 5 and Titans §5.1 (12 × 768,
24 × 1024, 24 × 1536, 24 × 2048; 16 heads; Llama-2 vocabulary of 32 000). The papers do not give
the MLP width of each model; we pick the SwiGLU hidden width F of each model and size so that the
parameter count, embeddings and the untied output head included, is the nominal size (the tests
hold every preset within 5%; the counts are in ``docs/models.md``).


``LM`` is the trunk every model shares: embedding → L blocks → RMSNorm → output head (untied);
``model(tokens [B, T], cache=None) -> (logits [B, T, V], cache)``. ``init_cache(batch)`` gives the
empty cache (memory states, attention ring buffers, MAC's segment buffer) and
``decode(tokens, cache)`` continues it; a sequence fed token by token, or prefilled in one call
and continued, gives the logits of the full forward pass. Each model family is one module of this
package with its config class and its ``LM`` subclass, registered by name where it is defined
(``registry.register``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from miras_jax.core.cms import VARIANTS as CMS_VARIANTS
from miras_jax.nn.layers import Linear, RMSNorm, param

SIZES = ("tiny", "170m", "340m", "760m", "1.3b")
COMPUTE_DTYPES = ("float32", "bfloat16")  # LMConfig.dtype
# LMConfig.remat_policy: what the backward pass of a remat block keeps from its forward pass
# (jax.checkpoint policies): "nothing" (only the block's input; everything recomputed), "dots"
# (every matmul's output), "dots_no_batch" (the outputs of matmuls without batch dimensions: the
# projections and MLPs, not the attention scores or the memories' per-chunk products).
REMAT_POLICIES = {
  "nothing": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_saveable,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# Shared shape of each size: (layers, dim, heads, head_dim, vocab).
_SHAPES = {
  "tiny": (2, 64, 2, 32, 256),
  "170m": (12, 768, 16, 48, 32000),
  "340m": (24, 1024, 16, 64, 32000),
  "760m": (24, 1536, 16, 96, 32000),
  "1.3b": (24, 2048, 16, 128, 32000),
}


def paper_sizes(mlp_hidden: tuple, layers=(12, 24, 24, 24), **fields) -> dict:
  """``SIZE_FIELDS`` of the four paper sizes (170m, 340m, 760m, 1.3b) from their SwiGLU widths."""
  return {
    size: {"mlp_hidden": f, "layers": n, "remat": True, "scan_layers": True, **fields}
    for size, f, n in zip(SIZES[1:], mlp_hidden, layers, strict=True)
  }


# Blocks with two mixers (memory and attention) are about twice as large: the hybrid and Titans
# models use fewer of them at the paper widths, so that the SwiGLU keeps a usual width.
HYBRID_LAYERS = (12, 16, 16, 16)


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
  remat_policy: str = "nothing"  # what a remat block saves: nothing | dots | dots_no_batch
  scan_layers: bool = False  # run the blocks as one lax.scan over their stacked parameters
  cms: bool = False  # a Continuum Memory System (Nested Learning §7) in place of the SwiGLU MLP
  cms_chunk_sizes: tuple = (2, 8, 32)  # C_ℓ per CMS level: level ℓ updates every C_ℓ tokens
  cms_lrs: tuple = (1e-2, 1e-2, 1e-2)  # η_ℓ per CMS level (0 freezes a level)
  cms_variant: str = "sequential"  # sequential | nested | independent (levels of width mlp_hidden)
  # compute dtype of projections, attention and MLPs: float32 | bfloat16 (parameters, optimizer
  # state, the memories' inner state and gates and the logits stay float32)
  dtype: str = "float32"

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
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"{type(self).__name__}.remat_policy must be one of {tuple(REMAT_POLICIES)}; "
        f"got {self.remat_policy!r}"
      )
    if self.dtype not in COMPUTE_DTYPES:
      raise ValueError(
        f"{type(self).__name__}.dtype must be one of {COMPUTE_DTYPES}; got {self.dtype!r}"
      )
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


def check_attention_fields(config) -> None:
  """``attention_conv`` (taps of the attention's short convolution) and ``attention_chunk``
  (queries attended at a time) are ints >= 0 (0: none / all)."""
  for name in ("attention_conv", "attention_chunk"):
    value = getattr(config, name)
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"{type(config).__name__}.{name} must be an int >= 0; got {value!r}")


def check_max_lr(config, *, allow_default: bool) -> None:
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
  gate_init: tuple = ()  # (gate, value) initial sigmoid-gate values, e.g. (("retention", 0.998),)
  chunk_remat: bool = (
    True  # checkpoint each memory chunk (the backward keeps chunk-boundary states)
  )

  def _check(self):
    for name in ("chunk_size", "gate_rank", "conv_kernel"):
      if getattr(self, name) < 1:
        raise ValueError(f"{type(self).__name__}.{name} must be >= 1; got {getattr(self, name)}")
    for name in ("init_scale", "delta_init"):
      if not 0 <= getattr(self, name) < float("inf"):
        raise ValueError(
          f"{type(self).__name__}.{name} must be finite and >= 0; got {getattr(self, name)}"
        )
    if not isinstance(self.gate_init, tuple) or not all(
      isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in self.gate_init
    ):
      raise ValueError(
        f"{type(self).__name__}.gate_init must be a tuple of (gate, value) pairs; got "
        f"{self.gate_init!r}"
      )
    check_max_lr(self, allow_default=True)
    if not isinstance(self.channel_gates, (tuple, list)) or not all(
      isinstance(n, str) for n in self.channel_gates
    ):
      raise ValueError(f"channel_gates must be a tuple of gate names; got {self.channel_gates!r}")
    if not isinstance(self.preset_options, tuple):
      raise ValueError(
        f"preset_options must be a tuple of (name, value) pairs; got {self.preset_options!r}"
      )


def stack_blocks(blocks: list, owner: str) -> nnx.Module:
  """One module of the type of ``blocks`` (identical in structure) whose variables hold theirs
  stacked on a leading axis, named ``"layers"`` for the sharding rules (no rule maps it: each
  device keeps every layer of its shard)."""
  graphdef = nnx.graphdef(blocks[0])
  if any(nnx.graphdef(b) != graphdef for b in blocks[1:]):
    raise ValueError(
      f"{owner}: scan_layers needs identical blocks; these differ (e.g. memory_layers gives "
      "some blocks no memory): set scan_layers=False"
    )
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(b) for b in blocks])
  module = nnx.merge(graphdef, stacked)
  for _, node in nnx.iter_graph(module):
    if isinstance(node, nnx.Variable) and node.get_metadata().get("out_sharding") is not None:
      node.set_metadata("out_sharding", ("layers", *node.get_metadata()["out_sharding"]))
  return module


def stacked_params(params: dict) -> dict:
  """A parameter dict (``nnx.state(model, nnx.Param).to_pure_dict()``, e.g. a checkpoint's) of
  the unrolled layout (``blocks``: one entry per block) in the ``scan_layers`` layout (``stack``:
  the blocks' parameters stacked on a leading layer axis)."""
  if "blocks" not in params:
    raise ValueError("params: expected the unrolled layout (a 'blocks' entry)")
  blocks = params["blocks"]
  out = {k: v for k, v in params.items() if k != "blocks"}
  layers = [blocks[i] for i in range(len(blocks))]
  out["stack"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
  return out


def unstacked_params(params: dict) -> dict:
  """The inverse of ``stacked_params``: the ``scan_layers`` layout to one entry per block."""
  if "stack" not in params:
    raise ValueError("params: expected the scan_layers layout (a 'stack' entry)")
  out = {k: v for k, v in params.items() if k != "stack"}
  n = len(jax.tree.leaves(params["stack"])[0])
  out["blocks"] = {i: jax.tree.map(lambda leaf, i=i: leaf[i], params["stack"]) for i in range(n)}
  return out


class LM(nnx.Module):
  """Shared trunk; subclasses say which block each layer is (``_block``).

  With ``scan_layers`` the blocks are stored as one module ``stack`` whose parameters carry a
  leading layer axis (``stack_blocks``) and run as one ``lax.scan``; otherwise as the list
  ``blocks``. ``layer(i)`` is block ``i`` either way.
  """

  config_class = LMConfig

  def __init__(self, config, *, rngs: nnx.Rngs):
    if not isinstance(config, self.config_class):
      raise ValueError(
        f"{type(self).__name__} needs a {self.config_class.__name__}; got {type(config).__name__}"
      )
    c = self.config = config
    self.embed = param(rngs, nnx.initializers.normal(1.0), (c.vocab, c.dim), ("vocab", "embed"))
    blocks = [self._block(c, i, rngs) for i in range(c.layers)]
    self.blocks = None if c.scan_layers else nnx.List(blocks)
    self.stack = stack_blocks(blocks, type(self).__name__) if c.scan_layers else None
    self.norm = RMSNorm(c.dim, rngs=rngs)
    self.head = Linear(c.dim, c.vocab, ("embed", "vocab"), rngs=rngs)

  def _block(self, c, layer: int, rngs):
    raise NotImplementedError

  def layer(self, i: int):
    """Block ``i`` (with ``scan_layers``: a module of layer ``i``'s slice of ``stack``)."""
    if self.stack is None:
      return self.blocks[i]
    graphdef, state = nnx.split(self.stack)
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[i], state))

  def init_cache(self, batch: int) -> list:
    """The empty decode cache: one entry per block."""
    return [self.layer(i).init_cache(batch) for i in range(self.config.layers)]

  def __call__(self, tokens, cache=None):
    """``tokens: [B, T]`` int → ``(logits [B, T, V], cache)``; ``cache`` continues a sequence."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array [B, T]; got {tokens.dtype} {tokens.shape}")
    if cache is not None and len(cache) != self.config.layers:
      raise ValueError(
        f"cache must hold one entry per block ({self.config.layers}); got {len(cache)}"
      )
    dtype = jnp.dtype(self.config.dtype)
    x = self.embed[...][tokens].astype(dtype)  # [B, T, E] in the compute dtype
    if self.stack is not None and getattr(getattr(self.stack, "memory", None), "record_gates", 0):
      raise ValueError(
        "recording gate activations needs the blocks unrolled: build the model with "
        "scan_layers=False and models.unstacked_params(params) (as train.loop's probe does)"
      )
    x, new_cache = (self._unrolled if self.stack is None else self._scanned)(x, cache, dtype)
    return self.head(self.norm(x)).astype(jnp.float32), new_cache  # float32 logits for the loss

  def _unrolled(self, x, cache, dtype):
    new_cache = []
    policy = REMAT_POLICIES[self.config.remat_policy]
    call = lambda block, x, state: block(x, state)  # noqa: E731
    run = nnx.remat(call, policy=policy) if self.config.remat else None
    for block, state in zip(self.blocks, cache or [None] * self.config.layers, strict=True):
      x, state = run(block, x, state) if run is not None else block(x, state)
      x = x.astype(dtype)  # a block whose core computes in float32 (CMS, Hope) hands back dtype
      new_cache.append(state)
    return x, new_cache

  def _scanned(self, x, cache, dtype):
    """The blocks as one ``lax.scan`` over ``stack``'s layer axis (the block's program is traced
    and compiled once whatever the depth); the caches are stacked for the call."""
    graphdef, params = nnx.split(self.stack)
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    caches = stack(cache) if cache is not None else None

    def body(x, xs):
      state, block_cache = xs
      x, block_cache = nnx.merge(graphdef, state)(x, block_cache)
      return x.astype(dtype), block_cache

    policy = REMAT_POLICIES[self.config.remat_policy]
    body = jax.checkpoint(body, policy=policy) if self.config.remat else body
    x, new = jax.lax.scan(body, x, (params, caches))
    return x, [jax.tree.map(lambda leaf, i=i: leaf[i], new) for i in range(self.config.layers)]

  def decode(self, tokens, cache):
    """Continue ``cache`` with ``tokens: [B, T]`` (T = 1 for step-by-step generation)."""
    return self(tokens, cache)
