"""The MQAR task (multi-query associative recall, Zoology; Arora et al. 2023): its numpy generator
``mqar``, its tfds dataset (``MQARConfig``, ``mqar_config``, ``MQARBuilder``: ``prepare("mqar", …)``)
and its evaluation ``mqar``, registered in ``miras_jax.data.registry``."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from miras_jax.data.builders import (
  VERSION,
  TaskBuilder,
  check_split_options,
  task_info,
)
from miras_jax.data.registry import register_dataset, register_eval_task


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
  return int(value)


def _distinct_rows(rng: np.random.Generator, n: int, k: int, pool: int) -> np.ndarray:
  """``[n, k]`` ints in ``[0, pool)``, each row ``k`` distinct values, uniform over ordered tuples.

  Draws rows with replacement and redraws the rows that repeat a value without replacement; both
  are uniform over ordered distinct tuples, so the mixture is too (and it is fast when k² << pool).
  """
  out = rng.integers(0, pool, size=(n, k))
  srt = np.sort(out, axis=1)
  for i in np.flatnonzero(np.any(srt[:, 1:] == srt[:, :-1], axis=1)):
    out[i] = rng.choice(pool, size=k, replace=False)
  return out


def mqar(
  seed: int,
  n: int,
  seq_len: int,
  vocab: int,
  num_pairs: int,
  power_a: float = 0.01,
) -> dict[str, np.ndarray]:
  """Zoology-style multi-query associative recall (MQAR), deterministic by ``seed``.

  Layout of one sequence (``P = num_pairs``, ``T = seq_len``, ``S = (T - 2P) // 2`` query slots)::

    position:  0   1   2   3  ...  2P-2 2P-1 | 2P  2P+1 2P+2 2P+3 ...           T-1
    inputs:    k1  v1  k2  v2 ...  kP   vP   | 0   0    kj   0    ...  ki  0 ... 0
                  key-value prompt           |  query region: slot g is position 2P + 2g

  - Keys are drawn from ``[1, vocab // 2)``, values from ``[vocab // 2, vocab)`` (disjoint halves);
    within one sequence the ``P`` keys are distinct and so are the ``P`` values. Token ``0`` is
    reserved: it fills every position of the query region that is not a query key (no random noise,
    unlike Zoology's ``random_non_queries``).
  - Every key is queried exactly once, in query slot ``g`` (position ``2P + 2g``, ``0 <= g < S``).
    The ``P`` slots are drawn without replacement with ``p(g) ∝ (g + 1) ** (power_a - 1)``, the
    Zoology power law on the gap from the end of the prompt; as in Zoology the draws are sequential
    (the slot of key ``i`` is the ``i``-th draw, done here by Gumbel top-k), so small ``power_a``
    puts most queries just after the prompt.
  - ``targets`` are next-token targets: ``targets[t] = inputs[t + 1]`` (``targets[T-1] = 0``) except
    at a query position ``t``, where ``targets[t]`` is the value paired with the key ``inputs[t]`` in
    the prompt. The token after a query key is ``0``, i.e. the value is never shown: the model reading
    the query key must emit its value as the next token.
  - ``mask`` is True exactly at the ``P`` query positions of each row.

  Args:
    seed: non-negative integer seed of ``np.random.default_rng``; equal seeds give equal outputs.
    n: number of sequences (``>= 1``).
    seq_len: sequence length ``T``; must satisfy ``T >= 4 * num_pairs`` (so that ``S >= P``).
    vocab: vocabulary size; keys need ``vocab // 2 - 1 >= num_pairs``.
    num_pairs: number of key-value pairs ``P`` (``>= 1``), also the number of queries.
    power_a: exponent ``a > 0`` of the gap law ``p(g) ∝ g ** (a - 1)`` (1 is uniform).

  Returns:
    ``{"inputs": int32 [n, T], "targets": int32 [n, T], "mask": bool [n, T]}``.

  Raises:
    ValueError: an argument is out of range (the message names it).
  """
  seed = _check_int("seed", seed, 0)
  n = _check_int("n", n, 1)
  num_pairs = _check_int("num_pairs", num_pairs, 1)
  seq_len = _check_int("seq_len", seq_len, 1)
  vocab = _check_int("vocab", vocab, 1)
  if seq_len < 4 * num_pairs:
    raise ValueError(
      f"seq_len: expected >= 4 * num_pairs = {4 * num_pairs} (prompt of 2 * num_pairs tokens and "
      f"num_pairs query slots of 2 tokens), got {seq_len}"
    )
  if vocab // 2 - 1 < num_pairs:
    raise ValueError(
      f"vocab: expected vocab // 2 - 1 >= num_pairs = {num_pairs} distinct keys in [1, vocab // 2), "
      f"i.e. vocab >= {2 * (num_pairs + 1)}, got {vocab}"
    )
  if isinstance(power_a, bool) or not isinstance(power_a, numbers.Real):
    raise ValueError(f"power_a: expected a finite float > 0, got {power_a!r}")
  if not (math.isfinite(power_a) and power_a > 0):
    raise ValueError(f"power_a: expected a finite float > 0, got {power_a}")

  rng = np.random.default_rng(seed)
  p = num_pairs
  half = vocab // 2
  n_slots = (seq_len - 2 * p) // 2

  keys = 1 + _distinct_rows(rng, n, p, half - 1)
  values = half + _distinct_rows(rng, n, p, vocab - half)

  # Sequential sampling without replacement with probabilities ∝ w: Gumbel top-k, in score order.
  log_w = (power_a - 1.0) * np.log(np.arange(1, n_slots + 1, dtype=np.float64))
  scores = log_w + rng.gumbel(size=(n, n_slots))
  top = np.argpartition(-scores, p - 1, axis=1)[:, :p]
  order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
  slots = np.take_along_axis(top, order, axis=1)  # [n, P]: slot of key i is slots[:, i]

  inputs = np.zeros((n, seq_len), dtype=np.int32)
  inputs[:, 0 : 2 * p : 2] = keys
  inputs[:, 1 : 2 * p : 2] = values
  query_pos = 2 * p + 2 * slots
  np.put_along_axis(inputs, query_pos, keys.astype(np.int32), axis=1)

  targets = np.zeros_like(inputs)
  targets[:, :-1] = inputs[:, 1:]
  np.put_along_axis(targets, query_pos, values.astype(np.int32), axis=1)
  mask = np.zeros((n, seq_len), dtype=bool)
  np.put_along_axis(mask, query_pos, True, axis=1)
  return {"inputs": inputs, "targets": targets, "mask": mask}


# ------------------------------------------------------------------------------------------------
# The tfds dataset and the evaluation


@dataclasses.dataclass(kw_only=True)
class MQARConfig(tfds.core.BuilderConfig):
  """Options of ``MQARBuilder`` (see ``miras_jax.data.synthetic.mqar`` for their meaning).

  Split ``train`` is ``mqar(2 * seed, train_size, …)`` and split ``test`` is
  ``mqar(2 * seed + 1, test_size, …)``: the two splits use different seeds, and no two configs with
  different ``seed`` share a split seed.
  """

  seq_len: int = 256
  vocab: int = 8192
  num_pairs: int = 16
  train_size: int = 100_000
  test_size: int = 3_000
  seed: int = 0
  power_a: float = 0.01


def mqar_config(
  *,
  seq_len: int = 256,
  vocab: int = 8192,
  num_pairs: int = 16,
  train_size: int = 100_000,
  test_size: int = 3_000,
  seed: int = 0,
  power_a: float = 0.01,
) -> MQARConfig:
  """Returns the validated ``MQARConfig`` for these options, named after all of them.

  The name is ``T{seq_len}_V{vocab}_P{num_pairs}_a{power_a}_n{train_size}-{test_size}_s{seed}``, e.g.
  ``T64_V128_P4_a0.01_n1000-100_s0``, so different options land in different directories.

  Raises:
    ValueError: an option is out of range (the message names it).
  """
  check_split_options(train_size, test_size, seed)
  # Validate the task options once, on a single tiny example.
  mqar(seed=2 * seed, n=1, seq_len=seq_len, vocab=vocab, num_pairs=num_pairs, power_a=power_a)
  power_a = float(power_a)
  name = f"T{seq_len}_V{vocab}_P{num_pairs}_a{power_a!r}_n{train_size}-{test_size}_s{seed}"
  return MQARConfig(
    name=name,
    version=VERSION,
    description=f"MQAR: seq_len={seq_len}, vocab={vocab}, num_pairs={num_pairs}, "
    f"power_a={power_a}, train_size={train_size}, test_size={test_size}, seed={seed}",
    seq_len=int(seq_len),
    vocab=int(vocab),
    num_pairs=int(num_pairs),
    train_size=int(train_size),
    test_size=int(test_size),
    seed=int(seed),
    power_a=power_a,
  )


class MQARBuilder(TaskBuilder, skip_registration=True):
  """Multi-query associative recall as a tfds dataset (splits ``train`` and ``test``).

  Each example: ``inputs`` int32 ``[seq_len]``, ``targets`` int32 ``[seq_len]``, ``mask`` bool
  ``[seq_len]`` — one row of ``miras_jax.data.synthetic.mqar`` (generated in memory per split:
  about ``9 * seq_len`` bytes per example). Build it with ``prepare("mqar", data_dir, **options)``
  or ``MQARBuilder(data_dir=…, config=mqar_config(…), file_format="array_record")``.
  """

  name = "mqar"
  config_class = MQARConfig
  config_function = "mqar_config"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.checked_config()
    return task_info(
      self,
      cfg.seq_len,
      "Zoology-style multi-query associative recall (miras_jax.data.synthetic.mqar).",
    )

  def _generate_examples(self, seed: int, n: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    cfg = self.builder_config
    data = mqar(seed, n, cfg.seq_len, cfg.vocab, cfg.num_pairs, cfg.power_a)
    for i in range(n):
      yield i, {k: v[i] for k, v in data.items()}


register_dataset("mqar", MQARBuilder, MQARConfig, mqar_config)
register_eval_task(
  "mqar",
  lambda options, seed, n, length: mqar(
    seed, n, length, options.get("vocab", 64), options.get("num_pairs", 8)
  ),
  byte_level=False,
  description="the run's MQAR options at the given length (needs the run's vocabulary)",
)
