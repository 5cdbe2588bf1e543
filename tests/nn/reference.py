"""Independent references of the network layers, for the numeric tests of ``miras_jax.nn`` and
``miras_jax.models``.

Everything around the memory rules is plain float64 numpy written from ``docs/models.md`` and the
papers: projections, the short causal convolution, SiLU, ℓ2-normalisation, the gate activations
with their documented initial biases, RMSNorm, the output gate, RoPE, softmax attention, SwiGLU and
the Continuum Memory System. Only the memory rules themselves come from the functional core
(``mj.chunk_reference`` / ``mj.recurrent`` / ``selfmod_recurrent``, token-serial
references with their own tests). The layers' parameters are read back from the modules; the
constants the documentation fixes (gate biases at init, ``max_lr``, the Memora initial map, the
chunk size) are the references' own arguments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import special

import miras_jax as mj
from miras_jax.core import selfmod as sm
from miras_jax.core.exact import exact_form_applies
from miras_jax.core.reference import chunk_reference
from miras_jax.nn.layers import RMSNorm

RMS_EPS = 1e-6  # RMSNorm ε
L2_EPS = 1e-6  # ℓ2-normalisation ε (under the square root)


def f64(a) -> np.ndarray:
  return np.asarray(a, np.float64)


def kernel(linear) -> np.ndarray:
  return f64(linear.kernel[...])


def randomize_norm_scales(module, seed: int = 0):
  """Sets every RMSNorm gain in ``module`` (ones at init) to distinct values in [0.5, 1.5], so
  that a reference using the wrong norm fails; returns ``module``."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(module):
    if isinstance(node, RMSNorm):
      node.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=node.scale.shape), jnp.float32)
  return module


# ---- elementwise maps and norms ------------------------------------------------------------------
def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def softplus(z):
  return np.logaddexp(0.0, z)


def silu(z):
  return z * sigmoid(z)


def gelu(z):  # exact (erf) GELU
  return 0.5 * z * (1.0 + special.erf(z / np.sqrt(2.0)))


def gelu_grad(z):  # Φ(z) + z φ(z)
  return 0.5 * (1.0 + special.erf(z / np.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


def softmax(z, axis):
  e = np.exp(z - z.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def l2_normalize(x):
  return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + L2_EPS)


def rms_norm(x, norm):
  """``x / √(mean(x²) + ε) · g`` over the last axis, ``g`` read from the RMSNorm ``norm``."""
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * f64(norm.scale[...])


def causal_conv(x, conv, buffer):
  """Depthwise causal convolution ``y_t = Σ_j w_j ⊙ x_{t−j}``, ``x: [B, T, C]``, with ``buffer`` the
  previous K − 1 inputs ``[B, K−1, C]``; returns ``(y, new buffer)``."""
  w = f64(conv.weight[...])  # [K, C], w[j] multiplies x_{t−j}
  taps, t = w.shape[0], x.shape[1]
  padded = np.concatenate([buffer, x], axis=1)
  y = np.zeros_like(x)
  for s in range(t):
    for j in range(taps):
      y[:, s] += w[j] * padded[:, taps - 1 + s - j]
  return y, padded[:, t:]


def swiglu(mlp, x):
  return silu(x @ kernel(mlp.gate)) * (x @ kernel(mlp.up)) @ kernel(mlp.down)


def rope(x, positions, base=10000.0):
  """Rotate-half RoPE, ``x: [B, S, H, D]``, ``positions: [S]``."""
  d = x.shape[-1]
  freq = base ** (-np.arange(0, d // 2) * 2.0 / d)
  angle = np.asarray(positions, np.float64)[:, None] * freq[None, :]
  cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
  x1, x2 = x[..., : d // 2], x[..., d // 2 :]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ---- softmax attention ---------------------------------------------------------------------------
def attend(att, q, keys, vals, allowed, *, n_persistent: int):
  """``softmax(q kᵀ/√D) v`` then the output projection; ``q: [B, T, H, D]``, ``keys, vals:
  [B, S, H, D]``, ``allowed: [T, S]``. ``n_persistent`` learned tokens (projected by the attention's
  k and v, no RoPE) are prepended and visible to every query (Titans Eq 19)."""
  b, t, h, d = q.shape
  if n_persistent:
    p = f64(att.persistent[...])
    assert p.shape[0] == n_persistent
    pk = np.broadcast_to(
      (p @ kernel(att.k)).reshape(1, n_persistent, h, d), (b, n_persistent, h, d)
    )
    pv = np.broadcast_to(
      (p @ kernel(att.v)).reshape(1, n_persistent, h, d), (b, n_persistent, h, d)
    )
    keys, vals = np.concatenate([pk, keys], 1), np.concatenate([pv, vals], 1)
    allowed = np.concatenate([np.ones((t, n_persistent), bool), allowed], 1)
  scores = np.einsum("bthd,bshd->bhts", q, keys) / np.sqrt(d)
  scores = np.where(allowed[None, None], scores, -np.inf)
  y = np.einsum("bhts,bshd->bthd", softmax(scores, -1), vals)
  return y.reshape(b, t, h * d) @ kernel(att.o)


def project(att, x, positions, heads, rope_base=10000.0):
  """q, k (RoPE at ``positions``) and v of ``x: [B, T, E]``, each ``[B, T, H, D]``; with the
  layer's short convolution (``att.conv``), silu(conv) of the concatenated projections before RoPE
  (from a zero buffer: a sequence starting at position 0)."""
  split = lambda y: y.reshape(*x.shape[:2], heads, -1)
  q, k, v = (x @ kernel(p) for p in (att.q, att.k, att.v))
  if att.conv is not None:
    qkv = np.concatenate([q, k, v], axis=-1)
    taps = att.conv.weight.shape[0]
    qkv, _ = causal_conv(qkv, att.conv, np.zeros((x.shape[0], taps - 1, qkv.shape[-1])))
    q, k, v = np.split(silu(qkv), 3, axis=-1)
  q = rope(split(q), positions, rope_base)
  k = rope(split(k), positions, rope_base)
  return q, k, split(v)


def attention(att, x, *, heads, window=None, n_persistent=0):
  """Causal (sliding-window when ``window``) attention of a sequence starting at position 0."""
  t = x.shape[1]
  pos = np.arange(t)
  q, k, v = project(att, x, pos, heads)
  allowed = pos[None, :] <= pos[:, None]
  if window is not None:
    allowed &= pos[None, :] > pos[:, None] - window
  return attend(att, q, k, v, allowed, n_persistent=n_persistent)


# ---- the MIRAS block (nn.NeuralMemory) -----------------------------------------------------------
# docs/models.md, "The MIRAS block": gate → (activation, initial bias); η = max_lr·σ(·); δ's bias
# puts δ at 4·√head_dim at init (the bias is softplus⁻¹ of that).
# docs/models.md: the MLP memories with the ℓ2 bias clip each token's inner gradient at norm 10
# unless preset_options name grad_clip (None: off, the papers' form).
DEFAULT_GRAD_CLIP = {"titans_lmm": 10.0, "ttt_mlp": 10.0}
# docs/models.md: Moneta's ℓq map floors ‖A‖_q at 0.01 unless preset_options name eps.
DEFAULT_OPTIONS = {"moneta": {"eps": 0.01}}
GATES = {
  "lr": (sigmoid, -2.0),
  "retention": (sigmoid, 4.0),
  "momentum": (sigmoid, 2.0),
  "delta": (softplus, None),
}


@functools.cache
def _memory_core(rule, chunk_size: int, exact: bool):
  """The memory rule over ``[B, H]``: ``mj.recurrent`` for the exact (chunk-invariant) forms, the
  token-serial mini-batch semantics ``chunk_reference`` at ``chunk_size`` otherwise."""
  if exact:
    one = lambda st, q, k, v, g: mj.recurrent(rule, st, q, k, v, g)
  else:
    one = lambda st, q, k, v, g: chunk_reference(rule, st, q, k, v, g, chunk_size=chunk_size)
  return jax.jit(jax.vmap(jax.vmap(one)))


def _f32(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


class MemoryReference:
  """``nn.NeuralMemory`` written out (docs/models.md, "The MIRAS block"):

      q, k, v = SiLU(conv(x W)) per head, q and k ℓ2-normalised
      η = max_lr·σ(x D U − 2), α = σ(x D U + 4), μ = σ(x D U + 2), δ = softplus(x D U + b_δ)
      with softplus(b_δ) = 4·√head_dim
      y_t from the memory rule (chunk size ``chunk_size``), from the learned initial memory
      (Memora: c·softmax over each row, the input axis)
      out = (RMSNorm_head(y) ⊙ σ(x W_g)) W_o

  ``layer`` provides the learned matrices only; the gate biases are the documented initial ones.
  """

  def __init__(
    self, layer, *, preset, preset_options, chunk_size, max_lr, heads, head_dim, gate_init=None
  ):
    """``gate_init``: initial values of sigmoid gates by name (``lr``: η / ``max_lr``); the others
    start at the documented biases."""
    self.layer, self.heads, self.head_dim = layer, heads, head_dim
    self.biases = {n: float(np.log(v / (1 - v))) for n, v in (gate_init or {}).items()}
    options = dict(preset_options)
    if preset in DEFAULT_GRAD_CLIP and "grad_clip" not in options:
      options["grad_clip"] = DEFAULT_GRAD_CLIP[preset]
    for name, value in DEFAULT_OPTIONS.get(preset, {}).items():
      options.setdefault(name, value)
    self.rule = mj.presets.get(preset, **options)
    self.exact = exact_form_applies(self.rule)
    self.core = _memory_core(self.rule, chunk_size, self.exact)
    self.max_lr = max_lr
    leaves = [f64(p[...]) for p in layer.initial_memory]  # [H, …] per weight matrix
    if preset == "memora":
      c = preset_options.get("c", 1.0)
      leaves = [c * softmax(w, axis=-1) for w in leaves]
    self.initial = leaves[0] if isinstance(self.rule.memory, mj.LinearMemory) else tuple(leaves)

  def init_state(self, batch):
    """``(conv_q, conv_k, conv_v, memory)``: zero conv buffers and the initial memory per head,
    with the chunk grid at phase 0 for the mini-batch forms (so that calls continue it)."""
    inner = self.heads * self.head_dim
    taps = self.layer.conv_q.weight.shape[0]
    zeros = np.zeros((batch, taps - 1, inner))
    per_head = jax.vmap(self.rule.init_state)(_f32(self.initial))
    if not self.exact:
      per_head = per_head._replace(
        chunk_base=mj.MemoryState(per_head.weights, per_head.accum),
        chunk_phase=jnp.zeros((self.heads,), jnp.int32),
      )
    memory = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), per_head)
    return zeros, zeros, zeros, memory

  def _heads(self, y):  # [B, T, H·D] → [B, H, T, D]
    b, t, _ = y.shape
    return y.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)

  def gates(self, x):
    """Documented gates from ``x: [B, T, E]``, each ``[B, H, T]``."""
    out = {}
    for name in self.rule.used_gates:
      act, bias = GATES[name]
      if name == "delta":
        bias = np.log(np.expm1(4.0 * np.sqrt(self.head_dim)))
      bias = self.biases.get(name, bias)
      gate = self.layer.gates[name]
      z = x @ kernel(gate.down) @ kernel(gate.up) + bias  # [B, T, H]
      value = act(z) * (self.max_lr if name == "lr" else 1.0)
      if value.shape[-1] == self.heads:  # one value per head
        out[name] = value.transpose(0, 2, 1)
      else:  # channel-wise: head_dim values per head, [B, H, T, D]
        b, t, _ = value.shape
        out[name] = value.reshape(b, t, self.heads, -1).transpose(0, 2, 1, 3)
    return mj.Gates(**out)

  def output(self, ys, x):
    """Per-head RMSNorm, ⊙ σ(x W_g), output projection: ``ys: [B, H, T, D]`` → ``[B, T, E]``."""
    b, h, t, d = ys.shape
    y = rms_norm(ys, self.layer.out_norm).transpose(0, 2, 1, 3).reshape(b, t, h * d)
    return (y * sigmoid(x @ kernel(self.layer.out_gate))) @ kernel(self.layer.o)

  def query(self, x, conv_q):
    q, conv_q = causal_conv(x @ kernel(self.layer.q), self.layer.conv_q, conv_q)
    return l2_normalize(self._heads(silu(q))), conv_q

  def __call__(self, x, state):
    """Writes and reads ``x: [B, T, E]`` from ``state``; returns ``(y [B, T, E], state)``."""
    conv_q, conv_k, conv_v, memory = state
    q, conv_q = self.query(x, conv_q)
    k, conv_k = causal_conv(x @ kernel(self.layer.k), self.layer.conv_k, conv_k)
    v, conv_v = causal_conv(x @ kernel(self.layer.v), self.layer.conv_v, conv_v)
    k, v = l2_normalize(self._heads(silu(k))), self._heads(silu(v))
    ys, memory = self.core(memory, *_f32((q, k, v, self.gates(x))))
    return self.output(f64(ys), x), (conv_q, conv_k, conv_v, memory)

  def read(self, x, memory, conv_q):
    """``M*(q(x))`` from a frozen memory state (no write); returns ``(h [B, T, E], conv_q)``."""
    q, conv_q = self.query(x, conv_q)
    apply = jax.vmap(jax.vmap(self.rule.memory.apply))  # [B, H] of (weights, [T, D])
    ys = f64(apply(memory.weights, _f32(q)))
    return self.output(ys, x), conv_q


# ---- the Continuum Memory System (nn.CMSLayer) ---------------------------------------------------
def cms(layer, x, *, chunk_sizes, lrs, variant):
  """The CMS chain of docs/models.md (Nested Learning §7, Eq 70–74) token by token in numpy.

  Level ℓ: ``f_ℓ(h) = h + W_out σ(W_in h)`` (GELU); every token adds ``η_ℓ ∇θ ½‖b_ℓ(h) − V_ℓ h‖²``
  at the chunk-start parameters to the level's sum; after each C_ℓ tokens every matrix takes the
  summed step divided by ``1 + η_ℓ Σ_t ‖input_t‖²``. Sequential: y = f_k(… f_1(x)); nested: the
  sequential chain, and at level ℓ+1's boundaries level ℓ restarts from level ℓ+1's new parameters;
  independent: y = x + Σ_ℓ a_ℓ b_ℓ(x). Returns the layer's output y − x, ``x: [B, T, E]``.
  """
  n = len(chunk_sizes)
  values = [f64(v[...]) for v in layer.values]
  mix = f64(layer.mix[...]) if variant == "independent" else None
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    theta = [[f64(layer.w_in[i][...]), f64(layer.w_out[i][...])] for i in range(n)]
    acc = [[np.zeros_like(w) for w in th] for th in theta]
    sq = [[0.0, 0.0] for _ in range(n)]
    for t in range(x.shape[1]):
      h = x[b, t]
      branches = []
      for i, (w_in, w_out) in enumerate(theta):
        inp = x[b, t] if variant == "independent" else h
        pre = w_in @ inp
        hidden = gelu(pre)
        branch = w_out @ hidden
        err = branch - values[i] @ inp
        acc[i][1] += lrs[i] * np.outer(err, hidden)
        acc[i][0] += lrs[i] * np.outer(gelu_grad(pre) * (w_out.T @ err), inp)
        sq[i][0] += inp @ inp
        sq[i][1] += hidden @ hidden
        branches.append(branch)
        h = h + branch
      if variant == "independent":
        h = x[b, t] + sum(m * br for m, br in zip(mix, branches, strict=True))
      out[b, t] = h - x[b, t]
      for i in range(n):
        if (t + 1) % chunk_sizes[i] == 0:
          steps = zip(theta[i], acc[i], sq[i], strict=True)
          theta[i] = [w - a / (1.0 + lrs[i] * s) for w, a, s in steps]
          acc[i] = [np.zeros_like(w) for w in theta[i]]
          sq[i] = [0.0, 0.0]
      if variant == "nested":
        for i in reversed(range(n - 1)):
          if (t + 1) % chunk_sizes[i + 1] == 0:
            theta[i] = [w.copy() for w in theta[i + 1]]
            acc[i] = [np.zeros_like(w) for w in theta[i]]
            sq[i] = [0.0, 0.0]
  return out


# ---- self-modifying Titans (nn.SelfModifyingTitans) ----------------------------------------------
SELFMOD_BIASES = {"eta": -2.0, "alpha": 4.0, "momentum": 2.0}  # docs: η ≈ 0.12 max_lr, α ≈ 0.98


def self_modifying_titans(mixer, x, rule: sm.SelfModTitans, *, heads, head_dim):
  """Hope's mixer: u = conv(x W_in) (4 taps, no activation), q = x W_q, per head the
  self-modifying Titans recurrence (``selfmod_recurrent``, the token-serial core), then per-head
  RMSNorm and the output projection. Gate biases and the momentum logit are the documented initial
  values; the gate readout vectors and the initial memories are read from ``mixer``."""
  b, t, _ = x.shape
  inner = heads * head_dim
  taps = mixer.conv.weight.shape[0]
  u, _ = causal_conv(x @ kernel(mixer.x_in), mixer.conv, np.zeros((b, taps - 1, inner)))
  split = lambda y: y.reshape(b, t, heads, head_dim).transpose(0, 2, 1, 3)
  u, q = split(u), split(x @ kernel(mixer.q))
  weights = {n: tuple(f64(p[...]) for p in mixer.initial[n]) for n in sm.MEMORIES}
  full = lambda v: np.full((heads,), v)
  outer = sm.SelfModOuter(
    f64(mixer.eta_w[...]),
    full(SELFMOD_BIASES["eta"]),
    f64(mixer.alpha_w[...]),
    full(SELFMOD_BIASES["alpha"]),
    full(SELFMOD_BIASES["momentum"]),
  )

  def head(w, u, q, outer):
    ys, _ = sm.selfmod_recurrent(rule, rule.init_state(w), u, q, outer)
    return ys

  per_batch = jax.vmap(head, in_axes=(0, 0, 0, 0))  # over heads
  run = jax.jit(jax.vmap(per_batch, in_axes=(None, 0, 0, None)))  # over the batch
  ys = f64(run(*_f32((weights, u, q, outer))))
  y = rms_norm(ys, mixer.out_norm).transpose(0, 2, 1, 3).reshape(b, t, inner)
  return y @ kernel(mixer.o)
