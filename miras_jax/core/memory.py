"""Memory architectures: the first MIRAS choice (what the memory M is).

A memory is a frozen dataclass with ``apply(weights, x)``, mapping keys or queries ``x: [..., d_k]``
to ``[..., d_v]``. Each of its ``depth`` layers is a linear map ``h ↦ W_l h`` (which ``apply`` lets a
caller replace through ``linear=``, as the chunked dual form does) followed by a fixed non-linearity. The weights are a pytree held in the memory state and updated by the rule.

- ``LinearMemory``: ``M(x) = W x`` with ``W: [d_v, d_k]`` (CONVENTIONS §1; a write is ``v kᵀ``).
- ``MLPMemory``: ``M(x) = W_L σ(… σ(W_1 x))`` (Titans §3.1 with ``L_M = depth``), weights a tuple
  ``(W_1, …, W_L)`` in the order they are applied, ``W_1: [h, d_k]``, ``W_L: [d_v, h]``,
  ``h = expansion · d_k``. With ``residual_ln=True`` it is the Moneta/Yaad/Memora form (MIRAS §5.4)
  ``M(x) = x + LN(W_out σ(W_in x))``: the paper's ``W_2`` is our first matrix ``W_in: [h, d]`` and its
  ``W_1`` our last ``W_out: [d, h]``; it needs ``d_k = d_v``. LN has no learned gain or bias (the
  memory learns only its matrices; an affine LN would be updated by the inner loop too).
- No bias vectors: the papers' memories are written without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf) GELU
  "silu": jax.nn.silu,
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
}


def _matmul(layer: int, w: jax.Array, h: jax.Array) -> jax.Array:
  """Layer ``layer``'s linear map ``h ↦ W h`` on a batch ``h: [..., n_in]``."""
  return h @ w.T


def _linear(linear):
  return _matmul if linear is None else linear


@dataclasses.dataclass(frozen=True)
class LinearMemory:
  """Matrix memory ``M(x) = W x`` with ``W: [d_v, d_k]``."""

  name = "linear"
  depth = 1
  linear_in_state = True

  def apply(self, weights: jax.Array, x: jax.Array, *, linear=None) -> jax.Array:
    """``M(x) = W x`` for ``x: [..., d_k]``; ``linear(l, w, h)`` overrides the matmul (dual forms)."""
    return _linear(linear)(0, weights, x)

  def layer_inputs(self, weights, x: jax.Array) -> tuple[jax.Array, ...]:
    """The input of each weight matrix when reading ``x``: ``(x,)``."""
    return (x,)

  def init(self, key: jax.Array, d_k: int, d_v: int, scale: float = 0.0) -> jax.Array:
    """Initial ``W_0: [d_v, d_k]``: zeros by default, else normal with std ``scale / √d_k``."""
    if scale == 0.0:
      return jnp.zeros((d_v, d_k), jnp.float32)
    return scale * jax.random.normal(key, (d_v, d_k), jnp.float32) / jnp.sqrt(d_k)

  def dims(self, weights: Any) -> tuple[int, int]:
    """Returns ``(d_k, d_v)`` of the weights, or raises ``ValueError`` naming ``weights``."""
    if not hasattr(weights, "ndim") or weights.ndim != 2:
      got = getattr(weights, "shape", type(weights).__name__)
      raise ValueError(f"weights of a linear memory must be a [d_v, d_k] array; got {got}")
    return int(weights.shape[1]), int(weights.shape[0])


@dataclasses.dataclass(frozen=True)
class MLPMemory:
  """MLP memory; see the module docstring for the equation and the weight layout."""

  depth: int = 2  # number of weight matrices (L_M); depth 1 is a linear memory
  expansion: int = 4  # hidden width h = expansion · d_k
  activation: str = "gelu"  # σ between layers: gelu (exact), silu, relu, tanh
  residual_ln: bool = False  # Moneta/Yaad/Memora form x + LN(W_out σ(W_in x)); needs d_k = d_v
  ln_eps: float = 1e-5  # epsilon of the parameter-free LayerNorm

  linear_in_state = False

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"depth must be >= 1; got {self.depth}")
    if self.expansion < 1:
      raise ValueError(f"expansion must be >= 1; got {self.expansion}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
    if self.residual_ln and self.depth < 2:
      raise ValueError("residual_ln needs depth >= 2")

  @property
  def name(self) -> str:
    kind = "residual_ln_mlp" if self.residual_ln else "mlp"
    return f"{kind}(depth={self.depth}, expansion={self.expansion}, {self.activation})"

  def apply(self, weights, x: jax.Array, *, linear=None) -> jax.Array:
    """``M(x)`` for ``x: [..., d_k]``; ``linear(l, w, h)`` overrides layer l's matmul (dual forms)."""
    act, linear = ACTIVATIONS[self.activation], _linear(linear)
    h = x
    for i, w in enumerate(weights):
      h = linear(i, w, h)
      if i < len(weights) - 1:
        h = act(h)
    if self.residual_ln:
      mean = jnp.mean(h, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
      h = x + (h - mean) * jax.lax.rsqrt(var + self.ln_eps)
    return h

  def layer_inputs(self, weights, x: jax.Array) -> tuple[jax.Array, ...]:
    """The input of each weight matrix when reading ``x`` (``x`` for W_1, then σ(W_1 x), …)."""
    seen = []

    def record(l, w, h):
      seen.append(h)
      return _matmul(l, w, h)

    self.apply(weights, x, linear=record)
    return tuple(seen)

  def init(self, key: jax.Array, d_k: int, d_v: int, scale: float = 1.0) -> tuple[jax.Array, ...]:
    """Initial weights ``(W_1, …, W_L)``, each normal with std ``scale / √fan_in``."""
    if self.residual_ln and d_k != d_v:
      raise ValueError(f"a residual_ln memory needs d_k == d_v; got d_k={d_k}, d_v={d_v}")
    h = self.expansion * d_k
    sizes = [d_k] + [h] * (self.depth - 1) + [d_v]
    keys = jax.random.split(key, self.depth)
    return tuple(
      scale * jax.random.normal(kk, (n_out, n_in), jnp.float32) / jnp.sqrt(n_in)
      for kk, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    )

  def dims(self, weights: Any) -> tuple[int, int]:
    """Returns ``(d_k, d_v)`` of the weights, or raises ``ValueError`` naming ``weights``."""
    if not isinstance(weights, (tuple, list)) or len(weights) != self.depth:
      raise ValueError(
        f"weights of {self.name} must be a tuple of {self.depth} matrices; "
        f"got {type(weights).__name__} of length {len(weights) if hasattr(weights, '__len__') else '?'}"
      )
    for i, w in enumerate(weights):
      if not hasattr(w, "ndim") or w.ndim != 2:
        raise ValueError(f"weights[{i}] must be a matrix; got {getattr(w, 'shape', w)}")
      if i and w.shape[1] != weights[i - 1].shape[0]:
        raise ValueError(
          f"weights[{i}] has shape {w.shape}, which does not chain with weights[{i - 1}] "
          f"{weights[i - 1].shape}"
        )
    d_k, d_v = int(weights[0].shape[1]), int(weights[-1].shape[0])
    if self.residual_ln and d_k != d_v:
      raise ValueError(f"a residual_ln memory needs d_k == d_v; got d_k={d_k}, d_v={d_v}")
    return d_k, d_v
