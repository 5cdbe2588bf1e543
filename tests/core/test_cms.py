"""Continuum Memory System (Nested Learning notes §5; test criteria §8.6).

The reference is an independent float64 numpy token loop written from the docstring of
``miras_jax.core.cms`` (no library code is called): level ℓ is ``f_ℓ(h) = h + W_out gelu(W_in h)``
(exact erf GELU), its inner loss is ℓ(θ; h) = ½‖W_out gelu(W_in h) − V_ℓ h‖² with a hand-written
gradient, the rate-scaled gradients of a chunk are summed at the chunk-start parameters and applied
after tokens t with (t + 1) ≡ 0 (mod C_ℓ). ``cms_chunked`` (float32, chunked) must match it to 1e-5
relative, for the three variants and chunk sizes (2, 4, 8) over T = 22 (not a multiple of any).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from miras_jax.core.cms import CMS, CMSOuter, CMSState, cms_chunked, cms_recurrent

D = 4
T = 22
CHUNKS = (2, 4, 8)  # the smallest > 1, so the block scan (not just the token loop) is exercised
LRS = (0.03, 0.02, 0.01)
RTOL = 1e-5
VARIANTS = ("sequential", "nested", "independent")

_apply = jax.jit(cms_chunked, static_argnums=0, static_argnames="aligned")


@functools.partial(jax.jit, static_argnums=0)
def _forms(cms, state, x, outer):
  """One program (one compile): ``cms_chunked`` on all tokens, two calls split at the unaligned
  position 5, and the token loop ``cms_recurrent``."""
  y, st = cms_chunked(cms, state, x, outer)
  y1, st1 = cms_chunked(cms, state, x[:5], outer)
  y2, st2 = cms_chunked(cms, st1, x[5:], outer)
  return (y, st), (jnp.concatenate([y1, y2]), st2), cms_recurrent(cms, state, x, outer)


# ---- numpy reference ----------------------------------------------------------------------------
def _gelu(x):
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def _gelu_grad(x):  # Φ(x) + x φ(x)
  return 0.5 * (1.0 + special.erf(x / np.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / np.sqrt(
    2.0 * np.pi
  )


def _branch(theta, h):
  w_in, w_out = theta
  return w_out @ _gelu(w_in @ h)


def _inner_grad(theta, h, value):
  """(∇_{W_in}, ∇_{W_out}) of ½‖W_out gelu(W_in h) − value‖², by hand."""
  w_in, w_out = theta
  a = w_in @ h
  r = w_out @ _gelu(a) - value
  return np.outer((w_out.T @ r) * _gelu_grad(a), h), np.outer(r, _gelu(a))


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_cms(chunks, lrs, variant, params, values, mix, x, normalized=True):
  """Token-serial CMS in float64 from position 0 → (ys, params, accum, position).

  ``normalized``: at a boundary each matrix moves by accum / (1 + η Σ‖x‖²) over the chunk, x the
  matrix's input (h for W_in, gelu(W_in h) for W_out); else by accum (Eq 71 literally)."""
  params = [list(p) for p in _f64(params)]
  values, x = _f64(values), np.asarray(x, np.float64)
  mix = None if mix is None else np.asarray(mix, np.float64)
  k = len(chunks)
  accum = [[np.zeros_like(w) for w in p] for p in params]
  sq = [[0.0, 0.0] for _ in params]
  ys, pos = [], 0
  for xt in x:
    h, branches = xt, []
    for lvl in range(k):
      inp = xt if variant == "independent" else h
      b = _branch(params[lvl], inp)
      g = _inner_grad(params[lvl], inp, values[lvl] @ inp)
      accum[lvl] = [a + lrs[lvl] * gi for a, gi in zip(accum[lvl], g, strict=True)]
      hid = _gelu(params[lvl][0] @ inp)
      sq[lvl] = [sq[lvl][0] + inp @ inp, sq[lvl][1] + hid @ hid]
      branches.append(b)
      h = h + b
    ys.append(xt + sum(m * b for m, b in zip(mix, branches, strict=True)) if mix is not None else h)
    pos += 1
    hits = [pos % c == 0 for c in chunks]
    for lvl in range(k):
      if hits[lvl]:
        div = [1.0 + lrs[lvl] * q if normalized else 1.0 for q in sq[lvl]]
        params[lvl] = [w - a / c for w, a, c in zip(params[lvl], accum[lvl], div, strict=True)]
        accum[lvl] = [np.zeros_like(a) for a in accum[lvl]]
        sq[lvl] = [0.0, 0.0]
    if variant == "nested":  # slowest first, so a boundary of level ℓ+2 propagates down the chain
      for lvl in reversed(range(k - 1)):
        if hits[lvl + 1]:
          params[lvl] = [w.copy() for w in params[lvl + 1]]
          accum[lvl] = [np.zeros_like(a) for a in accum[lvl]]
          sq[lvl] = [0.0, 0.0]
  return np.stack(ys), params, accum, pos


# ---- inputs -------------------------------------------------------------------------------------
def _widths(variant, k):
  return (8,) * k if variant == "nested" else (8, 6, 8, 5)[:k]


def _inputs(variant, k=3, t=T, seed=0):
  """Initial level parameters θ_ℓ,0, the outer values V_ℓ and mix, and x (float32)."""
  rng = np.random.default_rng(seed)
  params = tuple(
    (
      rng.normal(size=(m, D)) / np.sqrt(D),
      0.5 * rng.normal(size=(D, m)) / np.sqrt(m),
    )
    for m in _widths(variant, k)
  )
  values = tuple(rng.normal(size=(D, D)) / np.sqrt(D) for _ in range(k))
  mix = rng.uniform(0.5, 1.5, size=k) if variant == "independent" else None
  x = rng.normal(size=(t, D))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return (
    jax.tree.map(f32, params),
    CMSOuter(jax.tree.map(f32, values), jax.tree.map(f32, mix)),
    f32(x),
  )


def _close(got, want, rtol=RTOL):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol)


def _assert_state_close(state, params, accum, pos, rtol=RTOL):
  for lvl, (p, a) in enumerate(zip(params, accum, strict=True)):
    for name, got, want in (
      ("W_in", state.params[lvl][0], p[0]),
      ("W_out", state.params[lvl][1], p[1]),
    ):
      np.testing.assert_allclose(
        np.asarray(got), want, rtol=rtol, atol=rtol, err_msg=f"level {lvl} {name}"
      )
    for got, want in zip(state.accum[lvl], a, strict=True):
      np.testing.assert_allclose(
        np.asarray(got), want, rtol=rtol, atol=rtol, err_msg=f"level {lvl} accum"
      )
  assert int(state.position) == pos


@functools.cache
def _run(variant):
  """Library (one call, two calls 5 + 17, token reference) and numpy results for one variant."""
  cms = CMS(CHUNKS, LRS, variant)
  params, outer, x = _inputs(variant)
  state = cms.init_state(params)
  (y, st), (y_pieces, st_pieces), (y_ref, st_ref) = _forms(cms, state, x, outer)
  want = np_cms(CHUNKS, LRS, variant, params, outer.values, outer.mix, x)
  return dict(
    cms=cms, params=params, outer=outer, x=x, y=y, state=st, y_pieces=y_pieces,
    state_pieces=st_pieces, y_ref=y_ref, state_ref=st_ref, want=want,
  )  # fmt: skip


# ---- 1. the chunked form against the numpy token loop ---------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_cms_chunked_matches_the_numpy_token_loop(variant):
  """Outputs and the final state (parameters, open-chunk accumulators, position) of ``cms_chunked``
  equal the float64 token loop; the in-context updates must matter (else the test is vacuous)."""
  r = _run(variant)
  ys, params, accum, pos = r["want"]
  _close(r["y"], ys)
  _assert_state_close(r["state"], params, accum, pos)
  frozen = np_cms(
    CHUNKS, (0.0,) * 3, variant, r["params"], r["outer"].values, r["outer"].mix, r["x"]
  )
  assert np.max(np.abs(ys - frozen[0])) > 1e-2, "the inner updates do not change the outputs"


def test_plain_eq_71_step_matches_the_numpy_token_loop():
  """``normalized=False`` is Eq 71 literally: θ ← θ − η Σ ∇ at each boundary."""
  cms = CMS(CHUNKS, LRS, "sequential", normalized=False)
  params, outer, x = _inputs("sequential")
  y, state = cms_chunked(cms, cms.init_state(params), x, outer)
  ys, want_params, accum, pos = np_cms(
    CHUNKS, LRS, "sequential", params, outer.values, None, x, normalized=False
  )
  _close(y, ys)
  _assert_state_close(state, want_params, accum, pos)
  normalised = np_cms(CHUNKS, LRS, "sequential", params, outer.values, None, x)
  assert np.max(np.abs(ys - normalised[0])) > 1e-4  # the two steps differ on these inputs


@pytest.mark.parametrize("variant", VARIANTS)
def test_calls_in_pieces_equal_one_call(variant):
  """5 then 17 tokens (the second call starts mid-block at position 5) equal one call of 22."""
  r = _run(variant)
  chex.assert_trees_all_close(r["y_pieces"], r["y"], rtol=RTOL, atol=RTOL)
  chex.assert_trees_all_close(r["state_pieces"], r["state"], rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cms_recurrent_equals_cms_chunked(variant):
  r = _run(variant)
  chex.assert_trees_all_close(r["y_ref"], r["y"], rtol=RTOL, atol=RTOL)
  chex.assert_trees_all_close(r["state_ref"], r["state"], rtol=RTOL, atol=RTOL)


# ---- 2. cadence (§8.6) ---------------------------------------------------------------------------
def _token_by_token(cms, state, x, outer):
  """One jitted call per token → (ys [T, d], states before each token + the final one)."""
  states, ys = [jax.tree.map(np.asarray, state)], []
  for t in range(x.shape[0]):
    y, state = _apply(cms, state, x[t : t + 1], outer)
    ys.append(np.asarray(y[0]))
    states.append(jax.tree.map(np.asarray, state))
  return np.stack(ys), states


def _level_input(params, lvl, xt):
  """Input of level ``lvl`` of the sequential chain at parameters ``params`` (float64)."""
  h = np.asarray(xt, np.float64)
  for theta in params[:lvl]:
    h = h + _branch(_f64(theta), h)
  return h


@functools.cache
def _cadence_run():
  chunks, lrs, t = (1, 4, 16), (0.1, 0.05, 0.02), 64
  cms = CMS(chunks, lrs)
  params, outer, x = _inputs("sequential", t=t, seed=1)
  ys, states = _token_by_token(cms, cms.init_state(params), x, outer)
  return chunks, lrs, params, outer, x, ys, states


def test_cadence_levels_change_exactly_at_their_boundaries():
  """C = (1, 4, 16) over 64 tokens, one call per token: level ℓ's parameters change after token t
  iff (t + 1) ≡ 0 (mod C_ℓ); the token-by-token calls also equal the numpy loop."""
  chunks, lrs, params, outer, x, ys, states = _cadence_run()
  for lvl, c in enumerate(chunks):
    changed = [
      t
      for t in range(len(x))
      if any(
        not np.array_equal(a, b)
        for a, b in zip(states[t].params[lvl], states[t + 1].params[lvl], strict=True)
      )
    ]
    assert changed == [t for t in range(len(x)) if (t + 1) % c == 0], f"level {lvl} (C={c})"
  want = np_cms(chunks, lrs, "sequential", params, outer.values, None, x)
  _close(ys, want[0], rtol=1e-4)
  _assert_state_close(states[-1], want[1], want[2], want[3], rtol=1e-4)


def test_cadence_update_is_the_sum_of_gradients_at_the_chunk_start_parameters():
  """Within each chunk of level ℓ the accumulator after token t is η_ℓ Σ_{s ≤ t} ∇ℓ(θ_start; h_s)
  (h_s: the level's input at token s, from the faster levels' parameters at that token), and the
  update at the boundary is θ_end − θ_start = −η_ℓ Σ_{chunk} ∇ℓ(θ_start; h_s) / (1 + η_ℓ Σ ‖x_s‖²),
  x_s the matrix's input (the normalised step)."""
  chunks, lrs, _, outer, x, _, states = _cadence_run()
  values = _f64(outer.values)
  for lvl, c in enumerate(chunks):
    for start in range(0, len(x), c):
      theta0 = _f64(states[start].params[lvl])
      total = [np.zeros_like(w) for w in theta0]
      sq = [0.0, 0.0]
      for s in range(start, start + c):
        h = _level_input(states[s].params, lvl, x[s])
        g = _inner_grad(theta0, h, values[lvl] @ h)
        total = [a + lrs[lvl] * gi for a, gi in zip(total, g, strict=True)]
        hid = _gelu(theta0[0] @ h)
        sq = [sq[0] + h @ h, sq[1] + hid @ hid]
        if s < start + c - 1:  # open chunk: parameters frozen, gradients accumulate
          chex.assert_trees_all_equal(states[s + 1].params[lvl], states[start].params[lvl])
          for got, want in zip(states[s + 1].accum[lvl], total, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
      for got, w0, a, q in zip(states[start + c].params[lvl], theta0, total, sq, strict=True):
        step = -a / (1.0 + lrs[lvl] * q)
        np.testing.assert_allclose(got - w0, step, rtol=1e-4, atol=1e-5, err_msg=f"level {lvl}")
        assert np.max(np.abs(a)) > 1e-4  # a real update
      for a in states[start + c].accum[lvl]:
        np.testing.assert_array_equal(a, 0.0)


# ---- 3. η = 0: a plain MLP; ad-hoc level stacking --------------------------------------------------
def test_single_level_with_zero_rate_is_a_residual_gelu_mlp():
  """§8.6: k = 1 with η = 0 is the plain residual MLP h + W_out gelu(W_in h) (numpy, exact erf)."""
  cms = CMS((3,), (0.0,))
  rng = np.random.default_rng(2)
  w_in, w_out = rng.normal(size=(8, D)), rng.normal(size=(D, 8)) / np.sqrt(8)
  x = rng.normal(size=(T, D))
  params = ((jnp.asarray(w_in, jnp.float32), jnp.asarray(w_out, jnp.float32)),)
  outer = CMSOuter((jnp.asarray(rng.normal(size=(D, D)), jnp.float32),))
  y, state = _apply(cms, cms.init_state(params), jnp.asarray(x, jnp.float32), outer)
  want = x + _gelu(x @ w_in.T) @ w_out.T
  _close(y, want)
  chex.assert_trees_all_equal(state.params, params)


def test_all_zero_rates_reproduce_the_pretrained_chain():
  """§7.3 ad-hoc level stacking: with every η = 0 the outputs are the pretrained chain's (numpy)
  and no parameter moves (bit-exact)."""
  cms = CMS(CHUNKS, (0.0,) * 3)
  params, outer, x = _inputs("sequential", seed=3)
  y, state = _apply(cms, cms.init_state(params), x, outer)
  want = np.asarray(x, np.float64)
  for w_in, w_out in _f64(params):
    want = want + _gelu(want @ w_in.T) @ w_out.T
  _close(y, want)
  chex.assert_trees_all_equal(state.params, params)


# ---- 4. nested: faster levels restart from the slower level -----------------------------------------
def test_nested_faster_level_restarts_from_the_slower_one():
  """After every boundary of level ℓ+1, level ℓ's parameters equal level ℓ+1's (just updated) ones
  and its accumulator is empty; after a boundary of ℓ alone they differ."""
  cms = CMS(CHUNKS, LRS, "nested")
  params, outer, x = _inputs("nested", seed=4)
  _, states = _token_by_token(cms, cms.init_state(params), x, outer)
  checked = 0
  for t in range(T):
    after, before = states[t + 1], states[t]
    for lvl in range(len(CHUNKS) - 1):
      if (t + 1) % CHUNKS[lvl + 1] == 0:
        chex.assert_trees_all_equal(after.params[lvl], after.params[lvl + 1])
        chex.assert_trees_all_equal(after.accum[lvl], jax.tree.map(np.zeros_like, after.accum[lvl]))
        assert not np.array_equal(after.params[lvl + 1][0], before.params[lvl + 1][0])
        checked += 1
      elif (t + 1) % CHUNKS[lvl] == 0:
        assert not np.allclose(after.params[lvl][0], after.params[lvl + 1][0], atol=1e-4)
  assert checked == 5 + 2  # level 0 after t+1 ∈ {4, 8, 12, 16, 20}; level 1 after {8, 16}


# ---- 5. causality, jit, outer gradients ---------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_causal(variant):
  """Perturbing x_{t'} for t' > t leaves y_{≤t} unchanged (t mid-block and at block ends), in the
  chunked form, the calls in pieces and the token loop alike; y_{t+1} does change."""
  r = _run(variant)
  forms = ("y", "y_pieces", "y_ref")
  rng = np.random.default_rng(5)
  for t in (4, 9, 10, 16):
    x2 = r["x"].at[t + 1 :].add(jnp.asarray(rng.normal(size=(T - t - 1, D)), jnp.float32))
    out = _forms(r["cms"], r["cms"].init_state(r["params"]), x2, r["outer"])
    for name, (y2, _) in zip(forms, out, strict=True):
      np.testing.assert_array_equal(np.asarray(y2[: t + 1]), np.asarray(r[name][: t + 1]), name)
      assert not np.allclose(np.asarray(y2[t + 1]), np.asarray(r[name][t + 1])), name


def test_jit_equals_eager():
  """The un-jitted call (op by op around the block scan) equals the jitted one (nested variant)."""
  r = _run("nested")
  y, state = cms_chunked(r["cms"], r["cms"].init_state(r["params"]), r["x"], r["outer"])
  chex.assert_trees_all_close(y, r["y"], rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(state, r["state"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_outer_gradients_are_finite_nonzero_and_match_finite_differences(variant):
  """jax.grad of ⟨y, r⟩ w.r.t. the initial θ_ℓ,0, V_ℓ (they enter no read, only the writes) and mix
  is finite and nonzero, and its directional derivatives (all arguments; V alone) equal central
  differences of the numpy loop: the second-order path through the writes is exact. (The nested
  variant adds only the copy at boundaries; its forward values are checked above.)"""
  r = _run(variant)
  cms, x = r["cms"], r["x"]
  cot = np.random.default_rng(6).normal(size=(T, D))

  def loss(params, values, mix):
    y, _ = cms_chunked(cms, cms.init_state(params), x, CMSOuter(values, mix))
    return jnp.sum(y * jnp.asarray(cot, jnp.float32))

  args = (r["params"], r["outer"].values, r["outer"].mix)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == len(jax.tree.leaves(args))
  for g in leaves:
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 1e-6

  def np_loss(params, values, mix):
    return np.sum(np_cms(CHUNKS, LRS, variant, params, values, mix, x)[0] * cot)

  rng = np.random.default_rng(7)
  base = _f64(args)
  direction = jax.tree.map(lambda a: rng.normal(size=a.shape), base)
  eps = 1e-5
  plus = np_loss(*jax.tree.map(lambda a, d: a + eps * d, base, direction))
  minus = np_loss(*jax.tree.map(lambda a, d: a - eps * d, base, direction))
  fd = (plus - minus) / (2 * eps)
  ad = sum(
    np.sum(np.asarray(g, np.float64) * d)
    for g, d in zip(leaves, jax.tree.leaves(direction), strict=True)
  )
  np.testing.assert_allclose(ad, fd, rtol=1e-3)
  # the path through the writes alone (V enters no read): its own directional derivative
  dv = jax.tree.leaves(direction[1])
  ad_v = sum(
    np.sum(np.asarray(g, np.float64) * d)
    for g, d in zip(jax.tree.leaves(grads[1]), dv, strict=True)
  )
  vplus = [v + eps * d for v, d in zip(base[1], dv, strict=True)]
  vminus = [v - eps * d for v, d in zip(base[1], dv, strict=True)]
  fd_v = (np_loss(base[0], vplus, base[2]) - np_loss(base[0], vminus, base[2])) / (2 * eps)
  np.testing.assert_allclose(ad_v, fd_v, rtol=1e-3)


# ---- 6. bad input ----------------------------------------------------------------------------------
def test_bad_configuration_raises():
  with pytest.raises(ValueError, match="chunk_sizes"):
    CMS((), ())
  with pytest.raises(ValueError, match="chunk_sizes"):
    CMS((2, 0), (0.1, 0.1))
  with pytest.raises(ValueError, match="chunk size"):  # says "chunk size", not "chunk_sizes"
    CMS((2, 3), (0.1, 0.1))
  with pytest.raises(ValueError, match="lrs"):
    CMS((2, 4), (0.1,))
  with pytest.raises(ValueError, match="lrs"):
    CMS((2, 4), (0.1, -0.1))
  with pytest.raises(ValueError, match="variant"):
    CMS((2, 4), (0.1, 0.1), "parallel")
  with pytest.raises(ValueError, match="activation"):
    CMS((2, 4), (0.1, 0.1), activation="swish")
  with pytest.raises(ValueError, match="nested"):
    CMS((2, 6, 4), (0.1,) * 3, "nested")  # multiples of 2, but 6 does not divide 4
  CMS((2, 6, 4), (0.1,) * 3, "sequential")  # fine when not nested


def test_bad_inputs_raise():
  params, outer, x = _inputs("sequential", k=2)
  cms = CMS((2, 4), (0.1, 0.1))
  with pytest.raises(ValueError, match="^params must"):
    cms.init_state(params[:1])
  with pytest.raises(ValueError, match=r"params\[1\]"):
    cms.init_state((params[0], (params[1][0], params[1][1][:, :3])))
  with pytest.raises(ValueError, match="width"):
    CMS((2, 4), (0.1, 0.1), "nested").init_state(params)  # widths 8 and 6
  state = cms.init_state(params)
  for bad in (x[:, :3], x[0], np.zeros((T, D)).tolist()):
    with pytest.raises(ValueError, match="^x must"):
      cms_chunked(cms, state, bad, outer)
    with pytest.raises(ValueError, match="^x must"):
      cms_recurrent(cms, state, bad, outer)
  with pytest.raises(ValueError, match="^state must"):
    cms_chunked(cms, tuple(state), x, outer)
  with pytest.raises(ValueError, match=r"outer\.values"):
    cms_chunked(cms, state, x, CMSOuter(outer.values[:1]))
  with pytest.raises(ValueError, match=r"outer\.values"):
    cms_chunked(cms, state, x, CMSOuter((outer.values[0], outer.values[1][:3])))
  independent = CMS((2, 4), (0.1, 0.1), "independent")
  st = independent.init_state(params)
  with pytest.raises(ValueError, match=r"outer\.mix"):
    cms_chunked(independent, st, x, outer)
  with pytest.raises(ValueError, match=r"outer\.mix"):
    cms_chunked(independent, st, x, CMSOuter(outer.values, jnp.ones(3)))
  assert isinstance(st, CMSState)
