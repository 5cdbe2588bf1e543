"""The MIRAS layer block (MIRAS §5.4, Fig 2; Titans §3): a multi-head neural memory as an NNX module.

    x ─ q/k/v projections ─ short causal conv + SiLU ─ ℓ2-norm q, k ─ split heads ─┐
    x ─ low-rank gate projections (η, α, μ, δ per head and token) ─────────────────┤
                                     core memory rule per (batch, head) ◀──────────┘
    ─ per-head RMSNorm ─ ⊙ sigmoid(x W_g) ─ output projection

The memory runs through ``miras_jax.chunked`` in training and decoding alike: the exact forms are
chunking-invariant and the mini-batch forms carry their chunk grid across calls, so a sequence
processed token by token (``decode``) gives the outputs of one call. The initial memory of every
head is learned (``nnx.Param``); the per-sequence state (conv buffers, memory state) is a pytree
passed in and out.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import miras_jax as mj
from miras_jax.core.exact import exact_form_applies
from miras_jax.nn.layers import Linear, LowRankGate, RMSNorm, ShortConv, l2_normalize, param


class NeuralMemoryState(NamedTuple):
  """Per-sequence state: conv buffers ``[B, K−1, H·D]`` for q, k, v and the memory state with
  leading ``[B, H]`` axes."""

  conv_q: jax.Array
  conv_k: jax.Array
  conv_v: jax.Array
  memory: Any


# Gate → (activation, initial bias): η ∈ (0, 1) small, α and μ near 1. δ's bias is set per block
# from ``delta_init`` (see NeuralMemory); the 0.5 here is only the bias of ``delta_init=softplus(0.5)``.
GATE_INIT = {
  "lr": (jax.nn.sigmoid, -2.0),
  "retention": (jax.nn.sigmoid, 4.0),
  "retention_value": (jax.nn.sigmoid, 4.0),
  "momentum": (jax.nn.sigmoid, 2.0),
  "delta": (jax.nn.softplus, 0.5),
}
DELTA_INIT_PER_SQRT_D = 4.0  # default δ_0 = 4·√head_dim: Yaad's ℓ2 branch is active at init


def default_max_lr(rule) -> float:
  """The block's default cap of η: 1 for linear memories, 0.1 for MLP memories, 0.01 for an MLP
  memory with an ℓp bias of p > 2 (Moneta), whose inner gradient grows like |e|^{p−1}, or with
  the KL / softmax retention (Memora)."""
  if rule.memory.linear_in_state:
    return 1.0
  if (rule.bias.error_power or 0.0) > 1.0:  # ℓp with p > 2
    return 0.01
  if rule.retention.domain == "simplex":
    return 0.01
  return 0.1


DEFAULT_GRAD_CLIP = 10.0  # per-token inner-gradient norm cap of ℓ2 MLP memories (docs/models.md)
# Preset options the block sets unless preset_options name them (docs/models.md): Moneta's floor
# of ‖A‖_q in W = A / ‖A‖_q^{q−2} (its map inverts scale; without the floor it diverged on
# S-NIAH-PK at lr 1e-2; healthy steps keep ‖A‖_4 above 0.025, where the floor is inactive).
BLOCK_OPTIONS = {"moneta": {"eps": 0.01}}


def default_grad_clip(rule) -> float | None:
  """The block's default per-token inner-gradient clip (``Rule.grad_clip``): 10 for an MLP memory
  with the ℓ2 bias and a decay or no retention (Titans LMM, TTT-MLP), None (off, as in the papers)
  otherwise. Without it a rare token's write can make such a memory's weights feed their own
  growth within one sequence (Titans MAG on MQAR-64: 1e22 by token 64, NaN at step 65)."""
  deep_l2 = not rule.memory.linear_in_state and rule.bias.exact_write == "delta"
  return DEFAULT_GRAD_CLIP if deep_l2 and rule.retention.linear_in_state else None


def default_init_scale(rule) -> float:
  """The block's default ``init_scale``: 0.1 for linear memories, 1 for MLP memories, 32 for the
  logits of Memora's softmax rows (peaked rows: std 32/√fan_in, 5.7 and 2.8 at head dim 32)."""
  if rule.memory.linear_in_state:
    return 0.1
  return 32.0 if rule.retention.domain == "simplex" else 1.0


def softplus_inverse(y: float) -> float:
  """x with softplus(x) = y > 0."""
  return float(y + math.log(-math.expm1(-y)))


class NeuralMemory(nnx.Module):
  """Multi-head memory block for any preset (``presets.get(preset, **preset_options)``), or for a
  ``Rule`` of your own passed as ``preset`` (composed from the four MIRAS choices; used as given).

  Gates: η = max_lr · σ(·), α and μ = σ(·), δ = softplus(·), each from a rank-``gate_rank``
  projection of x: one value per head and token, or ``head_dim`` values for the gates named in
  ``channel_gates`` (MIRAS §5.4's channel-wise η, δ, α): η and δ per output channel of the memory
  (``Rule.channel_lr``, Huber's channel-wise δ), α per key channel (linear memories only).

  Defaults (measured on MQAR, docs/models.md): ``max_lr`` (``default_max_lr``) is 1 for linear
  memories (the delta rule is stable for η‖k‖² < 2 with unit keys), 0.1 for MLP memories (a 2-layer
  Titans memory with η up to 0.6 and μ near 0.99 diverged within a 64-token sequence) and 0.01 for
  Moneta's ℓ3 bias and Memora's KL retention on an MLP (at 0.1 they stay near chance). ``delta_init``, δ
  at initialisation (the bias of its softplus), is 4·√head_dim: an untrained memory's error has
  norm ≈ 1.4·√head_dim, so Yaad starts in its ℓ2 branch (with δ_0 ≈ 1 it ran as sign descent and
  stayed near chance). ``init_scale``: the initial memory's normal init, std ``init_scale/√fan_in``
  (``default_init_scale``: 1 for MLP memories, 0.1 for linear, 32 for the logits of Memora's
  softmax rows, whose near-uniform rows at 1 left the memory's output ≈ k). ``gate_init``: initial
  values of the sigmoid gates by name (``lr``: η / ``max_lr``; ``retention``, ``retention_value``,
  ``momentum``: the gate's value), each in (0, 1); the gate's bias is its logit. Unnamed gates keep
  GATE_INIT's biases (η at σ(−2) ≈ 0.12·max_lr, α at σ(4) ≈ 0.982, μ at σ(2) ≈ 0.88). ``grad_clip``
  (``default_grad_clip``, unless ``preset_options`` name it): each token's inner gradient clipped
  at norm 10 for the ℓ2 MLP memories (Titans LMM, TTT-MLP; without it Titans MAG and MAL diverged
  on MQAR), off otherwise. ``BLOCK_OPTIONS``, also unless ``preset_options`` name them: Moneta's
  floor ``eps=0.01`` of ‖A‖_q (``preset_options={"eps": 0.0}`` gives MIRAS Eq 24 exactly).
  ``chunk_remat`` (default True): each chunk of the parallel form under
  ``jax.checkpoint`` (``core.chunked``'s ``remat``: the backward pass keeps the chunk-boundary
  states and recomputes each chunk's internals; False keeps every chunk's internals).
  """

  def __init__(
    self,
    dim: int,
    heads: int,
    head_dim: int,
    *,
    preset: str | mj.Rule = "titans_lmm",
    preset_options: dict | None = None,
    chunk_size: int = 64,
    conv_kernel: int = 4,
    gate_rank: int = 32,
    max_lr: float | None = None,
    channel_gates: tuple[str, ...] = (),
    init_scale: float | None = None,
    delta_init: float | None = None,
    gate_init: dict | None = None,
    chunk_remat: bool = True,
    rngs: nnx.Rngs,
  ):
    options = dict(preset_options or {})
    if isinstance(preset, mj.Rule):  # a rule of your own, used as given (no block default clip)
      if options:
        raise ValueError("preset_options apply to a preset name; set them on the Rule instead")
      self.rule = preset
    else:
      self.rule = mj.presets.get(preset, **options)
      if not isinstance(self.rule, mj.Rule):
        raise ValueError(f"preset must be a parametric memory; got {preset!r} (use nn.Attention)")
      defaults = {"grad_clip": default_grad_clip(self.rule), **BLOCK_OPTIONS.get(preset, {})}
      defaults = {k: v for k, v in defaults.items() if v is not None and k not in options}
      if defaults:
        self.rule = mj.presets.get(preset, **defaults, **options)
    if self.rule.multi_step:
      raise ValueError("delta_product needs n keys per token; NeuralMemory writes one")
    self.heads, self.head_dim, self.chunk_size = heads, head_dim, chunk_size
    self.chunk_remat = bool(chunk_remat)
    if max_lr is None:  # a deep memory's inner GD diverges at steps a linear memory takes
      max_lr = default_max_lr(self.rule)
    if max_lr <= 0:
      raise ValueError(f"max_lr must be > 0; got {max_lr}")
    self.max_lr = float(max_lr)
    self.record_gates = False  # set by a monitoring probe to sow the gate activations
    inner = heads * head_dim
    self.q = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.k = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.v = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.conv_q = ShortConv(inner, conv_kernel, ("conv", "heads"), rngs=rngs)
    self.conv_k = ShortConv(inner, conv_kernel, ("conv", "heads"), rngs=rngs)
    self.conv_v = ShortConv(inner, conv_kernel, ("conv", "heads"), rngs=rngs)
    self.gate_names = tuple(f for f in mj.Gates._fields if f in self.rule.used_gates)
    self._widths = self._gate_widths(tuple(channel_gates))
    if delta_init is None:
      delta_init = DELTA_INIT_PER_SQRT_D * math.sqrt(head_dim)
    if not delta_init > 0:
      raise ValueError(f"delta_init must be > 0; got {delta_init}")
    self.delta_init = float(delta_init)
    self.gate_init = {}
    for name, value in dict(gate_init or {}).items():
      if name not in GATE_INIT or GATE_INIT[name][0] is not jax.nn.sigmoid:
        sigmoid = sorted(n for n, (act, _) in GATE_INIT.items() if act is jax.nn.sigmoid)
        raise ValueError(
          f"gate_init: {name!r} is not a sigmoid gate (one of {', '.join(sigmoid)}; δ: delta_init)"
        )
      if not 0 < value < 1:
        raise ValueError(f"gate_init[{name!r}] must be in (0, 1); got {value}")
      self.gate_init[name] = float(value)
    self.gates = nnx.Dict(
      {
        name: LowRankGate(
          dim,
          heads * self._widths[name],
          gate_rank,
          bias_init=self.gate_bias(name),
          rngs=rngs,
        )
        for name in self.gate_names
      }
    )
    if init_scale is None:
      init_scale = default_init_scale(self.rule)
    if not init_scale >= 0:
      raise ValueError(f"init_scale must be >= 0; got {init_scale}")
    one = self.rule.memory.init(rngs.params(), head_dim, head_dim, scale=float(init_scale))
    self.initial_memory = nnx.List(
      [
        param(
          rngs,
          lambda key, shape, dtype, w=w: jnp.broadcast_to(w, shape).astype(dtype),
          (heads, *w.shape),
          ("heads", None, None),
        )
        for w in jax.tree.leaves(one)
      ]
    )
    self.out_norm = RMSNorm(head_dim, ("head_dim",), rngs=rngs)
    self.out_gate = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.o = Linear(inner, dim, ("heads", "embed"), rngs=rngs)

  def _gate_widths(self, channel_gates: tuple[str, ...]) -> dict[str, int]:
    """Channels per head of each gate: the retention's own channels (GLA-style key channels, DFW's
    value channels), and head_dim for the gates named in ``channel_gates`` (MIRAS §5.4)."""
    rule, d = self.rule, self.head_dim
    allowed = {
      "lr": rule.channel_lr,
      "delta": rule.channel_delta,
      "retention": rule.memory.linear_in_state
      and rule.retention.channels in ("any", "key", "key_value"),
    }
    for name in channel_gates:
      if name not in allowed:
        raise ValueError(f"channel_gates: {name!r} is not one of {sorted(allowed)}")
      if name not in self.gate_names:
        raise ValueError(f"channel_gates: preset {rule.name!r} takes no {name!r} gate")
      if not allowed[name]:
        raise ValueError(
          f"channel_gates: {name!r} cannot be channel-wise for preset {rule.name!r} "
          f"({rule.memory.name}, {rule.bias.name}, {rule.retention.name}, {rule.algorithm.name})"
        )
    keyed = rule.retention.channels in ("key", "key_value")
    own = {"retention_value"} | ({"retention"} if keyed else set())
    return {n: d if n in own or n in channel_gates else 1 for n in self.gate_names}

  def gate_bias(self, name: str) -> float:
    """The initial bias of gate ``name`` (δ's from ``delta_init``, the logit of ``gate_init``'s
    value where it names the gate, else GATE_INIT's)."""
    if name == "delta":
      return softplus_inverse(self.delta_init)
    if name in self.gate_init:
      return math.log(self.gate_init[name] / (1.0 - self.gate_init[name]))
    return GATE_INIT[name][1]

  def gate_width(self, name: str) -> int:
    """Channels per head of gate ``name`` (1: a scalar per head and token)."""
    return self._widths[name]

  def initial_weights(self):
    """Learned initial memory per head, mapped into the retention's domain ([H, …] leaves)."""
    leaves = [self.rule.retention.to_domain(p[...]) for p in self.initial_memory]
    if self.rule.memory.linear_in_state:
      return leaves[0]
    return tuple(leaves)

  def init_state(self, batch: int, *, grid: bool = True) -> NeuralMemoryState:
    """The empty per-sequence state. ``grid``: for rules in the mini-batch form, include the chunk
    grid position (phase 0) as every returned state does, so decode caches keep one pytree
    structure from the first call on (one compile of a decode step, ``lax.scan`` carries);
    ``grid=False`` is the cheaper start of a fresh training sequence."""
    inner = self.heads * self.head_dim
    conv = self.conv_q.init_state(batch, inner)
    per_head = jax.vmap(self.rule.init_state)(self.initial_weights())
    if grid and not exact_form_applies(self.rule):
      per_head = per_head._replace(
        chunk_base=mj.MemoryState(per_head.weights, per_head.accum),
        chunk_phase=jnp.zeros((self.heads,), jnp.int32),
      )
    memory = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), per_head)
    return NeuralMemoryState(conv, conv, conv, memory)

  def __call__(self, x, state: NeuralMemoryState | None = None):
    """``x: [B, T, E]`` → ``(y [B, T, E], state)``; a state continues a previous call exactly."""
    b, t, _ = x.shape
    if state is None:
      state = self.init_state(b, grid=False)
    h, d = self.heads, self.head_dim
    q, cq = self.conv_q(self.q(x), state.conv_q)
    k, ck = self.conv_k(self.k(x), state.conv_k)
    v, cv = self.conv_v(self.v(x), state.conv_v)
    # the memory's inputs, gates and state in float32 whatever the compute dtype (its writes
    # accumulate); y returns to the input's dtype at the output projection
    f32 = lambda y: y.astype(jnp.promote_types(y.dtype, jnp.float32))  # noqa: E731
    heads = lambda y: f32(jax.nn.silu(y)).reshape(b, t, h, d).transpose(0, 2, 1, 3)  # [B, H, T, D]
    q, k, v = l2_normalize(heads(q)), l2_normalize(heads(k)), heads(v)
    gates = {}
    for name in self.gate_names:
      act = GATE_INIT[name][0]
      raw = act(f32(self.gates[name](x)))  # [B, T, H] or [B, T, H·D]
      if name == "lr":
        raw = raw * self.max_lr
      raw = raw.reshape(b, t, h, -1).transpose(0, 2, 1, 3)  # [B, H, T, 1 | D]
      gates[name] = raw[..., 0] if raw.shape[-1] == 1 else raw
    g = mj.Gates(**gates)
    if self.record_gates:  # monitoring: nnx.Intermediate, collected with nnx.pop (not in a scan)
      self.sow(
        nnx.Intermediate, "gate_values", {n: jax.lax.stop_gradient(a) for n, a in gates.items()}
      )

    def one(st, q, k, v, g):
      return mj.chunked(
        self.rule, st, q, k, v, g, chunk_size=self.chunk_size, remat=self.chunk_remat
      )

    ys, memory = jax.vmap(jax.vmap(one))(state.memory, q, k, v, g)  # [B, H, T, D]
    return self._output(ys, x), NeuralMemoryState(cq, ck, cv, memory)

  def read(self, x, memory, conv_q):
    """Retrieval without a write, ``h = M*(q)`` (Titans Eq 21): queries from ``x: [B, T, E]``
    through this block's q projection and short conv (its buffer ``conv_q`` passed in and out),
    read from a frozen memory state ``memory`` (leaves ``[B, H, …]``). Returns ``(h [B, T, E],
    conv_q)``; output norm, gate and projection as in ``__call__``."""
    b, t, _ = x.shape
    q, conv_q = self.conv_q(self.q(x), conv_q)
    q = jax.nn.silu(q).astype(jnp.promote_types(q.dtype, jnp.float32))
    q = l2_normalize(q.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3))
    ys = jax.vmap(jax.vmap(self.rule.read))(memory, q)  # [B, H, T, D]
    return self._output(ys, x), conv_q

  def _output(self, ys, x):
    """Per-head RMSNorm, then ⊙ sigmoid(x W_g) and the output projection: ``[B, H, T, D]`` → E."""
    b, h, t, d = ys.shape
    ys = self.out_norm(ys).astype(x.dtype).transpose(0, 2, 1, 3).reshape(b, t, h * d)
    return self.o(ys * jax.nn.sigmoid(self.out_gate(x)))
