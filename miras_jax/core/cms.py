"""Continuum Memory System (Nested Learning [ARX] §7, Eqs 70–74; notes §5): MLP levels that learn
in context, each at its own update frequency.

Level ℓ is a residual MLP ``f_ℓ(h) = h + b_ℓ(h)``, ``b_ℓ(h) = W_out σ(W_in h)`` (``W_in: [m, d]``,
``W_out: [d, m]``, GELU, no biases), with chunk size ``C_ℓ`` and inner rate ``η_ℓ``. Its parameters
θ_ℓ change only at its chunk boundaries (Eq 71):

    θ_ℓ ← θ_ℓ − η_ℓ Σ_{t in the chunk} ∇_θ ℓ_ℓ(θ_ℓ; h_t)      when (t + 1) ≡ 0 (mod C_ℓ)

so every term of the sum is taken at the chunk-start parameters (the notes' off-by-one in Eq 71 is
resolved to exactly C_ℓ tokens per update). With ``normalized=True`` (the default) each weight
matrix's step is divided by ``1 + η_ℓ Σ_t ‖x_t‖²`` over the chunk, x_t being that matrix's input (h_t
for W_in, σ(W_in h_t) for W_out): the summed step of a chunk otherwise grows with C_ℓ·‖h‖², and
measured at width 32 with chunks 4/8/32, η = 0.01 and a value map of scale 3, the plain sum
(``normalized=False``, Eq 71 literally) drove the parameters to NaN within 64 tokens, and a tiny Hope
trained on MQAR diverged at optimizer step ~80. Eq 71 leaves f to "an arbitrary optimizer"; this one
is GD with DGD's normaliser η/(1 + η‖x‖²) applied to the chunk. A token is read with the parameters of the last
boundary at or before it: the update after token t is first used by token t + 1 (causal).

**Inner objective** (the paper's f(θ; x_t) is "the error component of an optimizer" on an
unspecified objective; notes §9.8). Here each level is an associative memory of its own input:
``ℓ_ℓ(θ; h) = ½‖b_ℓ(h) − V_ℓ h‖²``, where ``V_ℓ: [d, d]`` is an outer-level (meta-learned)
parameter: the model learns, across sequences, which view of its input each level memorises in
context (knowledge transfer by generation, [ARX] §3.3). The task loss never enters the inner loop, so
the forward pass stays a single causal sweep. Outer gradients flow through the writes exactly
(second order, like Titans' and TTT's inner loops).

**Variants** (``variant``):
- ``"sequential"`` (Eq 70/73): ``y = f_k(… f_1(x))``; level ℓ reads level ℓ−1's output; every initial
  θ_ℓ,0 is meta-learned.
- ``"nested"`` (Eq 72): the sequential chain, and at each boundary of level ℓ+1 the faster level ℓ is
  re-initialised from level ℓ+1's (just updated) parameters: the slower level learns the faster
  one's initial state. Needs equal widths and ``C_ℓ`` dividing ``C_{ℓ+1}``.
- ``"independent"`` (Eq 74): ``y = x + Σ_ℓ a_ℓ b_ℓ(x)`` with learned weights ``a`` (head-wise).

Shapes (one sequence, CONVENTIONS §1): ``x: [T, d]`` → ``y: [T, d]``. All chunk sizes must be
multiples of the smallest; the chunked form scans blocks of the smallest chunk size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from miras_jax.core.blocks import from_blocks, remat_scan, to_blocks
from miras_jax.core.memory import ACTIVATIONS

VARIANTS = ("sequential", "nested", "independent")


class CMSState(NamedTuple):
  """``params``: per level ``(W_in, W_out)`` now; ``accum``: per level the rate-scaled gradient sum
  of the open chunk; ``position``: tokens seen (int32); ``inputs_sq``: per level and matrix the sum
  of its squared input norms over the open chunk (the normalised step's denominator)."""

  params: Any
  accum: Any
  position: jax.Array
  inputs_sq: Any = None


class CMSOuter(NamedTuple):
  """Outer-level (meta-learned) inputs: ``values``: per level ``V_ℓ: [d, d]``; ``mix: [k]`` the
  aggregation weights of the independent variant (ignored otherwise)."""

  values: Any
  mix: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class CMS:
  """The level schedule and variant; see the module docstring."""

  chunk_sizes: tuple[int, ...]  # C_ℓ per level, in chain order
  lrs: tuple[float, ...]  # η_ℓ per level (0: the level never changes)
  variant: str = "sequential"  # sequential | nested | independent
  activation: str = "gelu"  # σ of every level
  normalized: bool = True  # divide each matrix's chunk step by 1 + η_ℓ Σ_t ‖x_t‖² (see below)

  def __post_init__(self):
    if not self.chunk_sizes or any(not isinstance(c, int) or c < 1 for c in self.chunk_sizes):
      raise ValueError(f"chunk_sizes must be positive ints; got {self.chunk_sizes!r}")
    if len(self.lrs) != len(self.chunk_sizes):
      raise ValueError(
        f"lrs must have one rate per level ({len(self.chunk_sizes)}); got {self.lrs!r}"
      )
    if any(lr < 0 for lr in self.lrs):
      raise ValueError(f"lrs must be >= 0; got {self.lrs!r}")
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
    c = min(self.chunk_sizes)
    if any(s % c for s in self.chunk_sizes):
      raise ValueError(
        f"every chunk size must be a multiple of the smallest; got {self.chunk_sizes}"
      )
    if self.variant == "nested" and any(
      b % a for a, b in zip(self.chunk_sizes, self.chunk_sizes[1:], strict=False)
    ):
      raise ValueError(
        f"nested CMS needs each chunk size to divide the next (faster levels first); "
        f"got {self.chunk_sizes}"
      )

  @property
  def levels(self) -> int:
    return len(self.chunk_sizes)

  # ---- one level ---------------------------------------------------------------------------------
  def branch(self, theta, h):
    """``b(h) = W_out σ(W_in h)`` for ``h: [..., d]``."""
    w_in, w_out = theta
    return ACTIVATIONS[self.activation](h @ w_in.T) @ w_out.T

  def inner_loss(self, theta, h, value):
    """ℓ(θ; h) = ½‖b(h) − V h‖² for one token (``value`` = V h)."""
    return 0.5 * jnp.sum(jnp.square(self.branch(theta, h) - value))

  # ---- state -------------------------------------------------------------------------------------
  def init_state(self, params) -> CMSState:
    """State at t = 0 from the initial level parameters ``[(W_in, W_out), …]`` (θ_ℓ,0)."""
    params = tuple(tuple(jnp.asarray(w) for w in p) for p in params)
    if len(params) != self.levels:
      raise ValueError(f"params must hold {self.levels} levels; got {len(params)}")
    d = params[0][0].shape[1]
    for i, (w_in, w_out) in enumerate(params):
      if w_in.ndim != 2 or w_out.shape != (d, w_in.shape[0]) or w_in.shape[1] != d:
        raise ValueError(
          f"params[{i}] must be (W_in [m, {d}], W_out [{d}, m]); got {w_in.shape}, {w_out.shape}"
        )
    if self.variant == "nested" and len({p[0].shape for p in params}) > 1:
      raise ValueError(
        f"params: nested CMS needs every level to have the same width; got "
        f"{[p[0].shape[0] for p in params]}"
      )
    accum = jax.tree.map(jnp.zeros_like, params)
    inputs_sq = tuple((jnp.zeros(()), jnp.zeros(())) for _ in params)
    return CMSState(params, accum, jnp.zeros((), jnp.int32), inputs_sq)

  def check(self, state: CMSState, x, outer: CMSOuter):
    if not isinstance(state, CMSState):
      raise ValueError(
        f"state must be a CMSState (from CMS.init_state); got {type(state).__name__}"
      )
    d = state.params[0][0].shape[1]
    if not hasattr(x, "ndim") or x.ndim != 2 or x.shape[1] != d:
      raise ValueError(f"x must have shape [T, d={d}]; got {getattr(x, 'shape', type(x).__name__)}")
    if len(outer.values) != self.levels or any(tuple(v.shape) != (d, d) for v in outer.values):
      raise ValueError(f"outer.values must be {self.levels} matrices [{d}, {d}]")
    if self.variant == "independent" and (
      outer.mix is None or tuple(outer.mix.shape) != (self.levels,)
    ):
      raise ValueError(f"outer.mix must have shape [{self.levels}] for the independent variant")

  # ---- the per-block computation shared by both forms ---------------------------------------------
  def _read_and_grads(self, params, outer: CMSOuter, x, mask):
    """Outputs of tokens ``x: [c, d]`` at ``params``, each level's Σ_t η_ℓ ∇ℓ_ℓ and its matrices'
    Σ_t ‖x_t‖² (masked)."""
    sums, squares, h = [], [], x
    branches = []
    for lvl, theta in enumerate(params):
      inp = x if self.variant == "independent" else h
      b = self.branch(theta, inp)

      def block_loss(th, inp=inp, lvl=lvl):  # Σ_t m_t ℓ(θ; h_t): one backward for the block
        per_token = jax.vmap(self.inner_loss, in_axes=(None, 0, 0))(
          th, inp, inp @ outer.values[lvl].T
        )
        return jnp.dot(mask, per_token)

      lr = self.lrs[lvl]
      sums.append(jax.tree.map(lambda a, lr=lr: lr * a, jax.grad(block_loss)(theta)))
      hidden = ACTIVATIONS[self.activation](inp @ theta[0].T)
      squares.append(tuple(jnp.dot(mask, jnp.sum(z * z, axis=-1)) for z in (inp, hidden)))
      branches.append(b)
      h = h + b
    if self.variant == "independent":
      y = x + sum(outer.mix[i] * b for i, b in enumerate(branches))
    else:
      y = h
    return y, tuple(sums), tuple(squares)

  def _boundary(self, params, accum, squares, end, real):
    """After the token at absolute position ``end − 1``: update every level whose chunk ends."""
    hits = [jnp.logical_and(real, end % c == 0) for c in self.chunk_sizes]
    new = []
    for p, acc, sq, h, lr in zip(params, accum, squares, hits, self.lrs, strict=True):
      scale = [1.0 / (1.0 + lr * s) if self.normalized else 1.0 for s in sq]
      new.append(tuple(jnp.where(h, w - c * a, w) for w, a, c in zip(p, acc, scale, strict=True)))
    clear = lambda tree, h: jax.tree.map(lambda a: jnp.where(h, jnp.zeros_like(a), a), tree)  # noqa: E731
    accum = [clear(acc, h) for acc, h in zip(accum, hits, strict=True)]
    squares = [clear(sq, h) for sq, h in zip(squares, hits, strict=True)]
    if self.variant == "nested":  # the faster level restarts from the slower one's parameters
      for i in reversed(range(self.levels - 1)):
        h = hits[i + 1]
        new[i] = jax.tree.map(lambda a, b, h=h: jnp.where(h, b, a), new[i], new[i + 1])
        accum[i], squares[i] = clear(accum[i], h), clear(squares[i], h)
    return tuple(new), tuple(accum), tuple(squares)


def cms_chunked(
  cms: CMS, state: CMSState, x, outer: CMSOuter, *, aligned: bool = False, remat: bool = True
):
  """Chunked (parallel) CMS: scans blocks of ``C_min`` tokens; inside a block the parameters are
  fixed, so outputs and gradients of all its tokens are computed at once.

  Args:
    cms: the level schedule; state: from ``cms.init_state`` or a previous call (calls compose).
    x: ``[T, d]``; outer: the meta-learned ``CMSOuter``.
    aligned: the caller promises ``state.position`` is a multiple of ``C_min`` (a fresh state).
    remat: each block under ``jax.checkpoint``, grouped under a second one (``remat_scan``): the
      backward pass keeps about 2·√(T / C_min) block-boundary states and recomputes the rest.

  Returns:
    ``(y [T, d], state)``. Equals ``cms_recurrent`` (token by token) up to float round-off.
  """
  cms.check(state, x, outer)
  c = min(cms.chunk_sizes)
  blocks, mask, ends, phase = to_blocks(x, state.position, c, aligned=aligned)

  def body(carry, inp):
    params, accum, squares = carry
    xb, mb, end = inp
    y, sums, sq = cms._read_and_grads(params, outer, xb, mb)
    accum, squares = jax.tree.map(jnp.add, (accum, squares), (sums, sq))
    return cms._boundary(params, accum, squares, end, mb[-1] > 0), y

  carry = (state.params, state.accum, state.inputs_sq)
  (params, accum, squares), ys = remat_scan(body, carry, (blocks, mask, ends), remat)
  t = x.shape[0]
  return from_blocks(ys, phase, t), CMSState(params, accum, state.position + t, squares)


def cms_recurrent(cms: CMS, state: CMSState, x, outer: CMSOuter):
  """Token-serial ground truth of ``cms_chunked`` (Eq 71 written token by token with ``lax.scan``)."""
  cms.check(state, x, outer)

  def token(carry, inp):
    params, accum, squares, pos = carry
    y, sums, sq = cms._read_and_grads(params, outer, inp[None], jnp.ones((1,), x.dtype))
    accum, squares = jax.tree.map(jnp.add, (accum, squares), (sums, sq))
    params, accum, squares = cms._boundary(params, accum, squares, pos + 1, jnp.asarray(True))
    return (params, accum, squares, pos + 1), y[0]

  carry = (state.params, state.accum, state.inputs_sq, state.position)
  (params, accum, squares, pos), ys = jax.lax.scan(token, carry, x)
  return ys, CMSState(params, accum, pos, squares)
