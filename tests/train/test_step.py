"""``miras_jax.train.step.make_train_step``'s guard: a finite step is the plain optax update, a
step with non-finite new parameters (or loss, or gradient) leaves parameters and optimizer state
bit for bit as they were and says so in ``metrics["finite"]``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from miras_jax import data as mdata
from miras_jax import models
from miras_jax.train.step import TrainState, make_train_step


def _setup(lr):
  config = models.config(
    "transformer", "tiny", vocab=16, dim=16, heads=2, head_dim=8, mlp_hidden=16
  )
  model = models.get("transformer", config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = params.to_pure_dict()
  tx = optax.sgd(lr)
  state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in mdata.mqar(0, 4, 16, 16, 2).items()}
  return graphdef, tx, state, batch


def test_a_finite_step_is_the_optax_update():
  graphdef, tx, state, batch = _setup(0.1)
  new, metrics = jax.jit(make_train_step(graphdef, tx))(state, batch)
  assert bool(metrics["finite"])

  def loss(params):
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"])
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.sum(mask)

  grads = jax.jit(jax.grad(loss))(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
  assert int(new.step) == 1


def test_a_non_finite_step_is_not_applied():
  graphdef, tx, state, batch = _setup(np.nan)
  new, metrics = jax.jit(make_train_step(graphdef, tx))(state, batch)
  assert not bool(metrics["finite"]) and np.isnan(float(metrics["param_norm"]))
  chex.assert_trees_all_equal(new.params, state.params)
  chex.assert_trees_all_equal(new.opt_state, state.opt_state)
  assert int(new.step) == 1  # the batch was consumed
