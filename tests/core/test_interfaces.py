"""The declared interfaces of the four MIRAS choices (``core/interfaces.py``): every component of
the library implements its protocol with the capabilities the papers give it, ``Rule`` names what a
component lacks, and a component written outside the library is one class that every form runs.
"""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import miras_jax as mj
from miras_jax.core import algorithms as A
from miras_jax.core import biases as B
from miras_jax.core import interfaces as I
from miras_jax.core import retention as R
from miras_jax.core.exact import exact_form_applies

MEMORIES = [mj.LinearMemory(), mj.MLPMemory(), mj.MLPMemory(residual_ln=True)]
BIASES = [
  B.DotProduct(),
  B.L2(),
  B.Lp(3.0),
  B.L1(),
  B.Huber("coord"),
  B.Huber("norm"),
  B.Huber("mixture"),
  B.RobustL2(),
  B.FromLoss(lambda p, v, d: jnp.sum((p - v) ** 2)),
  B.FromOutputGrad(lambda p, v, d: p - v),
]
RETENTIONS = [
  R.NoRetention(),
  R.Decay("scalar"),
  R.Decay("key_value"),
  R.LqNormalization(),
  R.KLSoftmax(),
  R.ElasticNet(),
  R.ElasticNet(ftrl=True),
  R.BregmanSigmoid(),
]
ALGORITHMS = [A.GD(), A.Momentum(), A.ImplicitGD(), A.DGD(), A.DGD(momentum=True), A.MultiStepGD(3)]


@pytest.mark.parametrize(
  ("components", "protocol"),
  [
    (MEMORIES, I.Memory),
    (BIASES, I.AttentionalBias),
    (RETENTIONS, I.RetentionGate),
    (ALGORITHMS, I.LearningAlgorithm),
  ],
)
def test_every_component_implements_its_protocol(components, protocol):
  for c in components:
    assert I.missing_members(c, protocol) == [], c
    assert isinstance(c, protocol), c


def test_the_capabilities_are_those_of_the_papers():
  # The exact chunkwise form solves the Hebbian (DotProduct) and delta (L2) writes only (MIRAS
  # Table 1: linear attention, DeltaNet); ℓp's signal grows like |e|^{p−1} (Eq 11).
  assert [b.exact_write for b in BIASES[:3]] == ["hebbian", "delta", None]
  assert B.Lp(3.0).error_power == 2.0 and B.L1().error_power == 0.0
  assert [b.channel_delta for b in BIASES[4:7]] == [True, False, True]  # §5.4: coord, mixture
  # Decay and no retention are W_t = D_t ⊙ W_{t−1} + Δ_t; the others are non-linear mirror maps
  # (Eq 21–24, §5.2) with their chunk-boundary treatment (Eq 24 normaliser, Eq 30 lag token).
  assert [r.linear_in_state for r in RETENTIONS] == [True, True, True] + [False] * 5
  assert [r.minibatch for r in RETENTIONS] == [
    "linear",
    "linear",
    "linear",
    "normalised",
    "lag",
    None,
    None,
    None,
  ]
  assert [r.domain for r in RETENTIONS[3:5]] == ["real", "simplex"]
  assert R.BregmanSigmoid().domain == "unit_interval"
  assert R.ElasticNet().optional_gates == ("retention",)
  # GD, implicit GD and multi-step GD have exact forms; GD and momentum a dual mini-batch form;
  # DGD's rank-1 decay only the token-serial chunk semantics.
  assert [a.exact_form for a in ALGORITHMS] == [True, False, True, False, False, True]
  assert [a.minibatch for a in ALGORITHMS] == ["dual", "dual", None, "reference", "reference", None]
  assert [a.channel_lr for a in ALGORITHMS] == [True, True, False, False, False, False]


def test_the_domain_maps():
  raw = jnp.array([[0.0, 1.0, -2.0], [3.0, 0.5, 0.5]])
  kl = R.KLSoftmax(c=2.0).to_domain(raw)
  e = np.exp(np.asarray(raw))
  chex.assert_trees_all_close(kl, 2.0 * e / e.sum(axis=1, keepdims=True), rtol=1e-6)
  chex.assert_trees_all_close(R.BregmanSigmoid().to_domain(raw), 1 / (1 + np.exp(-raw)), rtol=1e-6)
  chex.assert_trees_all_equal(R.Decay().to_domain(raw), raw)


def test_exact_rate_is_the_implicit_step():
  lr, k = jnp.array([0.5, 0.1]), jnp.array([[1.0, 1.0], [2.0, 0.0]])
  chex.assert_trees_all_close(A.ImplicitGD.exact_rate(lr, k), jnp.array([0.5 / 2.0, 0.1 / 1.4]))
  chex.assert_trees_all_equal(A.GD.exact_rate(lr, k), lr)


@dataclasses.dataclass(frozen=True)
class _NoCapabilities:
  name = "bare"

  def apply(self, weights, x, *, linear=None):
    return x


def test_rule_names_the_members_a_component_lacks():
  with pytest.raises(ValueError, match=r"memory must implement .*Memory; _NoCapabilities lacks"):
    mj.Rule("x", _NoCapabilities(), B.L2(), R.NoRetention(), A.GD())
  with pytest.raises(ValueError, match=r"retention must implement .*RetentionGate.*minibatch"):
    mj.Rule("x", mj.LinearMemory(), B.L2(), _NoCapabilities(), A.GD())


@dataclasses.dataclass(frozen=True)
class ScaledL2:
  """A bias written outside the library: ℓ = (c/2)‖M(k) − v‖², ∂ℓ/∂M = c (M(k) − v)."""

  c: float = 3.0
  name = "scaled_l2"
  needs_delta = False
  channel_delta = False
  exact_write = None  # not declared exact: the forms must take the mini-batch path
  error_power = 1.0
  loss = None

  def output_grad(self, pred, v, delta=None):
    return self.c * (pred - v)


def test_a_new_bias_is_one_class_that_every_form_runs():
  rng = np.random.default_rng(0)
  t, d = 12, 3
  q, k, v = (jnp.asarray(rng.normal(size=(t, d)), jnp.float32) for _ in range(3))
  lr = jnp.asarray(rng.uniform(0.05, 0.2, size=t), jnp.float32)
  alpha = jnp.asarray(rng.uniform(0.8, 1.0, size=t), jnp.float32)
  rule = mj.Rule("scaled", mj.LinearMemory(), ScaledL2(), R.Decay("scalar"), A.GD())
  assert not exact_form_applies(rule)
  gates = mj.Gates(lr=lr, retention=alpha)
  state = rule.init_state(jnp.zeros((d, d)))
  ys, _ = mj.recurrent(rule, state, q, k, v, gates)
  w, want = np.zeros((d, d)), []  # numpy: W_t = α_t W_{t−1} − η_t c (W_{t−1} k_t − v_t) k_tᵀ
  for i in range(t):
    kk, vv = np.asarray(k[i], np.float64), np.asarray(v[i], np.float64)
    w = float(alpha[i]) * w - float(lr[i]) * 3.0 * np.outer(w @ kk - vv, kk)
    want.append(w @ np.asarray(q[i], np.float64))
  chex.assert_trees_all_close(ys, np.array(want), rtol=1e-5, atol=1e-6)
  ref, _ = mj.chunk_reference(rule, state, q, k, v, gates, chunk_size=4)
  fast, _ = mj.chunked(rule, state, q, k, v, gates, chunk_size=4)
  chex.assert_trees_all_close(fast, ref, rtol=1e-5, atol=1e-6)
