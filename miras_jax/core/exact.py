"""The exact chunkwise form of the rules linear in their state (``chunked`` dispatches here).

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.core.blocks import (
  isolate_nonfinite,
  join_chunks,
  poison_after,
  safe_log,
  split_chunks,
)
from miras_jax.core.gates import Gates
from miras_jax.core.rule import MemoryState, Rule


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
  log_a = safe_log(g.retention) if g.retention is not None else jnp.zeros((t,), q.dtype)
  log_bv = safe_log(g.retention_value) if g.retention_value is not None else None
  if rule.multi_step:  # DeltaProduct → Gated DeltaNet on T·n steps
    n = rule.algorithm.steps
    zeros = jnp.zeros((t, n - 1), q.dtype)
    log_a = jnp.concatenate([log_a[:, None], zeros], axis=1).reshape(t * n)
    q = jnp.concatenate([jnp.zeros((t, n - 1, q.shape[-1]), q.dtype), q[:, None]], 1)
    q, k, v, lr = (x.reshape(t * n, *x.shape[2:]) for x in (q, k, v, lr))
  lr = rule.algorithm.exact_rate(lr, k)  # Longhorn's implicit step: η / (1 + η‖k‖²)
  erase = lr if rule.bias.exact_write == "delta" else None
  return q, k, v, lr, erase, log_a, log_bv


def run(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """Outputs and end state of ``rule`` over the sequence in chunks of ``b`` tokens (the module
  docstring's WY/UT form; the arguments already checked and promoted by ``chunked``)."""
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
  xs, alive = isolate_nonfinite(xs, q.shape[0])
  full, rest = split_chunks({"q": q, **xs}, b * n, q.shape[0])
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
  ys = poison_after(join_chunks(outs, v[:0]), alive)
  if n > 1:
    ys = ys.reshape(t, n, ys.shape[-1])[:, -1]
  return ys, state._replace(weights=poison_after(w, jnp.all(alive)))


def _exact_channel_lr(rule: Rule, state: MemoryState, q, k, v, g: Gates, b: int, remat: bool):
  """A channel-wise rate ``lr: [T, d_v]`` on a linear memory: row r of W (output channel r) then
  follows its own rule with the scalar rate ``lr[:, r]`` (the rows of W_t − diag(η)(W k − v) kᵀ
  do not interact), so the exact form runs once per row, vmapped."""

  def row(w, v_r, lr_r):
    ys, end = run(rule, state._replace(weights=w[None]), q, k, v_r[:, None],
                     g._replace(lr=lr_r), b, remat)  # fmt: skip
    return ys[:, 0], end.weights[0]

  ys, w = jax.vmap(row, in_axes=(0, 1, 1), out_axes=(1, 0))(state.weights, v, g.lr)
  return ys, state._replace(weights=w)
