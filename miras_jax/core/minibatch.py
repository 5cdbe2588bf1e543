"""The mini-batch chunked form (``chunked`` dispatches here for every rule not linear in its
state), and the aggregated per-chunk write (``write="chunk"``).

**Mini-batch forms** (everything else: TTT, Titans LMM, Moneta, Yaad, Memora, any MLP memory; Titans
Eq 16–18, MIRAS Eq 28–32). Inside a chunk every token's gradient is taken at the state the previous
chunk left (the *base*), with ``jax.vmap`` over tokens; decay and momentum are applied token by
token as linear recurrences, which makes every in-chunk state a linear combination

    W_t = a_t W_0 + b_t S_0 − Σ_{i≤t} C_ti ∇_i,     S_b = m_b S_0 − Σ_i η_i (m_b/m_i) ∇_i,

with a_t = Π α, m_t = Π μ, C = D^α (D^μ ⊙ η) from the decay masks D^α_ti = Π_{i<l≤t} α_l. For each
layer the per-token gradient is an outer product ∇_i = g_i x_iᵀ (backward signal × layer input at the
base), so token t reads its own W_t without materialising it (the dual form):
``W_t h = a_t W_0 h + b_t S_0 h − Σ_i C_ti (x_i·h) g_i``. Non-linear retention acts at chunk
boundaries: Moneta reads A_t / ‖A_{t'}‖_q^{q−2} with the normaliser of the previous boundary and
renormalises at the chunk's last token; Memora's first token of each chunk (the lag token, MIRAS
Eq 30) gets the full softmax update, and the rest of the chunk the linear one W_t = α_t W_{t−1} −
η_t ∇ℓ(W_lag) (Eq 31–32).

**Stability of the mini-batch semantics.** With the gradient base frozen, a chunk of GD on the ℓ2
loss of a linear memory is one GD step with the summed rate, W_b = W_0 (I − A) + Σ_i η_i v_i k_iᵀ
with A = Σ_i η_i k_i k_iᵀ: it is stable only while λ_max(A) ≤ 2 in (nearly) every chunk, which
Σ_i η_i ‖k_i‖² ≤ 2 guarantees, whereas the token-serial rule needs only η_t ‖k_t‖² ≤ 2 per token.
So the admissible rate shrinks like 1/b. Measured on ``ttt_linear`` with unit keys in d = 4 and
η ~ U(0.15, 0.3): at b = 64, λ_max(A) is 4.7 on average and above 2 in every chunk, the outputs
grow ~e^1.3 per chunk and overflow float32 (NaN from token 5 810; ``chunk_reference``, the
token-serial form of the same semantics, from 5 828, agreeing with this dual form to 4e-6 until
then: the semantics, not round-off); at b = 16, λ_max(A) is 1.4 on average (above 2 in 0.35 % of
the chunks) and the outputs stay finite over 10^5 tokens, as ``recurrent``'s; rates scaled so
that λ_max(A) ≤ 2 keep b = 64 finite too. Choose b and the rate scale together.

"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.core import biases
from miras_jax.core.blocks import (
  from_blocks,
  isolate_nonfinite,
  poison_after,
  safe_log,
  scan_chunks,
  split_chunks,
  to_blocks,
)
from miras_jax.core.gates import Gates
from miras_jax.core.reference import boundary, check_minibatch, phase_and_base, tree_where
from miras_jax.core.rule import MemoryState, Rule, clip_scale


def _token_factors(rule: Rule, base, k, v, delta, lr=None):
  """Per-layer (input x, backward signal g) of one token's gradient at ``base``: ∇_l = g_l x_lᵀ.

  ``lr``: a channel-wise rate ``[d_v]``, folded into the signals (as ``Rule._grad`` does)."""

  def forward(taps):
    inputs = []

    def linear(l, w, h):
      inputs.append(h)
      return h @ w.T + taps[l]

    return rule.memory.apply(base, k, linear=linear), inputs

  widths = [w.shape[0] for w in jax.tree.leaves(base)]
  taps = [jnp.zeros((n,), k.dtype) for n in widths]
  pred, pullback, inputs = jax.vjp(forward, taps, has_aux=True)
  out = biases.output_gradient(rule.bias, pred, v, delta, use_loss=rule.use_loss)
  (signals,) = pullback(out)
  scaled = signals if lr is None else pullback(lr * out)[0]
  if rule.grad_clip is not None:  # ‖∇‖² = Σ_l ‖g_l‖² ‖x_l‖² (each layer's gradient is rank 1)
    norm_sq = sum(jnp.sum(s * s) * jnp.sum(x * x) for s, x in zip(signals, inputs, strict=True))
    scale = clip_scale(norm_sq, rule.grad_clip)
    scaled = [s * scale for s in scaled]
  return inputs, scaled


def _factors(rule: Rule, base, k, v, g: Gates):
  """``_token_factors`` of a chunk's tokens (vmapped) and its gates for the coefficients: a
  channel-wise ``g.lr: [b, d_v]`` goes into the signals and the coefficients get ``lr = 1``."""
  delta = g.delta if g.delta is not None else jnp.zeros(k.shape[:1], k.dtype)
  if g.lr.ndim == 1:
    xs, gs = jax.vmap(lambda kk, vv, dd: _token_factors(rule, base, kk, vv, dd))(k, v, delta)
    return xs, gs, g
  xs, gs = jax.vmap(lambda kk, vv, dd, ll: _token_factors(rule, base, kk, vv, dd, ll))(
    k, v, delta, g.lr
  )
  return xs, gs, g._replace(lr=jnp.ones(k.shape[:1], g.lr.dtype))


def _coefficients(g: Gates, m: jax.Array, momentum: bool):
  """Decay/momentum coefficients of one chunk whose tokens with ``m = 0`` are no-ops.

  With W_t = α_t W_{t−1} + m_t S_t and S_t = μ_t S_{t−1} − η_t m_t ∇_t (α = μ = 1 where m = 0), or
  W_t = α_t W_{t−1} − η_t m_t ∇_t without momentum: W_t = a_t W_0 + b_t S_0 − Σ_i C_ti ∇_i and
  S_b = m_b S_0 − Σ_i s_i ∇_i. Returns a [b], b_s [b] (None), C [b, b], s [b] (None).
  """
  b = m.shape[0]
  mask = jnp.tril(jnp.ones((b, b), bool))
  lr = g.lr * m
  ones = jnp.ones((b,), lr.dtype)
  alpha = jnp.where(m > 0, g.retention, 1.0) if g.retention is not None else ones
  la = jnp.cumsum(safe_log(alpha))
  dec = jnp.where(mask, jnp.exp(jnp.where(mask, la[:, None] - la[None, :], 0.0)), 0.0)  # D^α
  if not momentum:
    return jnp.exp(la), None, dec * lr[None, :], None
  lm = jnp.cumsum(safe_log(jnp.where(m > 0, g.momentum, 1.0)))
  mom = jnp.where(mask, jnp.exp(jnp.where(mask, lm[:, None] - lm[None, :], 0.0)), 0.0)  # D^μ
  mom_lr = mom * lr[None, :]
  return jnp.exp(la), dec @ (m * jnp.exp(lm)), dec @ (m[:, None] * mom_lr), mom_lr[-1]


def _leaves(tree):
  return jax.tree.leaves(tree)


def _rebuild(like, leaves):
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _minibatch_inner(rule: Rule, state: MemoryState, base: MemoryState, q, k, v, g, m):
  """Tokens of one chunk (``m = 0``: no-op) from ``state``, gradients at ``base`` (dual form)."""
  lq = rule.retention.minibatch == "normalised"
  xs, gs, g = _factors(rule, base.weights, k, v, g)
  # a token whose gradient factors or gates are not finite stays out of the chunk's matmuls
  # (``isolate_nonfinite``); δ only enters through the factors (Yaad's ℓ1 branch keeps an infinite v finite)
  (xs, gs, g), alive = isolate_nonfinite((xs, gs, g._replace(delta=None)), q.shape[0])
  momentum = rule.algorithm.has_momentum
  a, b_s, coef, s_row = _coefficients(g, m, momentum)
  start = _leaves(state.accum if lq else state.weights)  # W (A for the ℓq retention) now
  s0 = _leaves(state.momentum) if momentum else None

  def write_sum(l, row):  # Σ_i row_i g_i x_iᵀ for layer l: [n_out, n_in]
    return (gs[l] * row[:, None]).T @ xs[l]

  ends = [
    a[-1] * w - write_sum(l, coef[-1]) + (b_s[-1] * s0[l] if momentum else 0.0)
    for l, w in enumerate(start)
  ]
  if lq:
    accum = _rebuild(state.accum, ends)
    new = state._replace(weights=rule.retention.init(accum)[0], accum=accum)
    # Reads use the last boundary's normaliser, except at the chunk's last slot (a new boundary).
    last = jnp.arange(q.shape[0]) == q.shape[0] - 1
    inv = [
      jnp.where(last, rule.retention.scale(e), rule.retention.scale(w))
      for w, e in zip(_leaves(base.accum), ends, strict=True)
    ]
  else:
    new = state._replace(weights=_rebuild(state.weights, ends))
  if momentum:
    mu_all = jnp.exp(jnp.sum(safe_log(jnp.where(m > 0, g.momentum, 1.0))))
    s_end = [mu_all * s - write_sum(l, s_row) for l, s in enumerate(s0)]
    new = new._replace(momentum=_rebuild(state.momentum, s_end))

  def dual(l, w, h):  # W_t h for every token t of the chunk at once: h [b, n_in] → [b, n_out]
    out = a[:, None] * (h @ start[l].T) - (coef * (h @ xs[l].T)) @ gs[l]
    if momentum:
      out = out + b_s[:, None] * (h @ s0[l].T)
    return out * inv[l][:, None] if lq else out

  ys = rule.memory.apply(start, q, linear=dual)
  return poison_after(new, jnp.all(alive)), poison_after(ys, alive)


def _minibatch_chunk(rule: Rule, carry, c):
  """One chunk: carry = (state, base for this chunk, base of the last chunk with real tokens)."""
  state, base, last_base = carry
  q, k, v, g, m = c["q"], c["k"], c["v"], c["g"], c["m"]
  if rule.retention.minibatch == "lag":  # Memora's lag token: the exact update
    lag = m[0] > 0
    cand = rule.write(state, k[0], v[0], jax.tree.map(lambda x: x[0], g))
    state = tree_where(lag, cand, state)
    base = tree_where(lag, boundary(cand), base)
    y0 = rule.memory.apply(state.weights, q[:1])
    if q.shape[0] == 1:
      return (state, boundary(state), tree_where(lag, base, last_base)), y0
    state, ys = _minibatch_inner(rule, state, base, *jax.tree.map(lambda x: x[1:], (q, k, v, g, m)))
    ys = jnp.concatenate([y0, ys])
  else:
    state, ys = _minibatch_inner(rule, state, base, q, k, v, g, m)
  last_base = tree_where(jnp.any(m > 0), base, last_base)
  return (state, boundary(state), last_base), ys


def run(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """Outputs and end state of ``rule`` in the mini-batch semantics with chunks of ``b`` tokens on
  the sequence's grid (the module docstring's dual form; arguments checked by ``chunked``)."""
  check_minibatch(rule, g)
  t = q.shape[0]
  if g.lr is None:
    g = g._replace(lr=jnp.full((t,), rule.lr_default, q.dtype))
  phase, base, fresh = phase_and_base(state)
  core = state._replace(chunk_base=None, chunk_phase=None)
  # the tokens at [phase, phase + T) of the chunks that cover them; empty slots are no-ops (m = 0)
  xs, mask, _, phase = to_blocks({"q": q, "k": k, "v": v, "g": g}, phase, b, aligned=fresh)
  xs["m"] = mask.astype(q.dtype)
  body = lambda carry, c: _minibatch_chunk(rule, carry, c)
  body = jax.checkpoint(body) if remat else body
  (final, _, last_base), ys = jax.lax.scan(body, (core, base, base), xs)
  ys = from_blocks(ys, phase, t)
  end = (phase + t) % b
  chunk_base = tree_where(end == 0, boundary(final), last_base)
  return ys, final._replace(chunk_base=chunk_base, chunk_phase=end)


def run_per_chunk(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """One aggregated write per chunk (``write="chunk"`` in ``chunked``); chunks start at the call."""
  if state.chunk_phase is not None:
    raise ValueError(
      "write='chunk' starts its chunks at the call: pass a state without chunk_phase"
    )
  check_minibatch(rule, g)
  if not rule.retention.linear_in_state:
    raise ValueError(f"{rule.name}: write='chunk' supports decay or no retention only")
  if g.lr is None:
    g = g._replace(lr=jnp.full(q.shape[:1], rule.lr_default, q.dtype))
  momentum = rule.algorithm.has_momentum

  def body(state: MemoryState, c):
    q, k, v, g = c["q"], c["k"], c["v"], c["g"]
    base = state.weights
    xs, gs, g = _factors(rule, base, k, v, g)
    step = [-(gs[l] * g.lr[:, None]).T @ xs[l] for l in range(len(xs))]  # −Σ_i η_i g_i x_iᵀ
    new = state
    if momentum:
      mu = jnp.exp(jnp.sum(safe_log(g.momentum)))
      step = [mu * s + u for s, u in zip(_leaves(state.momentum), step, strict=True)]
      new = new._replace(momentum=_rebuild(state.momentum, step))
    alpha = jnp.exp(jnp.sum(safe_log(g.retention))) if g.retention is not None else 1.0
    w = _rebuild(base, [alpha * w + u for w, u in zip(_leaves(base), step, strict=True)])
    new = new._replace(weights=w)
    ys = jnp.concatenate([rule.memory.apply(base, q[:-1]), rule.memory.apply(w, q[-1:])])
    return new, ys

  full, rest = split_chunks({"q": q, "k": k, "v": v, "g": g}, b, q.shape[0])
  return scan_chunks(body, state, full, rest, remat, v[:0])
