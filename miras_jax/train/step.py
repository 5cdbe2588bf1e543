"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``; jitted by the loop.

A batch is ``{"inputs": int [B, T], "targets": int [B, T], "mask": bool [B, T]}``: the loss is the
mean next-token cross-entropy over the positions where ``mask`` is True (MQAR: the queried values;
text: every position).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class TrainState(NamedTuple):
  params: Any  # the model's parameters, a pure dict (nnx.State.to_pure_dict)
  opt_state: Any  # the optimizer's state
  step: jax.Array  # optimizer steps taken (int32)
  rng: jax.Array  # a typed PRNG key, split every step (for stochastic layers; checkpointed)


def token_metrics(logits, batch):
  """Masked cross-entropy sum, correct-prediction count and token count (float32 sums)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  mask = batch["mask"].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  return jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask)


def make_train_step(graphdef, tx: optax.GradientTransformation, grad_accum: int = 1):
  """The train step: mean loss over the batch's masked tokens, gradients summed over
  ``grad_accum`` micro-batches (a ``lax.scan``; one optimizer update per step).

  A step whose loss, gradient norm or updated parameters are not finite is not applied: the
  parameters and optimizer state stay as they were (``step`` and ``rng`` still advance, as the
  batch was consumed), and ``metrics["finite"]`` is False. The loop decides what follows
  (``train.on_nonfinite``); a non-finite state never reaches a checkpoint.
  """

  def loss_fn(params, batch):
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"])
    nll, correct, count = token_metrics(logits, batch)
    return nll, (correct, count)

  def step(state: TrainState, batch):
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

    def one(carry, mb):
      (nll, (correct, count)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, mb)
      grads, tot = carry
      return (jax.tree.map(jnp.add, grads, g), tot + jnp.stack([nll, correct, count])), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, tot), _ = jax.lax.scan(one, (zeros, jnp.zeros(3)), micro)
    count = jnp.maximum(tot[2], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": tot[0] / count,
      "accuracy": tot[1] / count,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "tokens": tot[2],
    }
    finite = jnp.all(
      jnp.isfinite(jnp.stack([metrics[k] for k in ("loss", "grad_norm", "param_norm")]))
    )
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics["finite"] = finite
    return TrainState(params, opt_state, state.step + 1, jax.random.split(state.rng)[0]), metrics

  return step


def make_eval_step(graphdef):
  """Sums of the masked negative log-likelihood, correct predictions and tokens of a batch."""

  def step(params, batch):
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"])
    nll, correct, count = token_metrics(logits, batch)
    return jnp.stack([nll, correct, count])

  return step
