"""Each model's residual block against its documented data flow (docs/models.md, "Decisions where
the papers are silent"), recomputed from the block's parameters in numpy (``tests/nn/reference.py``;
the memory rules from the core's token-serial references):

- hybrid_lm, titans_mal (Eq 29–31): x += Mem(norm x); x += SWA*(norm x); x += SwiGLU(norm x)
- titans_mag (Eq 26–28): z = norm x; x += RMSNorm(SWA*(z)) ⊙ σ(RMSNorm(Mem(z))); x += SwiGLU(norm x)
- titans_mac (Eq 21–25), per segment: h = M*_{t−1}(q(z)); y = Attn([p ‖ h ‖ z]); write y (the paper)
  or z (the default); x += y ⊙ σ(Mem(y or z)); then x += SwiGLU(norm x)
- hope (Eq 94–97): x += SelfModTitans(norm x); x += CMS(norm x)
- hope_attention (§8.3): x += Attn(norm x); x += CMS(norm x)
- transformer: x += Attn(norm x); x += SwiGLU(norm x), the attention's q, k, v through
  silu(short conv) when ``attention_conv`` > 0 (also in the hybrid, MAL and MAG blocks)
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from miras_jax import models
from miras_jax.core import selfmod as sm
from tests.nn import reference as ref

B, T, E, H, D = 2, 10, 16, 2, 8
TOL = 1e-4
SHAPE = dict(vocab=32, dim=E, layers=1, heads=H, head_dim=D, mlp_hidden=24)
MEMORY = dict(chunk_size=2, gate_rank=4, conv_kernel=4, max_lr=0.5)  # chunk < segment < T
WINDOW, PERSISTENT, SEGMENT = 3, 2, 4
CMS = dict(cms_chunk_sizes=(1, 2, 4), cms_lrs=(0.5, 0.3, 0.2))


def _block(name, **fields):
  model = models.get(name, models.config(name, "tiny", **SHAPE, **fields), rngs=nnx.Rngs(4))
  return ref.randomize_norm_scales(model.blocks[0])


def _run(block, x):
  y, _ = nnx.jit(lambda b, x: b(x))(block, jnp.asarray(x, jnp.float32))
  return np.asarray(y, np.float64)


def _x(seed=0):
  return np.random.default_rng(seed).normal(size=(B, T, E))


def _memory(block, preset):
  return ref.MemoryReference(
    block.memory,
    preset=preset,
    preset_options={},
    chunk_size=MEMORY["chunk_size"],
    max_lr=MEMORY["max_lr"],
    heads=H,
    head_dim=D,
  )


def _mlp(block, x):
  return x + ref.swiglu(block.mlp, ref.rms_norm(x, block.norm_mlp))


@pytest.mark.parametrize(
  "name,preset,persistent",
  [("titans_mal", "titans_lmm", PERSISTENT), ("hybrid_lm", "yaad", 0)],
)
def test_memory_then_attention_blocks(name, preset, persistent):
  block = _block(name, **MEMORY, preset=preset, window=WINDOW, persistent=persistent)
  x = _x()
  memory = _memory(block, preset)
  y, _ = memory(ref.rms_norm(x, block.norm_memory), memory.init_state(B))
  want = x + y
  z = ref.rms_norm(want, block.norm_attention)
  want = want + ref.attention(block.attention, z, heads=H, window=WINDOW, n_persistent=persistent)
  chex.assert_trees_all_close(_run(block, x), _mlp(block, want), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("conv", [0, 3])
def test_mag_block_gates_attention_with_the_memory(conv):
  block = _block(
    "titans_mag",
    **MEMORY,
    preset="titans_lmm",
    window=WINDOW,
    persistent=PERSISTENT,
    attention_conv=conv,
  )
  assert (block.attention.conv is None) == (conv == 0)
  x = _x(1)
  z = ref.rms_norm(x, block.norm)
  y = ref.attention(block.attention, z, heads=H, window=WINDOW, n_persistent=PERSISTENT)
  memory = _memory(block, "titans_lmm")
  m, _ = memory(z, memory.init_state(B))
  want = x + ref.rms_norm(y, block.norm_y) * ref.sigmoid(ref.rms_norm(m, block.norm_m))
  chex.assert_trees_all_close(_run(block, x), _mlp(block, want), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("writes", ["attention", "tokens"])
def test_mac_block_follows_eq_21_to_25(writes):
  """Two whole segments and a partial one (T = 10, C = 4): the attention of each segment sees the
  persistent tokens, h_j (RoPE position j) and z_j (position C + j) for j ≤ i; the memory is read at
  the segment start and written with the attention outputs (``writes="tokens"``: with the segment's
  normalised inputs), its state carried across segments."""
  block = _block(
    "titans_mac",
    **MEMORY,
    preset="titans_lmm",
    segment=SEGMENT,
    persistent=PERSISTENT,
    writes=writes,
  )
  x = _x(2)
  z = ref.rms_norm(x, block.norm)
  memory = _memory(block, "titans_lmm")
  state = memory.init_state(B)
  read_conv = np.zeros_like(state[0])  # the retrieval queries' own conv buffer
  out = []
  for start in range(0, T, SEGMENT):
    zs = z[:, start : start + SEGMENT]
    c = zs.shape[1]
    h, read_conv = memory.read(zs, state[3], read_conv)  # (21): M*_{t−1}(q(z)), frozen memory
    pos = np.arange(c)
    q, k_z, v_z = ref.project(block.attention, zs, SEGMENT + pos, H)
    _, k_h, v_h = ref.project(block.attention, h, pos, H)
    causal = pos[None, :] <= pos[:, None]
    y = ref.attend(
      block.attention,
      q,
      np.concatenate([k_h, k_z], 1),
      np.concatenate([v_h, v_z], 1),
      np.concatenate([causal, causal], 1),
      n_persistent=PERSISTENT,
    )  # (22–23)
    # (24): the memory learns y (or z); (25): its read after each write
    m, state = memory(y if writes == "attention" else zs, state)
    out.append(y * ref.sigmoid(m))
  want = x + np.concatenate(out, 1)
  chex.assert_trees_all_close(_run(block, x), _mlp(block, want), rtol=TOL, atol=TOL)


def _cms(block, x):
  v = ref.rms_norm(x, block.norm_mlp)
  return x + ref.cms(
    block.mlp, v, chunk_sizes=CMS["cms_chunk_sizes"], lrs=CMS["cms_lrs"], variant="sequential"
  )


def _with_cms_values(block, seed=5):
  rng = np.random.default_rng(seed)
  for v in block.mlp.values:  # meta-learned value maps (zeros at init): give the levels a target
    v[...] = jnp.asarray(rng.normal(size=v.shape) / np.sqrt(E), jnp.float32)
  return block


def test_hope_block():
  fields = dict(chunk_size=2, memory_chunk_size=4, max_lr=0.5, memory_expansion=2, conv_kernel=4)
  block = _with_cms_values(_block("hope", **fields, **CMS))
  x = _x(3)
  rule = sm.SelfModTitans(chunk_size=2, memory_chunk_size=4, max_lr=0.5)
  want = x + ref.self_modifying_titans(
    block.mixer, ref.rms_norm(x, block.norm_mixer), rule, heads=H, head_dim=D
  )
  chex.assert_trees_all_close(_run(block, x), _cms(block, want), rtol=TOL, atol=TOL)


def test_hope_attention_block():
  block = _with_cms_values(_block("hope_attention", max_len=16, **CMS))
  x = _x(4)
  want = x + ref.attention(block.mixer, ref.rms_norm(x, block.norm_mixer), heads=H)
  chex.assert_trees_all_close(_run(block, x), _cms(block, want), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("conv,chunk", [(0, 0), (4, 4)])
def test_transformer_block(conv, chunk):
  """``chunk``: the attention over blocks of 4 queries (T = 10: the last one padded)."""
  block = _block("transformer", max_len=16, attention_conv=conv, attention_chunk=chunk)
  assert (block.attention.conv is None) == (conv == 0) and block.attention.query_chunk == chunk
  x = _x(5)
  want = x + ref.attention(block.attention, ref.rms_norm(x, block.norm_attention), heads=H)
  chex.assert_trees_all_close(_run(block, x), _mlp(block, want), rtol=TOL, atol=TOL)
