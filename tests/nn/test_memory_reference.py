"""NeuralMemory against its data flow written out (``tests/nn/reference.py``): projections, short
causal conv, SiLU, ℓ2-normalised q and k, the gates with their documented activations, initial
biases and ``max_lr``, the memory rule from the learned initial memory at the constructor's chunk
size, per-head RMSNorm, output gate and projection; numpy, with the memory rule from the core's
token-serial references."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax.nn.memory import NeuralMemory
from tests.nn import reference as ref

B, T, E, H, D = 2, 12, 16, 2, 8
CHUNK = 4  # < T: the mini-batch forms take gradients at the state of the previous chunk boundary
TOL = 1e-4
# Memora's softmax-initialised memory has nearly equal rows, so the LayerNorm of its residual MLP
# divides a tiny spread by its own std and amplifies float32 round-off (the dual and token-serial
# forms differ by ~1e-4 in float32 and by ~1e-12 in float64 on the same inputs).
CASE_TOL = {"memora": 5e-4}

# (preset, options, max_lr passed to the constructor, the documented max_lr the reference uses)
CASES = {
  "titans_lmm": ("titans_lmm", {}, None, 0.1),  # MLP memory: max_lr defaults to 0.1
  "titans_lmm_fast": ("titans_lmm", {}, 2.0, 2.0),  # large steps: the chunk grid matters
  "memora": ("memora", {}, 1.0, 1.0),
  "yaad": ("yaad", {}, 1.0, 1.0),
  "moneta": ("moneta", {}, None, 0.01),  # ℓ3 bias on an MLP memory: max_lr defaults to 0.01
  "memora_default": ("memora", {}, None, 0.01),  # KL retention on an MLP: max_lr defaults to 0.01
  "gated_delta_net": ("gated_delta_net", {}, None, 1.0),  # linear memory: max_lr defaults to 1
}


def _x(seed=0):
  return np.random.default_rng(seed).normal(size=(B, T, E))


@pytest.mark.parametrize("case", list(CASES))
def test_neural_memory_matches_the_documented_data_flow(case):
  preset, options, max_lr, documented_max_lr = CASES[case]
  layer = NeuralMemory(
    E,
    H,
    D,
    preset=preset,
    preset_options=dict(options),
    chunk_size=CHUNK,
    conv_kernel=4,
    gate_rank=4,
    max_lr=max_lr,
    rngs=nnx.Rngs(1),
  )
  ref.randomize_norm_scales(layer)
  x = _x()
  got, _ = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
  memory = ref.MemoryReference(
    layer,
    preset=preset,
    preset_options=dict(options),
    chunk_size=CHUNK,
    max_lr=documented_max_lr,
    heads=H,
    head_dim=D,
  )
  want, _ = memory(x, memory.init_state(B))
  tol = CASE_TOL.get(case, TOL)
  chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def test_the_default_inner_gradient_clip_of_l2_mlp_memories():
  """Titans LMM on inputs large enough that per-token inner gradients exceed the documented clip
  of 10: the block equals the reference with the clip, differs from it without the clip, and
  ``grad_clip=None`` in preset_options gives the papers' unclipped form."""
  x = 30.0 * _x(1)

  def layer(options):
    m = NeuralMemory(E, H, D, preset="titans_lmm", preset_options=options, chunk_size=CHUNK,
                     conv_kernel=4, gate_rank=4, max_lr=0.5, rngs=nnx.Rngs(1))  # fmt: skip
    return m, np.asarray(nnx.jit(lambda m, x: m(x))(m, jnp.asarray(x, jnp.float32))[0], np.float64)

  def reference(m, options):
    r = ref.MemoryReference(m, preset="titans_lmm", preset_options=options, chunk_size=CHUNK,
                            max_lr=0.5, heads=H, head_dim=D)  # fmt: skip
    return r(x, r.init_state(B))[0]

  default, got = layer({})
  clipped = reference(default, {})
  unclipped = reference(default, {"grad_clip": None})
  assert np.abs(clipped - unclipped).max() > 100 * TOL  # the clip is active on these inputs
  chex.assert_trees_all_close(got, clipped, rtol=TOL, atol=TOL)
  paper, got = layer({"grad_clip": None})
  chex.assert_trees_all_close(got, reference(paper, {"grad_clip": None}), rtol=TOL, atol=TOL)


def test_monetas_lq_floor_is_a_block_default():
  """Moneta's block floors ‖A‖_q at 0.01 (docs/models.md), eps=0 in preset_options is MIRAS Eq 24;
  on a memory started small (‖A‖_4 below the floor) the two differ and each equals its reference."""
  x = _x(3)

  def run(options):
    m = NeuralMemory(E, H, D, preset="moneta", preset_options=options, chunk_size=CHUNK,
                     conv_kernel=4, gate_rank=4, init_scale=0.001, rngs=nnx.Rngs(5))  # fmt: skip
    r = ref.MemoryReference(m, preset="moneta", preset_options=options, chunk_size=CHUNK,
                            max_lr=0.01, heads=H, head_dim=D)  # fmt: skip
    got = np.asarray(nnx.jit(lambda m, x: m(x))(m, jnp.asarray(x, jnp.float32))[0], np.float64)
    return m, got, r(x, r.init_state(B))[0]

  block, floored, want = run({})
  assert block.rule.retention.eps == 0.01
  chex.assert_trees_all_close(floored, want, rtol=TOL, atol=TOL)
  paper, exact, want = run({"eps": 0.0})
  assert paper.rule.retention.eps == 0.0
  chex.assert_trees_all_close(exact, want, rtol=TOL, atol=TOL)
  assert np.abs(floored - exact).max() > 100 * TOL  # the floor is active on this memory


def test_channel_gates_follow_the_documented_data_flow():
  """Yaad with channel-wise η and δ (MIRAS §5.4): head_dim gate values per head and token, from
  the same low-rank projections (rank 4 here) with the documented biases."""
  layer = NeuralMemory(
    E, H, D, preset="yaad", chunk_size=CHUNK, conv_kernel=4, gate_rank=4, max_lr=1.0,
    channel_gates=("lr", "delta"), rngs=nnx.Rngs(2),
  )  # fmt: skip
  assert layer.gates["lr"].up.kernel.shape[-1] == H * D
  ref.randomize_norm_scales(layer)
  x = _x(1)
  got, _ = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
  memory = ref.MemoryReference(
    layer, preset="yaad", preset_options={}, chunk_size=CHUNK, max_lr=1.0, heads=H, head_dim=D
  )
  want, _ = memory(x, memory.init_state(B))
  chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=TOL, atol=TOL)


def test_gate_init_sets_the_gates_at_initialisation():
  """``gate_init``: η = max_lr·σ(x D U + logit 0.7) and α = σ(x D U + logit 0.995) (defaults: biases
  −2 and 4); a gate that is not a sigmoid gate, or a value out of (0, 1), is refused by name."""
  init = {"lr": 0.7, "retention": 0.995}
  layer = NeuralMemory(
    E, H, D, preset="memora", chunk_size=CHUNK, conv_kernel=4, gate_rank=4, gate_init=init,
    rngs=nnx.Rngs(4),
  )  # fmt: skip
  ref.randomize_norm_scales(layer)
  x = _x(2)
  got, _ = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x, jnp.float32))
  kw = dict(preset="memora", preset_options={}, chunk_size=CHUNK, max_lr=0.01, heads=H, head_dim=D)
  want = None
  for gates in (init, {"lr": 0.7}, {"retention": 0.995}):
    memory = ref.MemoryReference(layer, gate_init=gates, **kw)
    out = memory(x, memory.init_state(B))[0]
    if want is None:
      want = out
      chex.assert_trees_all_close(np.asarray(got, np.float64), want, rtol=5e-4, atol=5e-4)
    else:  # each of the two initial values changes the output
      assert np.abs(out - want).max() > 1e-2, gates
  for bad, match in [({"delta": 0.5}, "not a sigmoid gate"), ({"lr": 1.0}, r"must be in \(0, 1\)")]:
    with pytest.raises(ValueError, match=match):
      NeuralMemory(E, H, D, preset="yaad", gate_init=bad, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "preset,scale", [("titans_lmm", 1.0), ("memora", 32.0), ("gated_delta_net", 0.1)]
)
def test_initial_memory_has_the_documented_scale(preset, scale):
  """The learned initial memory starts normal with std init_scale/√fan_in (docs/models.md: 1 for
  MLP memories, 32 for Memora's softmax logits, 0.1 for linear memories)."""
  layer = NeuralMemory(8, 1, 16, preset=preset, rngs=nnx.Rngs(3))
  for p in layer.initial_memory:
    w = np.asarray(p[...])
    np.testing.assert_allclose(w.std(), scale / np.sqrt(w.shape[-1]), rtol=0.1)
