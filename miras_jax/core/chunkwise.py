"""``chunked``: the parallel training form of every memory rule, and its one dispatch.

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

The forms, one module each: ``exact.py`` (rules linear in the state: the WY/UT chunk algorithm),
``minibatch.py`` (every other rule: the dual form of the mini-batch semantics, and the aggregated
per-chunk write), ``reference.py`` (those semantics token by token, ``chunk_reference``) and
``attention.chunked_attention`` (softmax attention, blockwise over its KV cache). Which applies
is asked of the rule's components (``interfaces.py``), never of their classes.
"""

from __future__ import annotations

from miras_jax.core import exact, minibatch
from miras_jax.core.attention import SoftmaxAttention, chunked_attention
from miras_jax.core.blocks import check_chunk_size
from miras_jax.core.gates import Gates
from miras_jax.core.reference import chunk_reference
from miras_jax.core.rule import promote


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
  check_chunk_size(chunk_size)
  if write not in ("token", "chunk"):
    raise ValueError(f"write must be 'token' or 'chunk'; got {write!r}")
  rule.check(state, q, k, v, gates)
  gates = Gates(**{f: getattr(gates, f) if f in rule.used_gates else None for f in Gates._fields})
  state, q, k, v, gates = promote(state, q, k, v, gates)
  if isinstance(rule, SoftmaxAttention):
    if write != "token":
      raise ValueError("write='chunk' needs a parametric rule; softmax attention writes per token")
    return chunked_attention(rule, state, q, k, v, chunk_size, remat)
  if write == "chunk":
    return minibatch.run_per_chunk(rule, state, q, k, v, gates, chunk_size, remat)
  if exact.exact_form_applies(rule):
    return exact.run(rule, state, q, k, v, gates, chunk_size, remat)
  if rule.algorithm.minibatch == "reference":  # e.g. DGD: W(αI − η'kkᵀ) has no dual form here
    return chunk_reference(rule, state, q, k, v, gates, chunk_size=chunk_size)
  return minibatch.run(rule, state, q, k, v, gates, chunk_size, remat)
