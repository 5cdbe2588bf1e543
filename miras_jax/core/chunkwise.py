"""Chunked (parallel) training forms of the memory rules, and the chunk-semantics reference.

``chunked(rule, state, q, k, v, gates, chunk_size=b)`` has the arguments and returns of
``recurrent`` (CONVENTIONS §5). The sequence is cut into chunks of b tokens; a ``lax.scan`` carries
the memory state from chunk to chunk, under ``jax.checkpoint`` so that the backward pass keeps one
state per chunk. For the exact forms the chunking is invisible (any chunk size, any split of the
sequence into calls gives the token-serial result). For the mini-batch forms chunk boundaries sit
every b tokens from the start of the *sequence*: the returned state carries ``chunk_phase`` (tokens
into the current chunk) and ``chunk_base`` (its gradient base point), and a later call first
completes that chunk, so that any split into calls, down to token-by-token decoding, gives the
outputs of one call. Inside a call the tokens are placed on this grid and the slots before the
first and after the last token are masked no-ops (η = 0, α = μ = 1, no write).

**Exact chunkwise forms** (rules linear in the state: linear memory, GD / implicit GD / multi-step
GD, decay or no retention, dot-product or ℓ2 bias). Every such rule is a "diagonal plus rank one"
recurrence, W_t = W_{t−1} D_t + w_t k_tᵀ with D_t = diag(α_t) and the written value

    w_t = ω_t v_t − ε_t W_{t−1} E_t k_t,     E_t = D_t (gradient at the decayed state) or I,

(Hebbian: ω = η, ε = 0; delta rule: ω = ε = β; Longhorn: ω = ε = β/(1 + β kᵀk)). With the in-chunk
cumulative log decays L_t = Σ_{l≤t} log α_l, the values of a chunk solve the unit lower-triangular
system (the WY/UT representation of Yang et al.'s DeltaNet and Gated DeltaNet chunk algorithms)

    (I + diag(ε) M) w = diag(ω) V − diag(ε) (e^{L^E} ⊙ K) W_0ᵀ,   M_ij = Σ_c k_ic k_jc e^{L^E_ic − L_jc}, j < i,

and then ``Y = (e^{L} ⊙ Q) W_0ᵀ + P w`` with P_ti = Σ_c q_tc k_ic e^{L_tc − L_ic} (i ≤ t), and
``W_b = W_0 diag(e^{L_b}) + wᵀ (e^{L_b − L} ⊙ K)``. Scalar decays make M and P plain matmuls;
key-channel decays (GLA, RWKV-7, HGRN2, DFW) form them from a [b, b, d_k] tensor so that every
exponent is ≤ 0 (no division by small cumulative products). The triangular inverse is built from
matmuls (``unit_lower_inverse``). For the delta rules a ``lax.scan`` carries W from chunk to chunk;
for the Hebbian rules (ε = 0) the chunk states obey W_n = W_{n−1} ⊙ Γ_n + U_n and come from one
``lax.associative_scan`` over chunks. DeltaProduct runs as Gated DeltaNet on its T·n sub-steps. Output equals ``recurrent`` at every chunk size up to float32 round-off.

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
η_t ∇ℓ(W_lag) (Eq 31–32). ``chunk_reference`` is the same semantics written token by token with
materialised weights; with ``chunk_size=1`` it equals ``recurrent`` exactly.

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

import math

import jax
import jax.numpy as jnp

from miras_jax.core import biases
from miras_jax.core import retention as ret
from miras_jax.core.attention import KVCache, SoftmaxAttention, attend, ring_slots, ring_write
from miras_jax.core.gates import Gates
from miras_jax.core.rule import MemoryState, Rule, clip_scale, promote

_TINY = 1e-30  # α is clamped here before the log, so that α = 0 gives a finite log decay


def _log(x):
  return jnp.log(jnp.maximum(x, _TINY))


# ================================================================================================
# Form selection and the driver shared by every form
# ================================================================================================
def exact_form_applies(rule: Rule) -> bool:
  """True when ``rule`` is linear in its state and has an exact chunkwise form (module docstring)."""
  return (
    isinstance(rule, Rule)
    and rule.chunk_form != "minibatch"
    and rule.grad_clip is None  # a clipped write is not linear in the state
    and rule.memory.linear_in_state
    and rule.algorithm.exact_form
    and rule.retention.linear_in_state
    and rule.bias.exact_write is not None
    and not (rule.bias.exact_write == "delta" and rule.retention.channels == "key_value")
  )


def _split(tree, b: int, t: int):
  """Splits the leading T axis of every leaf into (full chunks [N, b, …], remainder [T mod b, …])."""
  n = t // b
  full = jax.tree.map(lambda x: x[: n * b].reshape(n, b, *x.shape[1:]), tree) if n else None
  rest = jax.tree.map(lambda x: x[n * b :], tree) if t % b else None
  return full, rest


def _join(outs, empty):
  """The outputs of the chunks in order; ``empty`` (``[0, d_v]``) when there are none (T = 0)."""
  return jnp.concatenate(outs) if outs else empty


def _scan_chunks(body, carry, full, rest, remat: bool, empty):
  """Runs ``body(carry, chunk) -> (carry, ys)`` over the full chunks (scanned) and the remainder."""
  outs = []
  if full is not None:
    fn = jax.checkpoint(body) if remat else body
    carry, ys = jax.lax.scan(fn, carry, full)
    outs.append(ys.reshape(-1, *ys.shape[2:]))
  if rest is not None:
    carry, ys = body(carry, rest)
    outs.append(ys)
  return _join(outs, empty), carry


def _check_chunk_size(chunk_size) -> None:
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


def _finite_tokens(tree, t: int) -> jax.Array:
  """``[t]`` bool: whether every entry of each token's inputs (leaves ``[t, …]``) is finite."""
  ok = jnp.ones((t,), bool)
  for x in jax.tree.leaves(tree):
    ok &= jnp.all(jnp.isfinite(x.reshape(t, math.prod(x.shape[1:]))), axis=1)
  return ok


def _isolate(tree, t: int):
  """Keeps a non-finite token out of the chunk's matmuls: ``(tree, alive)`` with every token whose
  inputs (the exact form's effective k, v and gates; the mini-batch form's gradient factors and
  gates) are not all finite set to 0, and ``alive: [t]`` False from the first such token on.

  Inside a chunk every token meets every other one in a matmul over the chunk axis, where a
  causal mask cannot stop 0 · NaN = NaN (masks select with ``jnp.where``, but a NaN row of the
  right operand reaches every output row): without this a NaN in the last key made all earlier
  outputs of its chunk NaN. The caller marks its outputs from the first bad token on, and the end
  state, as NaN (``_poison``): the token-serial ``recurrent`` is non-finite there too (in every
  channel, or in the channels the bad entry reaches), and the earlier outputs stay exact."""
  ok = _finite_tokens(tree, t)
  clean = jax.tree.map(lambda x: jnp.where(ok.reshape(t, *(1,) * (x.ndim - 1)), x, 0), tree)
  return clean, jnp.cumsum(~ok) == 0


def _poison(tree, alive):
  """NaN in every floating leaf where ``alive`` (a scalar or a leading ``[t]``) is False."""

  def one(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return jnp.where(alive.reshape(*alive.shape, *(1,) * (x.ndim - alive.ndim)), x, jnp.nan)

  return jax.tree.map(one, tree)


def chunked(
  rule,
  state,
  q,
  k,
  v,
  gates: Gates,
  *,
  chunk_size: int = 64,
  remat: bool = True,
  write: str = "token",
):
  """Chunked form of ``rule``: exact for rules linear in the state, mini-batch semantics otherwise.

  Args:
    rule, state, q, k, v, gates: as for ``recurrent`` (shapes ``q, k: [T, d_k]``, ``v: [T, d_v]``).
    chunk_size: b, the tokens per chunk (mini-batch forms: the gradient base point is frozen per
      chunk, and chunks are counted from the start of the sequence, continuing the chunk a previous
      call left open); T need not be a multiple of b.
    remat: wrap each chunk in ``jax.checkpoint`` (activation memory grows with T/b).
    write: ``"token"`` (the papers: one write per token, above) or ``"chunk"``: one aggregated write
      per chunk (titans-pytorch's semantics; decay or no retention, GD or momentum):
      S_n = (Π_i μ_i) S_{n−1} − Σ_i η_i ∇ℓ(W_{n−1}; k_i, v_i), W_n = (Π_i α_i) W_{n−1} + S_n over the
      chunk's tokens i, and each token reads the latest chunk-end state at or before it (the
      chunk's last token reads W_n, the others W_{n−1}). Cheaper: no in-chunk coefficient matrix.

  Inputs may be in half precision; they are computed in the state's float32 dtype, as by
  ``recurrent`` (``rule.promote``; a half-precision state is refused). ``T = 0`` gives
  ``ys: [0, d_v]`` and the unchanged state (on the chunk grid for the mini-batch form). A token
  whose write is not finite (exact form: its key, value or gates; mini-batch form: its gradient
  or gates) never reaches an earlier output: those stay exact, and its own output, the later ones
  and the end state are NaN, in every channel (``recurrent`` is non-finite there too, possibly in
  fewer channels). Softmax attention: a non-finite key or value makes NaN exactly the outputs
  that attend to it (``attention.attend``).

  DGD rules have mini-batch semantics too (gradients at the chunk's base, the decay
  W_{t−1}(α_t I − η'_t k_t k_tᵀ) token by token), evaluated by ``chunk_reference`` (a token scan).

  Returns:
    ``(ys, state)`` as ``recurrent``: ``ys: [T, d_v]`` and the state after the last token.
  """
  _check_chunk_size(chunk_size)
  if write not in ("token", "chunk"):
    raise ValueError(f"write must be 'token' or 'chunk'; got {write!r}")
  rule.check(state, q, k, v, gates)
  gates = Gates(**{f: getattr(gates, f) if f in rule.used_gates else None for f in Gates._fields})
  state, q, k, v, gates = promote(state, q, k, v, gates)
  if isinstance(rule, SoftmaxAttention):
    if write != "token":
      raise ValueError("write='chunk' needs a parametric rule; softmax attention writes per token")
    return _attention_chunked(rule, state, q, k, v, chunk_size, remat)
  if write == "chunk":
    return _per_chunk(rule, state, q, k, v, gates, chunk_size, remat)
  if exact_form_applies(rule):
    return _exact(rule, state, q, k, v, gates, chunk_size, remat)
  if rule.algorithm.minibatch == "reference":  # e.g. DGD: W(αI − η'kkᵀ) has no dual form here
    return chunk_reference(rule, state, q, k, v, gates, chunk_size=chunk_size)
  return _minibatch(rule, state, q, k, v, gates, chunk_size, remat)


# ================================================================================================
# Exact chunkwise form (Hebbian and delta-rule families)
# ================================================================================================
def _decay_gram(x, y, lx, ly, strict: bool):
  """G_ti = Σ_c x_tc y_ic exp(lx_tc − ly_ic) for i ≤ t (i < t when strict), else 0.

  ``x, y: [b, d]``; ``lx, ly: [b]`` (scalar decay, a matmul) or ``[b, d]`` (channel decay, via a
  [b, b, d] tensor). Exponents of kept entries are ≤ 0; the rest are masked before ``exp``.
  """
  b = x.shape[0]
  mask = jnp.tril(jnp.ones((b, b), bool), k=-1 if strict else 0)
  if lx.ndim == 1:
    diff = jnp.where(mask, lx[:, None] - ly[None, :], 0.0)
    return jnp.where(mask, (x @ y.T) * jnp.exp(diff), 0.0)
  diff = jnp.where(mask[..., None], lx[:, None, :] - ly[None, :, :], 0.0)
  return jnp.where(mask, jnp.einsum("tc,ic,tic->ti", x, y, jnp.exp(diff)), 0.0)


def unit_lower_inverse(m: jax.Array, base: int = 16) -> jax.Array:
  """Inverse of a unit lower-triangular ``[n, n]`` matrix with matmuls only (no LAPACK call).

  Blocks of at most ``base`` rows use the nilpotent product (I + N)⁻¹ = Π_j (I + (−N)^{2^j}) (N is
  strictly lower triangular, so N^n = 0); larger matrices recurse on 2×2 blocks,
  [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]]. (XLA's CPU triangular solve deadlocked here
  under a large vmap, and few larger matmuls suit TPUs, GPUs and CPUs better than a substitution.)
  """
  n = m.shape[-1]
  if n <= base:
    neg = jnp.eye(n, dtype=m.dtype) - m  # −N
    inv, power, span = jnp.eye(n, dtype=m.dtype) + neg, neg, 2
    while span < n:
      power = power @ power
      inv = inv + inv @ power
      span *= 2
    return inv
  h = n // 2
  a_inv, d_inv = unit_lower_inverse(m[:h, :h], base), unit_lower_inverse(m[h:, h:], base)
  lower = -(d_inv @ m[h:, :h]) @ a_inv
  top = jnp.concatenate([a_inv, jnp.zeros((h, n - h), m.dtype)], axis=1)
  return jnp.concatenate([top, jnp.concatenate([lower, d_inv], axis=1)], axis=0)


def _exact_inputs(rule: Rule, q, k, v, g: Gates):
  """Per-token quantities of the diagonal-plus-rank-one form: (q, k, v, ω, ε, log α, log β_v)."""
  t = q.shape[0]
  lr = g.lr if g.lr is not None else jnp.full(k.shape[:-1], rule.lr_default, q.dtype)
  if rule.key_from_retention:
    k = 1.0 - g.retention
  log_a = _log(g.retention) if g.retention is not None else jnp.zeros((t,), q.dtype)
  log_bv = _log(g.retention_value) if g.retention_value is not None else None
  if rule.multi_step:  # DeltaProduct → Gated DeltaNet on T·n steps
    n = rule.algorithm.steps
    zeros = jnp.zeros((t, n - 1), q.dtype)
    log_a = jnp.concatenate([log_a[:, None], zeros], axis=1).reshape(t * n)
    q = jnp.concatenate([jnp.zeros((t, n - 1, q.shape[-1]), q.dtype), q[:, None]], 1)
    q, k, v, lr = (x.reshape(t * n, *x.shape[2:]) for x in (q, k, v, lr))
  lr = rule.algorithm.exact_rate(lr, k)  # Longhorn's implicit step: η / (1 + η‖k‖²)
  erase = lr if rule.bias.exact_write == "delta" else None
  return q, k, v, lr, erase, log_a, log_bv


def _exact(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  if g.lr is not None and g.lr.ndim == 2 and not rule.multi_step:
    return _exact_channel_lr(rule, state, q, k, v, g, b, remat)
  t = q.shape[0]
  n = rule.algorithm.steps if rule.multi_step else 1
  decayed = rule.grad_at == "decayed"
  q, k, v, write, erase, log_a, log_bv = _exact_inputs(rule, q, k, v, g)

  def prepare(c):
    """Everything of one chunk that does not depend on W_0."""
    l = jnp.cumsum(c["log_a"], axis=0)  # [b] or [b, d_k]
    expand = (lambda x: x[:, None]) if l.ndim == 1 else (lambda x: x)
    p = _decay_gram(c["q"], c["k"], l, l, strict=False)
    a_v = c["write"][:, None] * c["v"]
    pre = {"qd": jnp.exp(expand(l)) * c["q"], "p": p, "a_v": a_v}
    pre["k_end"] = jnp.exp(expand(l[-1] - l)) * c["k"]
    pre["decay_end"] = jnp.exp(l[-1])
    if erase is not None:
      le = l if decayed else l - c["log_a"]
      m = _decay_gram(c["k"], c["k"], le, l, strict=True)
      tri = jnp.eye(m.shape[0], dtype=m.dtype) + c["erase"][:, None] * m
      rhs = jnp.concatenate([a_v, c["erase"][:, None] * jnp.exp(expand(le)) * c["k"]], axis=1)
      sol = unit_lower_inverse(tri) @ rhs
      pre["a_v"], pre["a_k"] = sol[:, : a_v.shape[1]], sol[:, a_v.shape[1] :]
    if log_bv is not None:  # value-channel decay (DFW): a [b, b, d_v] factor on P
      lv = jnp.cumsum(c["log_bv"], axis=0)
      mask = jnp.tril(jnp.ones(p.shape, bool))
      pre["ev"] = jnp.exp(lv)
      pre["pv"] = jnp.where(
        mask[..., None], jnp.exp(jnp.where(mask[..., None], lv[:, None] - lv[None], 0.0)), 0.0
      )
      pre["ev_end"] = jnp.exp(lv[-1] - lv)
    return pre

  def transition(pre):
    """Chunk-end state as W_b = W_0 ⊙ Γ + U (Hebbian rules: the values w do not depend on W_0)."""
    gamma = pre["decay_end"] if log_bv is None else pre["decay_end"] * pre["ev"][-1][:, None]
    w = pre["a_v"] if log_bv is None else pre["a_v"] * pre["ev_end"]
    return gamma, w.T @ pre["k_end"]

  def read(w0, pre, w):
    direct = pre["qd"] @ w0.T  # [b, d_v]
    if log_bv is None:
      return direct + pre["p"] @ w
    return pre["ev"] * direct + jnp.einsum("ti,ir,tir->tr", pre["p"], w, pre["pv"])

  def propagate(w0, pre):
    """End state and outputs of one chunk of a delta rule from its initial state W_0."""
    w = pre["a_v"] - pre["a_k"] @ w0.T  # [b, d_v]
    return w0 * pre["decay_end"] + w.T @ pre["k_end"], read(w0, pre, w)

  xs = {"k": k, "v": v, "write": write, "log_a": log_a}
  if erase is not None:
    xs["erase"] = erase
  if log_bv is not None:
    xs["log_bv"] = log_bv
  xs, alive = _isolate(xs, q.shape[0])
  full, rest = _split({"q": q, **xs}, b * n, q.shape[0])
  outs, w = [], state.weights
  if full is not None:
    if erase is None:
      # Hebbian: chunk states follow W_n = W_{n−1} ⊙ Γ_n + U_n, a first-order linear recurrence,
      # solved for all chunks at once by a parallel prefix (associative) scan.
      pre = jax.vmap(prepare)(full)
      gamma, upd = jax.vmap(transition)(pre)
      gamma = jnp.broadcast_to(
        gamma.reshape(gamma.shape[0], *(1,) * (3 - gamma.ndim), *gamma.shape[1:]), upd.shape
      )
      combine = lambda a, b: (a[0] * b[0], a[1] * b[0] + b[1])
      _, ends = jax.lax.associative_scan(combine, (gamma, upd.at[0].add(w * gamma[0])))
      starts = jnp.concatenate([w[None], ends[:-1]])
      ys = jax.vmap(lambda w0, p: read(w0, p, p["a_v"]))(starts, pre)
      w = ends[-1]
    else:
      # Each chunk is prepared inside the scan step: on CPU this keeps the working set in cache
      # and measured 1.5–2× faster than preparing every chunk up front.
      body = lambda w0, c: propagate(w0, prepare(c))
      w, ys = jax.lax.scan(jax.checkpoint(body) if remat else body, w, full)
    outs.append(ys.reshape(-1, ys.shape[-1]))
  if rest is not None:
    pre = prepare(rest)
    if erase is None:
      gamma, upd = transition(pre)
      w, ys = w * gamma + upd, read(w, pre, pre["a_v"])
    else:
      w, ys = propagate(w, pre)
    outs.append(ys)
  ys = _poison(_join(outs, v[:0]), alive)
  if n > 1:
    ys = ys.reshape(t, n, ys.shape[-1])[:, -1]
  return ys, state._replace(weights=_poison(w, jnp.all(alive)))


def _exact_channel_lr(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """A channel-wise rate ``lr: [T, d_v]`` on a linear memory: row r of W (output channel r) then
  follows its own rule with the scalar rate ``lr[:, r]`` (the rows of W_t − diag(η)(W k − v) kᵀ
  do not interact), so the exact form runs once per row, vmapped."""

  def row(w, v_r, lr_r):
    ys, end = _exact(rule, state._replace(weights=w[None]), q, k, v_r[:, None],
                     g._replace(lr=lr_r), b, remat)  # fmt: skip
    return ys[:, 0], end.weights[0]

  ys, w = jax.vmap(row, in_axes=(0, 1, 1), out_axes=(1, 0))(state.weights, v, g.lr)
  return ys, state._replace(weights=w)


# ================================================================================================
# Mini-batch form (non-linear memories, momentum, non-linear biases and retention)
# ================================================================================================
def _check_minibatch(rule: Rule, g: Gates, *, serial: bool = False):
  """``serial``: the token-serial reference, which also runs DGD (its decay is not a scalar)."""
  forms = ("dual", "reference") if serial else ("dual",)
  if rule.grad_at != "previous" or rule.algorithm.minibatch not in forms:
    raise ValueError(
      f"{rule.name}: no chunked form for this composition (grad_at={rule.grad_at}, "
      f"{rule.algorithm.name}); use recurrent"
    )
  if rule.retention.minibatch is None:
    raise ValueError(
      f"{rule.name}: no chunked form for retention {rule.retention.name}; use recurrent"
    )
  for name in ("retention", "retention_value"):
    x = getattr(g, name)
    if x is not None and x.ndim != 1:
      raise ValueError(f"{rule.name}: the mini-batch chunked form needs a scalar gates.{name} [T]")


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
  la = jnp.cumsum(_log(alpha))
  dec = jnp.where(mask, jnp.exp(jnp.where(mask, la[:, None] - la[None, :], 0.0)), 0.0)  # D^α
  if not momentum:
    return jnp.exp(la), None, dec * lr[None, :], None
  lm = jnp.cumsum(_log(jnp.where(m > 0, g.momentum, 1.0)))
  mom = jnp.where(mask, jnp.exp(jnp.where(mask, lm[:, None] - lm[None, :], 0.0)), 0.0)  # D^μ
  mom_lr = mom * lr[None, :]
  return jnp.exp(la), dec @ (m * jnp.exp(lm)), dec @ (m[:, None] * mom_lr), mom_lr[-1]


def _leaves(tree):
  return jax.tree.leaves(tree)


def _rebuild(like, leaves):
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _tree_where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _boundary(state: MemoryState) -> MemoryState:
  """The part of a state that serves as a chunk's gradient base point (W, and A for ℓq)."""
  return MemoryState(state.weights, state.accum)


def _minibatch_inner(rule: Rule, state: MemoryState, base: MemoryState, q, k, v, g, m):
  """Tokens of one chunk (``m = 0``: no-op) from ``state``, gradients at ``base`` (dual form)."""
  lq = rule.retention.minibatch == "normalised"
  xs, gs, g = _factors(rule, base.weights, k, v, g)
  # a token whose gradient factors or gates are not finite stays out of the chunk's matmuls
  # (``_isolate``); δ only enters through the factors (Yaad's ℓ1 branch keeps an infinite v finite)
  (xs, gs, g), alive = _isolate((xs, gs, g._replace(delta=None)), q.shape[0])
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
    mu_all = jnp.exp(jnp.sum(_log(jnp.where(m > 0, g.momentum, 1.0))))
    s_end = [mu_all * s - write_sum(l, s_row) for l, s in enumerate(s0)]
    new = new._replace(momentum=_rebuild(state.momentum, s_end))

  def dual(l, w, h):  # W_t h for every token t of the chunk at once: h [b, n_in] → [b, n_out]
    out = a[:, None] * (h @ start[l].T) - (coef * (h @ xs[l].T)) @ gs[l]
    if momentum:
      out = out + b_s[:, None] * (h @ s0[l].T)
    return out * inv[l][:, None] if lq else out

  ys = rule.memory.apply(start, q, linear=dual)
  return _poison(new, jnp.all(alive)), _poison(ys, alive)


def _minibatch_chunk(rule: Rule, carry, c):
  """One chunk: carry = (state, base for this chunk, base of the last chunk with real tokens)."""
  state, base, last_base = carry
  q, k, v, g, m = c["q"], c["k"], c["v"], c["g"], c["m"]
  if rule.retention.minibatch == "lag":  # Memora's lag token: the exact update
    lag = m[0] > 0
    cand = rule.write(state, k[0], v[0], jax.tree.map(lambda x: x[0], g))
    state = _tree_where(lag, cand, state)
    base = _tree_where(lag, _boundary(cand), base)
    y0 = rule.memory.apply(state.weights, q[:1])
    if q.shape[0] == 1:
      return (state, _boundary(state), _tree_where(lag, base, last_base)), y0
    state, ys = _minibatch_inner(rule, state, base, *jax.tree.map(lambda x: x[1:], (q, k, v, g, m)))
    ys = jnp.concatenate([y0, ys])
  else:
    state, ys = _minibatch_inner(rule, state, base, q, k, v, g, m)
  last_base = _tree_where(jnp.any(m > 0), base, last_base)
  return (state, _boundary(state), last_base), ys


def _phase_and_base(state: MemoryState):
  """(phase, base, static_zero): where the previous call left the chunk grid."""
  if state.chunk_phase is None:
    return jnp.zeros((), jnp.int32), _boundary(state), True
  phase = jnp.asarray(state.chunk_phase, jnp.int32)
  base = _tree_where(phase > 0, state.chunk_base, _boundary(state))
  return phase, base, False


def _place(tree, phase, length):
  """Puts the T tokens of every leaf at [phase, phase + T) of a zero buffer of ``length`` slots."""

  def one(x):
    buf = jnp.zeros((length, *x.shape[1:]), x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, phase, axis=0)

  return jax.tree.map(one, tree)


def _minibatch(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  _check_minibatch(rule, g)
  t = q.shape[0]
  if g.lr is None:
    g = g._replace(lr=jnp.full((t,), rule.lr_default, q.dtype))
  phase, base, fresh = _phase_and_base(state)
  core = state._replace(chunk_base=None, chunk_phase=None)
  n = -(-t // b) if fresh else -(-(t + b - 1) // b)  # chunks covering [phase, phase + T)
  xs = _place({"q": q, "k": k, "v": v, "g": g, "m": jnp.ones((t,), q.dtype)}, phase, n * b)
  xs = jax.tree.map(lambda x: x.reshape(n, b, *x.shape[1:]), xs)
  body = lambda carry, c: _minibatch_chunk(rule, carry, c)
  body = jax.checkpoint(body) if remat else body
  (final, _, last_base), ys = jax.lax.scan(body, (core, base, base), xs)
  ys = jax.lax.dynamic_slice_in_dim(ys.reshape(n * b, ys.shape[-1]), phase, t, axis=0)
  end = (phase + t) % b
  chunk_base = _tree_where(end == 0, _boundary(final), last_base)
  return ys, final._replace(chunk_base=chunk_base, chunk_phase=end)


def _per_chunk(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """One aggregated write per chunk (``write="chunk"`` in ``chunked``); chunks start at the call."""
  if state.chunk_phase is not None:
    raise ValueError(
      "write='chunk' starts its chunks at the call: pass a state without chunk_phase"
    )
  _check_minibatch(rule, g)
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
      mu = jnp.exp(jnp.sum(_log(g.momentum)))
      step = [mu * s + u for s, u in zip(_leaves(state.momentum), step, strict=True)]
      new = new._replace(momentum=_rebuild(state.momentum, step))
    alpha = jnp.exp(jnp.sum(_log(g.retention))) if g.retention is not None else 1.0
    w = _rebuild(base, [alpha * w + u for w, u in zip(_leaves(base), step, strict=True)])
    new = new._replace(weights=w)
    ys = jnp.concatenate([rule.memory.apply(base, q[:-1]), rule.memory.apply(w, q[-1:])])
    return new, ys

  full, rest = _split({"q": q, "k": k, "v": v, "g": g}, b, q.shape[0])
  return _scan_chunks(body, state, full, rest, remat, v[:0])


# ================================================================================================
# Chunk-semantics reference (token by token, weights materialised)
# ================================================================================================
def chunk_reference(rule: Rule, state: MemoryState, q, k, v, gates: Gates, *, chunk_size: int):
  """Token-serial mini-batch semantics: the gradient base point is frozen per chunk.

  The semantics of ``chunked``'s mini-batch form (module docstring) written as one ``lax.scan`` over
  tokens with every W_t materialised. Chunk boundaries sit every ``chunk_size`` tokens from the
  start of the sequence; a state returned mid-chunk (``chunk_phase > 0``) continues that chunk.
  With ``chunk_size=1`` it is ``recurrent``. Half-precision inputs and ``T = 0`` as in ``chunked``.
  """
  if not isinstance(rule, Rule):
    raise ValueError(f"rule must be a parametric Rule; got {type(rule).__name__}")
  _check_chunk_size(chunk_size)
  rule.check(state, q, k, v, gates)
  g = Gates(**{f: getattr(gates, f) if f in rule.used_gates else None for f in Gates._fields})
  _check_minibatch(rule, g, serial=True)
  state, q, k, v, g = promote(state, q, k, v, g)
  t, b = q.shape[0], chunk_size
  if g.lr is None:
    g = g._replace(lr=jnp.full((t,), rule.lr_default, q.dtype))
  lq = rule.retention.minibatch == "normalised"
  lag = rule.retention.minibatch == "lag"
  inner = ret.Decay("scalar") if lag else rule.retention  # Memora's in-chunk (linear) retention
  phase, base, _ = _phase_and_base(state)
  core = state._replace(chunk_base=None, chunk_phase=None)

  def token(carry, x):
    state, base = carry
    pos, qt, kt, vt, gt = x
    first, last = pos % b == 0, pos % b == b - 1
    if lag:  # the lag token: the exact update, which is also the chunk's base
      cand = rule.write(state, kt, vt, gt)
      base = _tree_where(first, _boundary(cand), base)
    else:
      base = _tree_where(first, _boundary(state), base)
    grad, gs = rule._grad(base.weights, kt, vt, gt)  # noqa: SLF001 (clipped like every write)
    step, mom = rule.algorithm.step(
      grad, state.momentum, gs, kt, state.weights, rule._inputs(base.weights, kt)
    )
    if lq:
      accum = jax.tree.map(jnp.add, ret.scale_by_retention(state.accum, gt), step)
      normalised, _ = rule.retention.init(accum)
      scale = jax.tree.map(rule.retention.scale, base.accum)
      read = _tree_where(last, normalised, jax.tree.map(lambda a, c: a * c, accum, scale))
      new = state._replace(weights=normalised, accum=accum, momentum=mom)
    else:
      w, _ = inner.write(state.weights, None, step, gt)
      new = state._replace(weights=w, momentum=mom)
      if lag:
        new = _tree_where(first, cand, new)
      read = new.weights
    return (new, base), rule.memory.apply(read, qt)

  xs = (phase + jnp.arange(t), q, k, v, g)
  (final, base), ys = jax.lax.scan(token, (core, base), xs)
  end = (phase + t) % b
  return ys, final._replace(
    chunk_base=_tree_where(end == 0, _boundary(final), base), chunk_phase=end
  )


# ================================================================================================
# Softmax attention, chunk by chunk over a ring-buffer KV cache
# ================================================================================================
def _attention_chunked(rule: SoftmaxAttention, state: KVCache, q, k, v, b: int, remat: bool):
  """Blockwise causal attention: each chunk attends to the cache and to itself, then is cached."""
  cap, d_k = state.keys.shape
  scale = (1.0 / jnp.sqrt(d_k)) if rule.scale is None else rule.scale
  window = rule.window

  def body(cache: KVCache, c):
    qc, kc, vc = c["q"], c["k"], c["v"]
    n = qc.shape[0]
    length = cache.length
    pos_q = length + jnp.arange(n)
    pos_cache, valid_cache = ring_slots(length, cap)
    keys = jnp.concatenate([cache.keys, kc])
    vals = jnp.concatenate([cache.values, vc])
    pos_k = jnp.concatenate([pos_cache, pos_q])
    valid = jnp.concatenate([valid_cache, jnp.ones((n,), bool)])
    mask = valid[None, :] & (pos_k[None, :] <= pos_q[:, None])
    if window is not None:
      mask &= pos_k[None, :] > pos_q[:, None] - window
    ys = attend(qc, keys, vals, mask, scale)
    idx, keep = ring_write(length, n, cap)  # only the last `cap` tokens survive in the ring
    new = KVCache(
      cache.keys.at[idx].set(kc[n - keep :]), cache.values.at[idx].set(vc[n - keep :]), length + n
    )
    return new, ys

  full, rest = _split({"q": q, "k": k, "v": v}, b, q.shape[0])
  return _scan_chunks(body, state, full, rest, remat, v[:0])
