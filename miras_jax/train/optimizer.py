"""The optimizer factory: optax transforms chosen by name, with warmup + cosine and clipping."""

from __future__ import annotations

import jax
import optax

from miras_jax.optim import m3
from miras_jax.train.settings import OptimizerSettings


def schedule(s: OptimizerSettings, steps: int) -> optax.Schedule:
  """Linear warmup 0 → ``lr`` over ``warmup_steps`` (at most ``steps − 1``), then cosine to
  ``lr · min_lr_ratio`` at step ``steps``."""
  warmup = min(s.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    0.0,
    s.lr,
    warmup_steps=warmup,
    decay_steps=max(steps, warmup + 1),
    end_value=s.lr * s.min_lr_ratio,
  )


def _matrices(params):
  """Weight-decay mask: parameters of rank ≥ 2 (not norm scales, biases, gate biases)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(s: OptimizerSettings, steps: int) -> optax.GradientTransformation:
  """``adamw`` (decoupled decay on matrices), ``m3`` (miras_jax.optim; weight decay added to the
  gradient of matrices), ``muon`` (``optax.contrib.muon``: Newton–Schulz
  orthogonalised momentum on 2-D weights, Adam on the rest) or ``sgd`` (momentum ``b1``); after
  global-norm clipping at ``clip_norm`` (0 = off)."""
  lr = schedule(s, steps)
  if s.name == "adamw":
    tx = optax.adamw(lr, b1=s.b1, b2=s.b2, eps=s.eps, weight_decay=s.weight_decay, mask=_matrices)
  elif s.name == "muon":
    tx = optax.contrib.muon(
      lr,
      beta=s.b1,
      weight_decay=s.weight_decay,
      weight_decay_mask=_matrices,
      adam_b1=s.b1,
      adam_b2=s.b2,
      eps=s.eps,
    )
  elif s.name == "m3":
    tx = m3(lr, b1=s.b1, b2=s.b2, eps=s.eps)
    if s.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(s.weight_decay, _matrices), tx)
  elif s.name == "sgd":
    tx = optax.sgd(lr, momentum=s.b1)
  else:
    raise ValueError(f"optimizer.name must be adamw, muon, m3 or sgd; got {s.name!r}")
  if s.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(s.clip_norm), tx)
  return tx
