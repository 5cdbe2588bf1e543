"""Sampling from any model of the registry: greedy, temperature and nucleus (top-p)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def sample_logits(logits: jax.Array, key, temperature: float = 0.0, top_p: float = 1.0):
  """One token per row of ``logits: [B, V]``.

  ``temperature = 0``: argmax (``key`` unused). Otherwise a sample from softmax(logits / T),
  restricted when ``top_p < 1`` to the nucleus: the most probable tokens whose probabilities,
  taken in decreasing order, first reach ``top_p`` (the most probable token always stays).
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more probable tokens
    floor = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= floor, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("steps", "temperature", "top_p"))
def _generate(model, prompt, key, steps: int, temperature: float, top_p: float):
  logits, cache = model(prompt)

  def step(carry, key):
    last, cache = carry
    token = sample_logits(last, key, temperature, top_p)
    logits, cache = model.decode(token[:, None], cache)
    return (logits[:, -1], cache), token

  _, tokens = jax.lax.scan(step, (logits[:, -1], cache), jax.random.split(key, steps))
  return tokens.T


def generate(
  model,
  prompt: jax.Array,
  max_new_tokens: int,
  *,
  rng: jax.Array | None = None,
  temperature: float = 0.0,
  top_p: float = 1.0,
) -> jax.Array:
  """Prefills ``prompt: [B, P]`` in one call, then samples ``max_new_tokens`` tokens one at a
  time from the decode cache; returns them ``[B, max_new_tokens]`` (int32). Greedy by default;
  ``temperature > 0`` samples (needs ``rng``), ``top_p < 1`` keeps the nucleus."""
  if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(
      f"prompt must be an int array [B, P] with P >= 1; got {prompt.dtype} {prompt.shape}"
    )
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
  if temperature > 0 and rng is None:
    raise ValueError("rng is required when temperature > 0")
  c = model.config
  if getattr(c, "max_len", None) is not None and getattr(c, "window", None) is None:
    if prompt.shape[1] + max_new_tokens > c.max_len:
      raise ValueError(
        f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the decode cache "
        f"(max_len = {c.max_len}); build the model with a larger max_len"
      )
  key = rng if rng is not None else jax.random.key(0)
  return _generate(model, prompt, key, max_new_tokens, float(temperature), float(top_p))
