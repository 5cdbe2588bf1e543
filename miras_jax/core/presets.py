"""Every row of MIRAS Table 1 (plus Titans' LMM and softmax attention) as a composed ``Rule``.

``get(name, **options)`` builds a preset; ``names()`` lists them. Writes follow CONVENTIONS §4
(W: [d_v, d_k], reads after the write). Every preset reads its gates from ``Gates``; a fixed gate
(RetNet's α) is passed by the caller as a constant array.

================== ================================================================ ===============
preset             write                                                            gates
================== ================================================================ ===============
linear_attention   W_t = W_{t−1} + η_t v kᵀ                                          lr? (1)
retnet, lightning  W_t = α W_{t−1} + η_t v kᵀ  (α fixed per head, passed as [T])      retention, lr?
mamba2             W_t = α_t W_{t−1} + η_t v kᵀ                                      retention, lr?
gla                W_t = W_{t−1} diag(α_t) + η_t v kᵀ                                retention[T,d_k], lr?
dfw                W_t = (β_t α_tᵀ) ⊙ W_{t−1} + η_t v kᵀ                             retention[T,d_k], retention_value, lr?
hgrn2              W_t = W_{t−1} diag(α_t) + η_t v (1 − α_t)ᵀ   (k is ignored)        retention[T,d_k], lr?
delta_net          W_t = W_{t−1} − β_t (W_{t−1}k − v) kᵀ                             lr
gated_delta_net    W' = α_t W_{t−1};  W_t = W' − β_t (W'k − v) kᵀ                    lr, retention
rwkv7              W_t = W_{t−1} diag(α_t) − β_t (W_{t−1}k − v) kᵀ                   lr, retention[T,d_k]
delta_product(n)   W' = α_t W_{t−1}; n delta steps with (k_{t,i}, v_{t,i}, β_{t,i})  lr[T,n], retention?
longhorn           W_t = W_{t−1} − β_t/(1 + β_t kᵀk) (W_{t−1}k − v) kᵀ               lr
ttt_linear         W_t = W_{t−1} − η_t ∇ℓ2(W_{t−1})                                   lr
ttt_mlp            same, 2-layer MLP memory                                          lr
titans_lmm         S_t = μ_t S_{t−1} − θ_t ∇ℓ2(W_{t−1}); W_t = α_t W_{t−1} + S_t      lr, momentum, retention
dgd                W_t = W_{t−1}(α_t I − η'_t k kᵀ) − η'_t ∇ℓ2(W_{t−1}), η' = η/(1+η‖k‖²)  lr, retention (+momentum)
moneta             A_t = α_t A_{t−1} − η_t ∇ℓp(W_{t−1}); W_t = A_t/‖A_t‖_q^{q−2}      lr, retention
yaad               W_t = α_t W_{t−1} − η_t ∇ℓ2 if ‖e‖ ≤ δ_t else − η_t δ_t ∇ℓ1        lr, retention, delta
memora             W_t = c softmax_rows(α_t log W_{t−1} − η_t ∇ℓ2(W_{t−1}))          lr, retention
softmax_attention  y_t = Σ_{j ≤ t} softmax_j(q_t·k_j/√d_k) v_j  (optional window)     none
================== ================================================================ ===============

``lr?``: the Hebbian presets have no learning rate in Table 1; ``gates.lr`` is optional for them and
scales the write when given (Mamba2's Δ_t), 1 otherwise.

Options: the MIRAS, Titans and TTT presets take ``memory=`` ("linear", "mlp" for the paper
default, an ``MLPMemory`` or a dict of its fields); lp-based presets take ``smooth=``; ``moneta`` takes
``p``, ``q`` and ``eps`` (a floor of ‖A‖_q in its normaliser, ``LqNormalization``; 0, the
paper's, by default); ``memora`` takes ``c`` and ``eps`` (the floor of W
before its log, ``KLSoftmax``); ``moneta``, ``yaad`` and ``memora`` take ``momentum=True`` (Titans'
momentum over their GD step; not in MIRAS); ``titans_lmm`` takes ``momentum`` and ``forget`` (ablations); ``dgd`` (Nested Learning [ARX] Eq 57/88, not in Table 1) takes
``momentum`` (Titans' surprise momentum over the DGD step); ``delta_product`` takes ``n``; ``softmax_attention`` takes
``window`` and ``scale``; every parametric preset takes ``use_loss=True`` to differentiate the bias's
loss with ``jax.grad`` instead of using its closed-form gradient, and ``grad_clip=c`` to clip each
token's inner gradient to norm c (``Rule.grad_clip``; off by default, as in the papers; a clipped
rule is not linear in its state, so ``chunked`` runs it in the mini-batch form).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from miras_jax.core import algorithms as algos
from miras_jax.core import biases
from miras_jax.core import retention as ret
from miras_jax.core.attention import SoftmaxAttention
from miras_jax.core.interfaces import Memory
from miras_jax.core.memory import LinearMemory, MLPMemory
from miras_jax.core.rule import Rule

_REGISTRY: dict[str, Callable] = {}

# Paper defaults for the deep memories.
TITANS_MLP = MLPMemory(depth=2, expansion=4, activation="silu")  # Titans §3.1 (SiLU), L_M = 2
TTT_MLP = MLPMemory(depth=2, expansion=4, activation="gelu")  # TTT-MLP: 2 layers, 4×, GELU
MIRAS_MLP = MLPMemory(depth=2, expansion=4, activation="gelu", residual_ln=True)  # MIRAS §5.4


def _register(name):
  def deco(fn):
    _REGISTRY[name] = fn
    return fn

  return deco


def names() -> list[str]:
  """Names of every preset, in Table 1 order."""
  return list(_REGISTRY)


def get(name: str, **options):
  """Builds the preset ``name`` with ``options`` (see the module docstring)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(_REGISTRY)}")
  grad_clip = options.pop("grad_clip", None)
  try:
    rule = _REGISTRY[name](**options)
  except TypeError as e:
    raise ValueError(f"preset {name!r} got invalid options {sorted(options)}: {e}") from None
  if grad_clip is not None:
    if not isinstance(rule, Rule):
      raise ValueError(f"preset {name!r} has no inner gradient: grad_clip does not apply")
    rule = dataclasses.replace(rule, grad_clip=float(grad_clip))
  return rule


def resolve_memory(memory, default):
  """``"linear"`` | ``"mlp"`` (the preset's default) | ``MLPMemory`` | dict of MLPMemory fields."""
  if memory is None or memory == "mlp":
    return default
  if memory == "linear":
    return LinearMemory()
  if isinstance(memory, Memory):  # LinearMemory, MLPMemory or one of your own
    return memory
  if isinstance(memory, dict):
    return MLPMemory(**memory)
  raise ValueError(f"memory must be 'linear', 'mlp', an MLPMemory or a dict; got {memory!r}")


def _linear(name, bias, retention, algorithm, **kw):
  return Rule(name, LinearMemory(), bias, retention, algorithm, **kw)


# ---- Hebbian (dot-product bias) ---------------------------------------------------------------
@_register("linear_attention")
def linear_attention(use_loss=False):
  return _linear(
    "linear_attention",
    biases.DotProduct(),
    ret.NoRetention(),
    algos.GD(),
    lr_default=1.0,
    use_loss=use_loss,
  )


def _hebbian_decay(name, channels, use_loss, **kw):
  return _linear(
    name,
    biases.DotProduct(),
    ret.Decay(channels),
    algos.GD(),
    lr_default=1.0,
    use_loss=use_loss,
    **kw,
  )


@_register("retnet")
def retnet(use_loss=False):
  return _hebbian_decay("retnet", "scalar", use_loss)


@_register("lightning")
def lightning(use_loss=False):
  return _hebbian_decay("lightning", "scalar", use_loss)


@_register("mamba2")
def mamba2(use_loss=False):
  return _hebbian_decay("mamba2", "scalar", use_loss)


@_register("gla")
def gla(use_loss=False):
  return _hebbian_decay("gla", "key", use_loss)


@_register("dfw")
def dfw(use_loss=False):
  return _hebbian_decay("dfw", "key_value", use_loss)


@_register("hgrn2")
def hgrn2(use_loss=False):
  return _hebbian_decay("hgrn2", "key", use_loss, key_from_retention=True)


# ---- delta rule (l2 bias) ---------------------------------------------------------------------
@_register("delta_net")
def delta_net(use_loss=False):
  return _linear("delta_net", biases.L2(), ret.NoRetention(), algos.GD(), use_loss=use_loss)


@_register("gated_delta_net")
def gated_delta_net(use_loss=False):
  return _linear(
    "gated_delta_net",
    biases.L2(),
    ret.Decay("scalar"),
    algos.GD(),
    grad_at="decayed",
    use_loss=use_loss,
  )


@_register("rwkv7")
def rwkv7(use_loss=False):
  return _linear("rwkv7", biases.L2(), ret.Decay("key"), algos.GD(), use_loss=use_loss)


@_register("delta_product")
def delta_product(n=2, use_loss=False):
  return _linear(
    "delta_product",
    biases.L2(),
    ret.Decay("scalar"),
    algos.MultiStepGD(n),
    grad_at="decayed",
    use_loss=use_loss,
  )


@_register("longhorn")
def longhorn(use_loss=False):
  return _linear("longhorn", biases.L2(), ret.NoRetention(), algos.ImplicitGD(), use_loss=use_loss)


# ---- test-time training and Titans -------------------------------------------------------------
@_register("ttt_linear")
def ttt_linear(memory="linear", use_loss=False):
  mem = resolve_memory(memory, LinearMemory())
  # TTT trains with mini-batch GD (its chunk semantics), although with a linear memory this rule
  # is the delta rule and would admit the exact form. A chunk of b tokens is one GD step with the
  # summed rate: stable while λ_max(Σ_i η_i k_i k_iᵀ) ≤ 2 (minibatch module docstring, measured).
  return Rule(
    "ttt_linear",
    mem,
    biases.L2(),
    ret.NoRetention(),
    algos.GD(),
    use_loss=use_loss,
    chunk_form="minibatch",
  )


@_register("ttt_mlp")
def ttt_mlp(memory=None, use_loss=False):
  mem = resolve_memory(memory, TTT_MLP)
  return Rule("ttt_mlp", mem, biases.L2(), ret.NoRetention(), algos.GD(), use_loss=use_loss)


@_register("titans_lmm")
def titans_lmm(memory=None, momentum=True, forget=True, use_loss=False):
  """``momentum=False``: S_t = −θ_t ∇ (plain GD); ``forget=False``: α_t = 1 (no retention gate)
  (the ablations of Titans Table 5)."""
  mem = resolve_memory(memory, TITANS_MLP)
  retention = ret.Decay("any") if forget else ret.NoRetention()
  algorithm = algos.Momentum() if momentum else algos.GD()
  return Rule("titans_lmm", mem, biases.L2(), retention, algorithm, use_loss=use_loss)


@_register("dgd")
def dgd(memory="linear", momentum=False, use_loss=False):
  """Delta Gradient Descent with weight decay (Nested Learning [ARX] Eq 88; Eq 93 when linear)."""
  mem = resolve_memory(memory, TITANS_MLP)
  return Rule("dgd", mem, biases.L2(), ret.Decay("any"), algos.DGD(momentum), use_loss=use_loss)


# ---- MIRAS ------------------------------------------------------------------------------------
def _algorithm(momentum: bool):
  """The MIRAS variants' learner: plain GD (MIRAS Eq 24–27), or Titans' momentum over the step
  (S_t = μ_t S_{t−1} − η_t ∇_t, Eq 10) with ``momentum=True``."""
  return algos.Momentum() if momentum else algos.GD()


@_register("moneta")
def moneta(memory=None, p=3.0, q=4.0, eps=0.0, smooth=False, momentum=False, use_loss=False):
  mem = resolve_memory(memory, MIRAS_MLP)
  return Rule(
    "moneta",
    mem,
    biases.Lp(p=p, smooth=smooth),
    ret.LqNormalization(q=q, eps=eps),
    _algorithm(momentum),
    use_loss=use_loss,
  )


@_register("yaad")
def yaad(memory=None, momentum=False, use_loss=False):
  mem = resolve_memory(memory, MIRAS_MLP)
  bias, retention = biases.Huber("mixture"), ret.Decay("any")
  return Rule("yaad", mem, bias, retention, _algorithm(momentum), use_loss=use_loss)


@_register("memora")
def memora(memory=None, c=1.0, eps=1e-30, momentum=False, use_loss=False):
  mem = resolve_memory(memory, MIRAS_MLP)
  retention = ret.KLSoftmax(c=c, eps=eps)
  return Rule("memora", mem, biases.L2(), retention, _algorithm(momentum), use_loss=use_loss)


# ---- non-parametric ---------------------------------------------------------------------------
@_register("softmax_attention")
def softmax_attention(window=None, scale=None):
  return SoftmaxAttention(window=window, scale=scale)
