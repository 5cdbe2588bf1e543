"""A memory rule: the composition of the four MIRAS choices, and its token-serial ground truth.

``Rule(memory, bias, retention, algorithm)`` defines one write per token. With the previous state
``(W_{t−1}, A_{t−1}, S_{t−1})`` and the token's ``(k_t, v_t)`` and gates ``g_t``:

1. the gradient base point is ``B = W_{t−1}`` (``grad_at="previous"``: Titans, RWKV-7, Yaad) or the
   decayed ``B = α_t ⊙ W_{t−1}`` (``grad_at="decayed"``: Gated DeltaNet, DeltaProduct);
2. ``∇_t = ∇_W ℓ(M(B, k_t), v_t)`` for the attentional bias ℓ (``biases.weight_grad``); with
   ``grad_clip = c`` it is rescaled to ``∇_t · min(1, c / ‖∇_t‖)``, ‖·‖ the Frobenius norm over all
   of the memory's weight matrices together (``clip_scale``);
3. the algorithm turns ∇_t into a step Δ_t (GD, momentum, implicit GD);
4. the retention gate writes ``W_t = ret(W_{t−1}, Δ_t)`` (or ``W_t = B + Δ_t`` when the decay was
   already applied in step 1).

Multi-step GD (DeltaProduct) applies the decay once and then n GD steps, each at the updated state.
Reads come after the write: ``y_t = M(W_t, q_t)`` (Titans Eq 15); ``read_before_write=True`` gives
``y_t = M(W_{t−1}, q_t)``.

Shapes (one sequence, one head, CONVENTIONS §1): ``q: [T, d_k]``, ``k: [T, d_k]``, ``v: [T, d_v]``,
``ys: [T, d_v]``; DeltaProduct takes ``k: [T, n, d_k]``, ``v: [T, n, d_v]``, ``lr: [T, n]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.core import biases
from miras_jax.core.gates import Gates, check_gate_values, concrete
from miras_jax.core.interfaces import (
  AttentionalBias,
  LearningAlgorithm,
  Memory,
  RetentionGate,
  require,
)


class MemoryState(NamedTuple):
  """The per-sequence state of a parametric memory (a pytree).

  ``weights``: the current memory weights W_t (for Moneta W, not A); ``accum``: the dual variable
  A_t where the retention keeps one (Moneta's ℓq, FTRL elastic net), else ``None``; ``momentum``:
  Titans' surprise S_t, else ``None``. The mini-batch chunked forms also return ``chunk_phase``
  (tokens into the current chunk) and ``chunk_base`` (the state at the last chunk boundary, their
  gradient base point), so that a later call continues the chunk exactly; ``recurrent`` ignores them.
  """

  weights: Any
  accum: Any = None
  momentum: Any = None
  chunk_base: Any = None
  chunk_phase: Any = None


def clip_scale(norm_sq: jax.Array, clip: float) -> jax.Array:
  """``min(1, clip / ‖∇‖)`` from ``norm_sq = ‖∇‖²`` (1 at ∇ = 0): the factor of inner-gradient
  clipping (``Rule.grad_clip``). Not in the papers; titans-pytorch offers the same per-sample
  clipping (``max_grad_norm``). Without it a 2-layer MLP memory whose meta-learned initial weights
  have grown can blow up within one sequence (GD on it is unstable once η·‖W‖² is large).

  The floor is taken before the square root, so a token whose gradient is exactly 0 gets a zero
  derivative of the factor (√‖∇‖² at 0 would give 0 · ∞ = NaN in the outer gradient)."""
  return clip / jnp.sqrt(jnp.maximum(norm_sq, clip * clip))


@dataclasses.dataclass(frozen=True)
class Rule:
  """One memory rule = memory architecture × attentional bias × retention gate × algorithm."""

  name: str  # preset name, used in error messages
  memory: Memory  # e.g. LinearMemory, MLPMemory (memory.py)
  bias: AttentionalBias  # e.g. L2, Lp, Huber (biases.py)
  retention: RetentionGate  # e.g. Decay, LqNormalization, KLSoftmax (retention.py)
  algorithm: LearningAlgorithm  # e.g. GD, Momentum, DGD (algorithms.py)
  grad_at: str = "previous"  # "previous" (W_{t-1}) or "decayed" (α_t W_{t-1}) gradient base point
  lr_default: float | None = None  # used when gates.lr is None; None makes gates.lr required
  key_from_retention: bool = False  # HGRN2: the key is 1 − α_t and the given k is ignored
  use_loss: bool = False  # differentiate the bias's loss with jax.grad instead of its closed form
  chunk_form: str = "auto"  # chunked(): "auto" (exact when linear in the state) or "minibatch"
  grad_clip: float | None = None  # max norm of one token's inner gradient ∇_t (None: no clipping)

  def __post_init__(self):
    require(self.memory, Memory, "memory")
    require(self.bias, AttentionalBias, "bias")
    require(self.retention, RetentionGate, "retention")
    require(self.algorithm, LearningAlgorithm, "algorithm")
    if self.grad_clip is not None and not self.grad_clip > 0:
      raise ValueError(f"grad_clip must be > 0 or None; got {self.grad_clip!r}")
    if self.chunk_form not in ("auto", "minibatch"):
      raise ValueError(f"chunk_form must be 'auto' or 'minibatch'; got {self.chunk_form!r}")
    if self.grad_at not in ("previous", "decayed"):
      raise ValueError(f"grad_at must be 'previous' or 'decayed'; got {self.grad_at!r}")
    decays = self.retention.linear_in_state
    if (self.grad_at == "decayed" or self.multi_step) and not decays:
      raise ValueError(
        f"{self.name}: a decayed gradient base point or multi-step GD needs Decay or NoRetention "
        f"retention; got {self.retention.name}"
      )
    if self.algorithm.needs_linear_l2 and not (
      self.memory.linear_in_state and self.bias.exact_write == "delta"
    ):
      raise ValueError(
        f"{self.name}: {self.algorithm.name} takes an implicit GD step, closed-form only for a "
        "linear memory and l2"
      )
    if self.use_loss and self.bias.loss is None:
      raise ValueError(f"{self.name}: bias {self.bias.name} has no loss (use_loss=True)")

  # ----------------------------------------------------------------------------------------------
  @property
  def multi_step(self) -> bool:
    return self.algorithm.multi_step

  @property
  def channel_lr(self) -> bool:
    """Whether ``gates.lr`` may be channel-wise, ``[T, d_v]`` (MIRAS §5.4): one rate per output
    channel of the memory, scaling that channel's error signal (``_grad``). GD and momentum only
    (implicit GD, DGD and multi-step GD normalise a scalar rate)."""
    return self.algorithm.channel_lr and not self.key_from_retention

  @property
  def channel_delta(self) -> bool:
    """Whether ``gates.delta`` may be channel-wise, ``[T, d_v]`` (Huber coord and mixture)."""
    return self.bias.channel_delta

  @property
  def optional_gates(self) -> tuple[str, ...]:
    """Gates used when given and defaulted otherwise (lr → ``lr_default``; retention → none)."""
    opt = ("lr",) if self.lr_default is not None else ()
    if self.multi_step:  # DeltaProduct's decay is optional (DeltaNet-style when absent)
      opt += ("retention",)
    return tuple(dict.fromkeys(opt + tuple(self.retention.optional_gates)))

  @property
  def required_gates(self) -> tuple[str, ...]:
    names = [*self.retention.gates, *self.algorithm.gates]
    if self.bias.needs_delta:
      names.append("delta")
    return tuple(n for n in dict.fromkeys(names) if n not in self.optional_gates)

  @property
  def used_gates(self) -> tuple[str, ...]:
    return self.required_gates + self.optional_gates

  def init_state(self, weights) -> MemoryState:
    """State at t = 0 from the initial weights (for ℓq retention: A_0, and W_0 is derived)."""
    self.memory.dims(weights)
    weights = jax.tree.map(jnp.asarray, weights)
    domain = self.retention.domain
    if domain in ("simplex", "unit_interval"):
      for leaf in jax.tree.leaves(weights):
        arr = concrete(leaf)
        if arr is not None and not np.all(arr > 0):
          raise ValueError(
            f"{self.name}: weights must be positive (log W is taken); got min {arr.min():.3g}"
          )
        if arr is not None and domain == "unit_interval" and not np.all(arr < 1):
          raise ValueError(f"{self.name}: weights must lie in (0, 1); got max {arr.max():.3g}")
    w, accum = self.retention.init(weights)
    momentum = jax.tree.map(jnp.zeros_like, w) if self.algorithm.has_momentum else None
    return MemoryState(weights=w, accum=accum, momentum=momentum)

  # ----------------------------------------------------------------------------------------------
  def _grad(self, base, k, v, g):
    """``(∇_t, g)``: the (clipped) inner gradient at ``base`` and the gates of the algorithm's step.

    A channel-wise ``g.lr: [d_v]`` scales each output channel's error signal, ∇̃ = J_Wᵀ (η ⊙ ∂ℓ/∂M):
    it is folded into the gradient here and the step gets ``lr = 1``. The clip factor is that of
    the unscaled gradient, so equal channels give the scalar rule exactly."""
    channel_lr = self.channel_lr and g.lr is not None and jnp.ndim(g.lr) == 1
    if not channel_lr:
      grad = biases.weight_grad(self.memory, self.bias, base, k, v, g.delta, use_loss=self.use_loss)
      scaled = grad
    else:
      pred, pullback = jax.vjp(lambda w: self.memory.apply(w, k), base)
      out = biases.output_gradient(self.bias, pred, v, g.delta, use_loss=self.use_loss)
      (scaled,) = pullback(g.lr * out)
      grad = pullback(out)[0] if self.grad_clip is not None else None
      g = g._replace(lr=jnp.ones((), g.lr.dtype))
    if self.grad_clip is None:
      return scaled, g
    norm_sq = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(grad))
    scale = clip_scale(norm_sq, self.grad_clip)
    return jax.tree.map(lambda x: x * scale, scaled), g

  def _inputs(self, weights, k):
    """Each weight matrix's input when reading k (only DGD uses them)."""
    return self.memory.layer_inputs(weights, k) if self.algorithm.needs_layer_inputs else None

  def write(self, state: MemoryState, k: jax.Array, v: jax.Array, g: Gates) -> MemoryState:
    """One token's write (see the module docstring); ``g`` holds this token's gates."""
    if self.lr_default is not None and g.lr is None:
      g = g._replace(lr=jnp.asarray(self.lr_default, jnp.float32))
    if self.key_from_retention:
      k = 1.0 - g.retention
    if self.multi_step:
      w = state.weights if g.retention is None else self.retention.decay(state.weights, g)
      for i in range(self.algorithm.steps):  # n is small and static: unrolled
        grad, _ = self._grad(w, k[i], v[i], g)
        step, _ = self.algorithm.step(grad, None, g._replace(lr=g.lr[i]), k[i])
        w = jax.tree.map(jnp.add, w, step)
      return state._replace(weights=w)
    if self.grad_at == "decayed":
      base = self.retention.decay(state.weights, g)
      grad, gs = self._grad(base, k, v, g)
      step, momentum = self.algorithm.step(grad, state.momentum, gs, k, base)
      return state._replace(weights=jax.tree.map(jnp.add, base, step), momentum=momentum)
    grad, gs = self._grad(state.weights, k, v, g)
    inputs = self._inputs(state.weights, k)
    step, momentum = self.algorithm.step(grad, state.momentum, gs, k, state.weights, inputs)
    w, accum = self.retention.write(state.weights, state.accum, step, g)
    return state._replace(weights=w, accum=accum, momentum=momentum)

  def read(self, state: MemoryState, q: jax.Array) -> jax.Array:
    """y = M(W, q) for one query ``q: [d_k]``."""
    return self.memory.apply(state.weights, q)

  # ----------------------------------------------------------------------------------------------
  def check(self, state: MemoryState, q, k, v, gates: Gates) -> None:
    """Raises ``ValueError`` naming the argument when shapes, gates or values are invalid."""
    if not isinstance(state, MemoryState):
      raise ValueError(
        f"state must be a MemoryState (from rule.init_state); got {type(state).__name__}"
      )
    if not isinstance(gates, Gates):
      raise ValueError(f"gates must be a miras_jax.Gates; got {type(gates).__name__}")
    d_k, d_v = self.memory.dims(state.weights)
    self._check_state(state)
    n = self.algorithm.steps if self.multi_step else None
    _check_array("q", q, 2, f"[T, d_k={d_k}]")
    t = q.shape[0]
    kv_rank, kv_desc = (3, f"[T, n={n}, ") if n else (2, "[T, ")
    _check_array("k", k, kv_rank, kv_desc + f"d_k={d_k}]")
    _check_array("v", v, kv_rank, kv_desc + f"d_v={d_v}]")
    expected = {
      "q": (q.shape, (t, d_k)),
      "k": (k.shape, (t, n, d_k) if n else (t, d_k)),
      "v": (v.shape, (t, n, d_v) if n else (t, d_v)),
    }
    if self.key_from_retention:
      expected.pop("k")  # ignored
      if k.shape[0] != t:
        raise ValueError(f"k must have T={t} rows like q; got {k.shape}")
    for name, (got, want) in expected.items():
      if tuple(got) != want:
        raise ValueError(
          f"{name} must have shape {want} (T from q, d_k/d_v from the state); got {tuple(got)}"
        )
    for name in self.required_gates:
      if getattr(gates, name) is None:
        raise ValueError(f"gates.{name} is required by preset '{self.name}' and is None")
    linear = self.memory.linear_in_state
    shapes = {
      "lr": [(t, n)] if n else [(t,), (t, d_v)] if self.channel_lr else [(t,)],
      "momentum": [(t,)],
      "delta": [(t,), (t, d_v)] if self.channel_delta else [(t,)],
      "retention": self._retention_shapes(t, d_k, linear),
      "retention_value": [(t, d_v)],
    }
    for name, allowed in shapes.items():
      value = getattr(gates, name)
      if value is None or name not in self.used_gates:
        continue
      if not hasattr(value, "shape") or tuple(value.shape) not in allowed:
        got = getattr(value, "shape", type(value).__name__)
        raise ValueError(
          f"gates.{name} must have shape {' or '.join(map(str, allowed))}; got {got}"
        )
      if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"gates.{name} must be a floating array; got dtype {value.dtype}")
    check_gate_values(gates)

  def _check_state(self, state: MemoryState) -> None:
    """The state's fields against those ``init_state`` builds from its weights (same pytree
    structure, shapes; a floating dtype of at least 32 bits, CONVENTIONS §6)."""
    for name in ("weights", "accum", "momentum"):
      for leaf in jax.tree.leaves(getattr(state, name)):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
          raise ValueError(
            f"state.{name} must hold float32 or float64 arrays (the state accumulates; half-"
            f"precision inputs are computed in the state's dtype); got dtype {dtype}"
          )
    want = jax.eval_shape(self.init_state, state.weights)
    for name in ("accum", "momentum"):
      got, expected = getattr(state, name), getattr(want, name)
      shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
      if jax.tree.structure(got) != jax.tree.structure(expected) or shapes(got) != shapes(expected):
        raise ValueError(
          f"state.{name} must match rule.init_state(weights).{name} of preset '{self.name}' "
          f"(shapes {shapes(expected)}); got {shapes(got) if got is not None else None}"
        )
    if (state.chunk_phase is None) != (state.chunk_base is None):
      raise ValueError("state.chunk_phase and state.chunk_base must be both given or both None")
    if state.chunk_phase is not None:
      phase = state.chunk_phase
      if jnp.ndim(phase) != 0 or not jnp.issubdtype(jnp.result_type(phase), jnp.integer):
        raise ValueError(f"state.chunk_phase must be an int scalar; got {phase!r}")
      base = state.chunk_base
      if not isinstance(base, MemoryState) or jax.tree.structure(
        (base.weights, base.accum)
      ) != jax.tree.structure((state.weights, state.accum)):
        raise ValueError("state.chunk_base must be a MemoryState(weights, accum) like the state's")

  def _retention_shapes(self, t, d_k, linear):
    channels = self.retention.channels
    if self.key_from_retention or channels in ("key", "key_value"):
      return [(t, d_k)]
    if channels == "scalar" or not linear:
      return [(t,)]
    return [(t,), (t, d_k)]


def _check_array(name, x, rank, desc):
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array of shape {desc}; got {type(x).__name__}")
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank}, shape {desc}; got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating array; got dtype {x.dtype}")


def promote(state, *inputs):
  """Casts the floating leaves of ``state`` and ``inputs`` to one dtype, the widest among them.

  The state is float32 or float64 (``Rule.check``), so half-precision inputs (float16, bfloat16 q,
  k, v or gates) are computed, and their outputs returned, in the state's dtype (CONVENTIONS §6:
  float32 state and accumulation): the result equals that of the inputs cast to float32 first, and
  differs from that of the unrounded float32 inputs by their rounding only (measured on every
  preset and form with the core tests' inputs: at most 1.0e-3 relative for float16, 1.1e-2 for
  bfloat16)."""
  leaves = jax.tree.leaves((state, inputs))
  dtype = jnp.result_type(*(x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)))
  cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, (state, *inputs))


def recurrent(rule, state, q, k, v, gates: Gates, *, read_before_write: bool = False):
  """Token-serial ground truth of a memory rule, built on ``lax.scan``.

  For t = 1..T: ``state_t = rule.write(state_{t−1}, k_t, v_t, g_t)`` and ``y_t = M(W_t, q_t)``
  (reads after the write, Titans Eq 15; ``read_before_write=True`` reads ``W_{t−1}``). Gradients of
  non-linear memories are taken with ``jax.grad``/``jax.vjp`` inside the scan.

  Args:
    rule: a ``Rule`` (``miras_jax.presets.get(name)``) or the non-parametric ``SoftmaxAttention``.
    state: the state from ``rule.init_state`` or a previous call (calls compose: two calls on
      halves equal one call on the whole).
    q, k: ``[T, d_k]``; v: ``[T, d_v]`` (DeltaProduct: ``k: [T, n, d_k]``, ``v: [T, n, d_v]``).
    gates: a ``Gates`` whose fields are ``[T, …]`` arrays or ``None`` where unused.

  Inputs may be in half precision (float16, bfloat16); they are computed in the state's float32
  (or float64) dtype (``promote``), which is also the dtype of ``ys``. A half-precision state is
  rejected (``Rule.check``). ``T = 0`` gives ``ys: [0, d_v]`` and the unchanged state.

  Returns:
    ``(ys, state)``: outputs ``[T, d_v]`` and the state after the last token.
  """
  rule.check(state, q, k, v, gates)
  gates = Gates(**{f: getattr(gates, f) if f in rule.used_gates else None for f in Gates._fields})
  state, q, k, v, gates = promote(state, q, k, v, gates)

  def step(carry, xs):
    q_t, k_t, v_t, g_t = xs
    new = rule.write(carry, k_t, v_t, g_t)
    y = rule.read(carry if read_before_write else new, q_t)
    return new, y

  state, ys = jax.lax.scan(step, state, (q, k, v, gates))
  return ys, state


def surprise(rule, state, k, v, gates: Gates | None = None):
  """The surprise of each pair ``(k_t, v_t)`` to the memory ``state``, without writing it.

  Titans §3.1: the momentary surprise of a token is the gradient of the associative loss (Eq 12,
  ``ℓ(M; k_t, v_t) = ‖M(k_t) − v_t‖²``; here the rule's own attentional bias, e.g. the ℓ2 bias
  ``½‖M(k) − v‖²``) with respect to the memory's weights, the term that Eq 13 scales by θ_t:

      loss_t  = ℓ(M(W, k_t), v_t)
      norm_t  = ‖∇_W ℓ(M(W, k_t), v_t)‖      (Frobenius, over all of the memory's weight matrices)

  both at the weights ``W = state.weights``, before clipping (``Rule.grad_clip``) and before any
  gate scales the gradient. Every pair is scored against the same state, so the surprise before and
  after a write is ``surprise(rule, state, …)`` and ``surprise(rule, new_state, …)``.

  Args:
    rule: a parametric ``Rule`` (``miras_jax.presets.get(name)``) with one key per token.
    state: a ``MemoryState`` (``rule.init_state`` or the state after ``recurrent``/``chunked``).
    k: ``[T, d_k]`` keys; v: ``[T, d_v]`` values.
    gates: needed only for a bias with a threshold (Huber): ``gates.delta`` of shape ``[T]`` or
      ``[T, d_v]``.

  Returns:
    ``(loss, norm)``, each ``[T]``. The loss is NaN for a bias defined by its update direction
    only (Yaad's Huber mixture, ``FromOutputGrad``), whose gradient norm is still given.
  """
  if not isinstance(rule, Rule):
    raise ValueError(f"rule must be a parametric Rule; got {type(rule).__name__}")
  if rule.multi_step:
    raise ValueError(f"surprise takes one key per token; preset '{rule.name}' writes n per token")
  if not isinstance(state, MemoryState):
    raise ValueError(f"state must be a MemoryState (rule.init_state); got {type(state).__name__}")
  rule._check_state(state)
  _check_array("k", k, 2, "[T, d_k]")
  _check_array("v", v, 2, "[T, d_v]")
  if k.shape[0] != v.shape[0]:
    raise ValueError(f"k and v must have the same length T; got {k.shape[0]} and {v.shape[0]}")
  d_k, d_v = rule.memory.dims(state.weights)
  if k.shape[1] != d_k or v.shape[1] != d_v:
    raise ValueError(
      f"k must be [T, {d_k}] and v [T, {d_v}] for this memory; got {tuple(k.shape)} and "
      f"{tuple(v.shape)}"
    )
  delta = None
  if rule.bias.needs_delta:
    delta = gates.delta if gates is not None else None
    if delta is None:
      raise ValueError(f"gates.delta is required: bias {rule.bias.name} has a threshold δ")
    if jnp.shape(delta)[:1] != (k.shape[0],):
      raise ValueError(f"gates.delta must be [T] or [T, d_v]; got shape {jnp.shape(delta)}")
  state, k, v, delta = promote(state, k, v, delta)
  weights = state.weights

  def one(k_t, v_t, delta_t):
    grad = biases.weight_grad(
      rule.memory, rule.bias, weights, k_t, v_t, delta_t, use_loss=rule.use_loss
    )
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(grad)))
    if rule.bias.loss is None:
      return jnp.full((), jnp.nan, norm.dtype), norm
    return rule.bias.loss(rule.memory.apply(weights, k_t), v_t, delta_t), norm

  return jax.vmap(one)(k, v, delta)
