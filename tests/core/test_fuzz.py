"""Property-based fuzzing of the core's entry points with malformed inputs (issue 15).

Every generated call to ``recurrent``, ``chunked`` (both writes) or ``chunk_reference`` of every
preset must be answered either by a ``ValueError``/``TypeError`` whose message names the offending
argument (``structural``: wrong ranks, shapes, dtypes, pytrees, gate values, chunk options), or by a
correct result (``values``: NaN/inf tokens, T = 0, half precision, edge chunk sizes; checked
against the clean run, ``recurrent`` or ``chunk_reference``). Derandomised; tiny shapes, and the
value cases run jitted per (preset, form, chunk size) so compiles are reused.

``structural_outcome`` and ``values_outcome`` classify one generated call (``Outcome.kind``);
the tests assert that every kind is one of ``GOOD``.
"""

import dataclasses
import functools
import re
import traceback
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import miras_jax as mj
from miras_jax.core.exact import exact_form_applies
from tests.core.inputs import D, call_form, form_cases, used_inputs

CASES = form_cases()
T = 5
GOOD = ("clear_error", "correct")
SETTINGS = dict(
  derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


class Outcome(NamedTuple):
  kind: str  # clear_error | correct | unnamed_error | wrong_result | index_error | ... | accepted
  detail: str


def _error_kind(e: Exception, arg: str | None) -> str:
  """``clear_error``: a ValueError/TypeError raised by a check of the core (a ``raise`` statement in
  ``miras_jax``) whose message names ``arg``; anything raised inside the computation (by JAX or
  Python, e.g. a scan carry dtype mismatch) is ``internal_error``."""
  if isinstance(e, IndexError):
    return "index_error"
  if isinstance(e, ZeroDivisionError):
    return "zero_division_error"
  frames = traceback.extract_tb(e.__traceback__)
  site = frames[-1] if frames else None
  checked = site is not None and "miras_jax" in site.filename and site.line.startswith("raise")
  if not checked:
    return "internal_error"
  if isinstance(e, (ValueError, TypeError)):
    named = arg is not None and re.search(rf"(?<!\w){re.escape(arg)}\b", str(e))
    return "clear_error" if named else "unnamed_error"
  return "other_error"


def _attempt(fn, arg):
  """Runs ``fn``; an exception is classified against the argument it should name."""
  try:
    return fn(), None
  except Exception as e:  # noqa: BLE001 (every exception is an outcome here)
    return None, Outcome(_error_kind(e, arg), f"{type(e).__name__}: {str(e)[:160]}")


# ---- structural malformations: each must be refused naming ``arg`` ------------------------------
def _bad_array(x, how):
  return {
    "rank_down": lambda: x[..., 0],
    "rank_up": lambda: x[..., None],
    "rows": lambda: jnp.concatenate([x, x[:1]]),
    "width": lambda: jnp.concatenate([x, x[..., :1]], axis=-1),
    "int": lambda: x.astype(jnp.int32),
    "bool": lambda: x > 0,
    "list": lambda: np.asarray(x).tolist(),
    "none": lambda: None,
  }[how]()


def _structural(data, name, form):
  """(arguments of the call, the argument its error must name)."""
  rule, state, q, k, v, g = used_inputs(name, T)
  args = {"state": state, "q": q, "k": k, "v": v, "g": g, "chunk_size": 2, "write": "token"}
  kinds = ["array", "gate", "state", "gates_type"]
  if form != "recurrent":
    kinds.append("chunk_size")
  if form == "chunked":
    kinds.append("write")
  kind = data.draw(st.sampled_from(kinds), label="kind")
  if kind == "array":
    which = data.draw(st.sampled_from(["q", "k", "v"]), label="which")
    hows = ["rank_down", "rank_up", "rows", "width", "int", "bool", "list", "none"]
    if which == "k" and name == "hgrn2":  # its key is 1 − α: only k's rank and rows are checked
      hows.remove("width")
    args[which] = _bad_array(args[which], data.draw(st.sampled_from(hows), label="how"))
    return args, which
  if kind == "gates_type":
    args["g"] = data.draw(st.sampled_from([dict(g._asdict()), tuple(g), None]), label="gates")
    return args, "gates"
  if kind == "chunk_size":
    args["chunk_size"] = data.draw(st.sampled_from([0, -1, -4, 2.5, True, "4", None]), label="b")
    return args, "chunk_size"
  if kind == "write":
    args["write"] = data.draw(st.sampled_from(["tokens", "", None]), label="write")
    return args, "write"
  if kind == "gate":
    return _bad_gate(data, rule, args)
  return _bad_state(data, name, rule, args)


def _bad_gate(data, rule, args):
  g = args["g"]
  used = [f for f in mj.Gates._fields if getattr(g, f) is not None]
  if not used:  # softmax attention: no gates to corrupt, a wrong gates object instead
    args["g"] = (None,) * 5
    return args, "gates"
  field = data.draw(st.sampled_from(used), label="field")
  x = getattr(g, field)
  hows = ["rows", "rank_up", "rank_down", "int", "nan", "inf", "negative"]
  if x.ndim == 2:
    hows.append("width")
  if field in rule.required_gates:
    hows.append("missing")
  if field in ("retention", "retention_value", "momentum"):
    hows.append("above_one")
  if field == "delta":
    hows.append("zero")
  how = data.draw(st.sampled_from(hows), label="how")
  pos = data.draw(st.integers(0, T - 1), label="pos")
  bad = {
    "missing": lambda: None,
    "nan": lambda: x.at[pos].set(jnp.nan),
    "inf": lambda: x.at[pos].set(jnp.inf),
    "negative": lambda: x.at[pos].set(-0.5),
    "above_one": lambda: x.at[pos].set(1.5),
    "zero": lambda: x.at[pos].set(0.0),
  }.get(how, lambda: _bad_array(x, how))()
  args["g"] = g._replace(**{field: bad})
  return args, f"gates.{field}"


def _bad_state(data, name, rule, args):
  state = args["state"]
  if name == "softmax_attention":
    how = data.draw(st.sampled_from(["type", "keys_rank", "keys_half", "values_rows", "length"]))
    bad = {
      "type": lambda: (state.keys, state.values),
      "keys_rank": lambda: state._replace(keys=state.keys[0]),
      "keys_half": lambda: state._replace(keys=state.keys.astype(jnp.bfloat16)),
      "values_rows": lambda: state._replace(values=state.values[:-1]),
      "length": lambda: state._replace(length=jnp.zeros((2,), jnp.int32)),
    }[how]()
    args["state"] = bad
    arg = {"type": "state", "keys_rank": "state.keys", "keys_half": "state.keys"}
    return args, arg.get(how, "state.values" if how == "values_rows" else "state.length")
  w = state.weights
  leaves = jax.tree.leaves(w)
  hows = ["type", "weights_rank", "weights_int", "weights_half", "weights_none", "phase_only"]
  hows.append("momentum_missing" if state.momentum is not None else "momentum_extra")
  if state.accum is not None:
    hows.append("accum_shape")
  how = data.draw(st.sampled_from(hows), label="how")
  rebuild = lambda f: jax.tree.unflatten(jax.tree.structure(w), [f(x) for x in leaves])
  bad, arg = {
    "type": lambda: ((w,), "state"),
    "weights_rank": lambda: (state._replace(weights=rebuild(lambda x: x[0])), "weights"),
    "weights_int": lambda: (state._replace(weights=rebuild(lambda x: x.astype(int))), "weights"),
    "weights_half": lambda: (
      state._replace(weights=rebuild(lambda x: x.astype(jnp.float16))),
      "state.weights",
    ),
    "weights_none": lambda: (state._replace(weights=None), "weights"),
    "phase_only": lambda: (
      state._replace(chunk_phase=jnp.zeros((), jnp.int32)),
      "state.chunk_base",
    ),
    "momentum_missing": lambda: (state._replace(momentum=None), "state.momentum"),
    "momentum_extra": lambda: (
      state._replace(momentum=jax.tree.map(jnp.zeros_like, w)),
      "state.momentum",
    ),
    "accum_shape": lambda: (
      state._replace(accum=jax.tree.map(lambda x: x[:-1], state.accum)),
      "state.accum",
    ),
  }[how]()
  args["state"] = bad
  return args, arg


def _run(name, form, args):
  rule = mj.presets.get(name)
  a = args
  if form == "recurrent":
    return mj.recurrent(rule, a["state"], a["q"], a["k"], a["v"], a["g"])
  if form == "chunk_reference":
    return mj.chunk_reference(
      rule, a["state"], a["q"], a["k"], a["v"], a["g"], chunk_size=a["chunk_size"]
    )
  write = "chunk" if form == "chunked_write_chunk" else a["write"]
  return mj.chunked(
    rule, a["state"], a["q"], a["k"], a["v"], a["g"], chunk_size=a["chunk_size"], write=write
  )


def structural_outcome(data) -> Outcome:
  name, form = data.draw(st.sampled_from(CASES), label="case")
  args, arg = _structural(data, name, form)
  _, err = _attempt(lambda: _run(name, form, args), arg)
  if err is None:
    return Outcome("accepted", f"{name} {form}: no error naming {arg}")
  return err if err.kind != "clear_error" else Outcome("clear_error", "")


# ---- value malformations: each must give the right result ----------------------------------------
@functools.cache
def _jitted(name, form, b, minibatch=False):
  """``form`` of preset ``name`` (``minibatch``: its mini-batch semantics), jitted once."""
  rule = mj.presets.get(name)
  if minibatch:
    rule = dataclasses.replace(rule, chunk_form="minibatch")
  return jax.jit(lambda s, q, k, v, g: call_form(form, rule, s, q, k, v, g, chunk_size=b))


def _reference_form(name, form):
  """The ground truth of a form's semantics: ``recurrent`` for the exact forms, else itself."""
  exact = name == "softmax_attention" or exact_form_applies(mj.presets.get(name))
  return "recurrent" if form == "recurrent" or (form == "chunked" and exact) else form


def _close(a, b, rtol=1e-5, atol=1e-6):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def values_outcome(data) -> Outcome:
  name, form = data.draw(st.sampled_from(CASES), label="case")
  b = 4  # T = 5: tokens 1–3 share a chunk with earlier ones
  rule, state, q, k, v, g = used_inputs(name, T)
  kind = data.draw(st.sampled_from(["nonfinite", "empty", "half", "edge_chunk"]), label="kind")
  fn = _jitted(name, form, b)
  clean, _ = fn(state, q, k, v, g)
  if kind == "nonfinite":
    fields = ["q", "k", "v"] + [f for f in mj.Gates._fields if getattr(g, f) is not None]
    field = data.draw(st.sampled_from(fields), label="field")
    pos = data.draw(st.integers(0, T - 1), label="pos")
    value = data.draw(st.sampled_from([jnp.nan, jnp.inf, -jnp.inf]), label="value")
    arrays = {"q": q, "k": k, "v": v, **{f: getattr(g, f) for f in mj.Gates._fields}}
    arrays[field] = arrays[field].at[pos].set(value)
    gates = mj.Gates(**{f: arrays[f] for f in mj.Gates._fields})
    ys, err = _attempt(lambda: fn(state, arrays["q"], arrays["k"], arrays["v"], gates)[0], field)
    if err is not None:
      return err
    # write="chunk": token pos is first read at its chunk's last token
    first = (pos // b + 1) * b - 1 if form == "chunked_write_chunk" else pos
    first = min(first, T - 1)
    if not (np.all(np.isfinite(ys[:first])) and _close(ys[:first], clean[:first])):
      return Outcome("wrong_result", f"{name} {form} b={b}: {field}={value}@{pos} reached earlier")
    if field == "q" and not _close(ys[pos + 1 :], clean[pos + 1 :]):
      return Outcome("wrong_result", f"{name} {form}: a non-finite query reached other outputs")
    return Outcome("correct", "")
  if kind == "empty":
    cut = lambda x: x[:0]
    out, err = _attempt(lambda: fn(state, q[:0], k[:0], v[:0], jax.tree.map(cut, g)), "T")
    if err is not None:
      return err
    ys, end = out
    same = all(
      _close(a, b_)
      for a, b_ in zip(
        jax.tree.leaves(end[:3] if name != "softmax_attention" else end),
        jax.tree.leaves(state[:3] if name != "softmax_attention" else state),
        strict=False,
      )
    )
    ok = ys.shape == (0, D) and ys.dtype == jnp.float32 and same
    return Outcome("correct" if ok else "wrong_result", f"{name} {form}: T=0 gave {ys.shape}")
  if kind == "half":
    dtype = data.draw(st.sampled_from([jnp.float16, jnp.bfloat16]), label="dtype")
    half = jax.tree.map(lambda x: x.astype(dtype), (q, k, v, g))
    out, err = _attempt(lambda: fn(state, *half), "dtype")
    if err is not None:
      return err
    want, _ = _jitted(name, _reference_form(name, form), b)(
      state, *jax.tree.map(lambda x: x.astype(jnp.float32), half)
    )
    ok = out[0].dtype == jnp.float32 and _close(out[0], want)
    return Outcome("correct" if ok else "wrong_result", f"{name} {form}: {dtype.__name__}")
  # edge chunk sizes on clean inputs: 1 (token-serial), > T
  edge = data.draw(st.sampled_from([1, T + 3]), label="edge")
  ys, err = _attempt(lambda: _jitted(name, form, edge)(state, q, k, v, g)[0], "chunk_size")
  if err is not None:
    return err
  if edge == 1 or _reference_form(name, form) == "recurrent":
    ref = _jitted(name, "recurrent", edge)  # chunk size 1 is token-serial in every form
  elif form == "chunked_write_chunk":  # one chunk: its numpy check is in test_chunked
    return Outcome("correct" if np.all(np.isfinite(ys)) else "wrong_result", f"{name} {form}")
  else:  # the mini-batch semantics: the dual form and the token-serial reference check each other
    other = "chunk_reference" if form == "chunked" else "chunked"
    ref = _jitted(name, other, edge, minibatch=True)
  want, _ = ref(state, q, k, v, g)
  ok = _close(ys, want, rtol=1e-4, atol=1e-5)
  return Outcome("correct" if ok else "wrong_result", f"{name} {form}: chunk_size={edge}")


def _expect(outcome: Outcome) -> None:
  assert outcome.kind in GOOD, outcome


@settings(max_examples=270, **SETTINGS)
@given(st.data())
def test_malformed_structure_is_refused_naming_the_argument(data):
  _expect(structural_outcome(data))


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_malformed_values_give_the_right_result(data):
  _expect(values_outcome(data))
