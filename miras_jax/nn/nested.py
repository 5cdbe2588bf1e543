"""Nested Learning layers (NNX) over the functional core: the Continuum Memory System and
self-modifying Titans ([ARX] §7–8; ``miras_jax.core.cms``, ``miras_jax.core.selfmod``).

Both keep a per-sequence state (passed in and out, like ``NeuralMemory``): the in-context
parameters of every sequence start from meta-learned ``nnx.Param`` initial values. A call without a
state starts a fresh sequence; a returned state continues it exactly (decode == one call).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from miras_jax.core import cms as cms_core
from miras_jax.core import selfmod as sm
from miras_jax.nn.layers import Linear, RMSNorm, ShortConv, param


def _batched(tree, batch: int):
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape)), tree)


class CMSLayer(nnx.Module):
  """The CMS in place of an MLP block: ``x: [B, T, E]`` → the chain's increment ``[B, T, E]``.

  Levels are residual GELU MLPs ``h + W_out σ(W_in h)`` of width ``hidden`` (``core.cms``); the
  layer returns ``y − x`` (the sum of the level branches along the chain), so that a pre-norm block
  ``x + CMSLayer(norm x)`` with one level at rate 0 is the usual MLP block. Meta-learned: every
  level's initial ``(W_in, W_out)``, its value map ``V_ℓ`` (zeros at init: the inner loop first
  decays the branch towards 0 on the sequence's inputs, until the outer loop learns what to store)
  and the independent variant's mixing weights.
  """

  def __init__(
    self,
    dim: int,
    hidden: int,
    *,
    chunk_sizes: tuple[int, ...] = (1, 4, 16),
    lrs: tuple[float, ...] = (1e-2, 1e-2, 1e-2),
    variant: str = "sequential",
    rngs: nnx.Rngs,
  ):
    self.cms = cms_core.CMS(tuple(chunk_sizes), tuple(float(r) for r in lrs), variant)
    n = self.cms.levels
    init_in = nnx.initializers.lecun_normal(in_axis=-1, out_axis=-2)
    w_in = [param(rngs, init_in, (hidden, dim), ("mlp", "embed")) for _ in range(n)]
    w_out = [param(rngs, init_in, (dim, hidden), ("embed", "mlp")) for _ in range(n)]
    self.w_in, self.w_out = nnx.List(w_in), nnx.List(w_out)
    self.values = nnx.List(
      [param(rngs, nnx.initializers.zeros, (dim, dim), ("embed", None)) for _ in range(n)]
    )
    independent = variant == "independent"
    self.mix = param(rngs, nnx.initializers.ones, (n,), (None,)) if independent else None

  def _outer(self):
    mix = self.mix[...] if self.mix is not None else None
    return cms_core.CMSOuter(tuple(v[...] for v in self.values), mix)

  def init_state(self, batch: int) -> cms_core.CMSState:
    params = [(a[...], b[...]) for a, b in zip(self.w_in, self.w_out, strict=True)]
    return _batched(self.cms.init_state(params), batch)

  def __call__(self, x, state: cms_core.CMSState | None = None):
    fresh = state is None
    if fresh:
      state = self.init_state(x.shape[0])
    outer = self._outer()
    one = lambda st, xs: cms_core.cms_chunked(self.cms, st, xs, outer, aligned=fresh)  # noqa: E731
    y, state = jax.vmap(one)(state, x)
    return y - x, state


class SelfModifyingTitansState(NamedTuple):
  conv: jax.Array  # the short-conv buffer [B, K−1, H·D]
  memory: sm.SelfModState  # per (batch, head) memories, leaves [B, H, …]


class SelfModifyingTitans(nnx.Module):
  """Multi-head self-modifying Titans (``core.selfmod``), Hope's sequence mixer ([ARX] Eq 94–97).

      x ─ Linear ─ short causal conv (window 4) ─ split heads ─ M_k, M_v, M_eta, M_alpha ─┐
      x ─ W_q (non-adaptive) ─ split heads ─────────────────────────────────── M_memory(q)─┤
      per-head RMSNorm ─ output projection ◀─────────────────────────────────────────────┘

  Where the paper is silent (notes §9.5, §9.9): the memories of a head act on its ``D`` channels of
  the convolved input (heads as in Titans); the memories' hidden width is ``expansion · D``; the
  initial memories are meta-learned per head; the output has a per-head RMSNorm and a projection.
  """

  def __init__(
    self,
    dim: int,
    heads: int,
    head_dim: int,
    *,
    rule: sm.SelfModTitans,
    expansion: int = 2,
    conv_kernel: int = 4,
    rngs: nnx.Rngs,
  ):
    self.rule, self.heads, self.head_dim = rule, heads, head_dim
    inner, hidden = heads * head_dim, expansion * head_dim
    self.x_in = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    self.conv = ShortConv(inner, conv_kernel, ("conv", "heads"), rngs=rngs)
    self.q = Linear(dim, inner, ("embed", "heads"), rngs=rngs)
    w2 = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2)
    w1 = nnx.initializers.variance_scaling(0.1, "fan_in", "normal", in_axis=-1, out_axis=-2)
    self.initial = nnx.Dict(
      {
        n: nnx.List(
          [
            param(rngs, w2, (heads, hidden, head_dim), ("heads", None, None)),
            param(rngs, w1, (heads, head_dim, hidden), ("heads", None, None)),
          ]
        )
        for n in sm.MEMORIES
      }
    )
    const = lambda v: nnx.initializers.constant(v)  # noqa: E731
    readout = nnx.initializers.normal(0.1 / head_dim**0.5)  # small: gates start near their bias
    self.eta_w = param(rngs, readout, (heads, head_dim), ("heads", None))
    self.eta_b = param(rngs, const(-2.0), (heads,), ("heads",))  # η ≈ 0.12 max_lr at init
    self.alpha_w = param(rngs, readout, (heads, head_dim), ("heads", None))
    self.alpha_b = param(rngs, const(4.0), (heads,), ("heads",))  # α ≈ 0.98 at init
    self.momentum = param(rngs, const(2.0), (heads,), ("heads",))  # μ ≈ 0.88 at init
    self.out_norm = RMSNorm(head_dim, ("head_dim",), rngs=rngs)
    self.o = Linear(inner, dim, ("heads", "embed"), rngs=rngs)

  def _outer(self):
    return sm.SelfModOuter(
      self.eta_w[...], self.eta_b[...], self.alpha_w[...], self.alpha_b[...], self.momentum[...]
    )

  def init_state(self, batch: int) -> SelfModifyingTitansState:
    weights = {n: tuple(p[...] for p in self.initial[n]) for n in sm.MEMORIES}
    per_head = jax.vmap(self.rule.init_state)(weights)
    conv = self.conv.init_state(batch, self.heads * self.head_dim)
    return SelfModifyingTitansState(conv, _batched(per_head, batch))

  def __call__(self, x, state: SelfModifyingTitansState | None = None):
    """``x: [B, T, E]`` → ``(y [B, T, E], state)``."""
    b, t, _ = x.shape
    fresh = state is None
    if fresh:
      state = self.init_state(b)
    h, d = self.heads, self.head_dim
    u, conv = self.conv(self.x_in(x), state.conv)
    heads = lambda y: y.reshape(b, t, h, d).transpose(0, 2, 1, 3)  # noqa: E731  [B, H, T, D]
    u, q = heads(u), heads(self.q(x))

    def one(st, xs, qs, outer):
      return sm.selfmod_chunked(self.rule, st, xs, qs, outer, aligned=fresh)

    per_head = jax.vmap(one)  # over heads (outer parameters per head)
    ys, memory = jax.vmap(per_head, in_axes=(0, 0, 0, None))(state.memory, u, q, self._outer())
    ys = self.out_norm(ys).transpose(0, 2, 1, 3).reshape(b, t, h * d)
    return self.o(ys), SelfModifyingTitansState(conv, memory)
