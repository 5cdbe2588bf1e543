"""Shared random inputs for the core tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import miras_jax as mj

D = 4
PARAMETRIC = [n for n in mj.presets.names() if n != "softmax_attention"]
CHANNEL = {"gla", "rwkv7", "hgrn2", "dfw"}


def make_inputs(name, t, seed=0, rule=None, lr=0.3, retention=(0.9, 1.0), dtype=jnp.float32):
  """Random inputs, gates in their valid ranges and an initial state for preset ``name``."""
  rng = np.random.default_rng(seed)
  rule = rule or mj.presets.get(name)
  n = rule.algorithm.steps if name == "delta_product" else None
  lead = (t, n) if n else (t,)
  k = rng.normal(size=(*lead, D))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  v = rng.normal(size=(*lead, D))
  q = rng.normal(size=(t, D))
  gates = mj.Gates(
    lr=rng.uniform(0.5 * lr, lr, size=lead),
    retention=rng.uniform(*retention, size=(t, D) if name in CHANNEL else (t,)),
    retention_value=rng.uniform(*retention, size=(t, D)) if name == "dfw" else None,
    momentum=rng.uniform(0.0, 0.9, size=(t,)),
    delta=rng.uniform(0.3, 1.5, size=(t,)),
  )
  f32 = lambda x: None if x is None else jnp.asarray(x, dtype)
  gates = jax.tree.map(f32, gates)
  if name == "softmax_attention":
    state = rule.init_state(D, D, capacity=t)
  elif isinstance(rule.memory, mj.LinearMemory):
    w0 = np.full((D, D), 1.0 / D) if name == "memora" else 0.1 * rng.normal(size=(D, D))
    state = rule.init_state(jnp.asarray(w0, dtype))
  else:
    w0 = rule.memory.init(jax.random.key(seed), D, D)
    if name == "memora":
      w0 = jax.tree.map(lambda w: jax.nn.softmax(w, axis=-1), w0)
    state = rule.init_state(jax.tree.map(lambda w: w.astype(dtype), w0))
  return rule, state, f32(q), f32(k), f32(v), gates


FORMS = ("recurrent", "chunked", "chunked_write_chunk", "chunk_reference")


def call_form(form, rule, state, q, k, v, g, chunk_size=4):
  """One of the core's forms of ``rule`` (``FORMS``) on one sequence."""
  if form == "recurrent":
    return mj.recurrent(rule, state, q, k, v, g)
  if form == "chunked":
    return mj.chunked(rule, state, q, k, v, g, chunk_size=chunk_size)
  if form == "chunked_write_chunk":
    return mj.chunked(rule, state, q, k, v, g, chunk_size=chunk_size, write="chunk")
  return mj.chunk_reference(rule, state, q, k, v, g, chunk_size=chunk_size)


def used_inputs(name, t, seed=0):
  """``make_inputs`` with the gates the preset does not use set to None (softmax attention: a
  cache of 16 slots)."""
  rule, state, q, k, v, g = make_inputs(name, t, seed)
  if name == "softmax_attention":
    state = rule.init_state(D, D, capacity=16)
  used = rule.used_gates
  g = mj.Gates(**{f: getattr(g, f) if f in used else None for f in mj.Gates._fields})
  return rule, state, q, k, v, g


@functools.cache  # test_fuzz and test_edge_inputs ask for the same list
def form_cases():
  """(preset, form) of every form a preset's composition has (a clean call is not refused). The
  forms refuse a composition while tracing, so an abstract evaluation finds them without running
  (or compiling) anything."""
  cases = []
  for name in mj.presets.names():
    rule, state, q, k, v, g = used_inputs(name, 1)
    for form in FORMS:
      call = lambda s, q, k, v, g, form=form, rule=rule: call_form(form, rule, s, q, k, v, g)
      try:
        jax.eval_shape(call, state, q, k, v, g)
      except ValueError:
        continue
      cases.append((name, form))
  return tuple(cases)
