"""Checkpointing for the training loop: one small, defensive wrapper around Orbax.

Example::

  ckpt = Checkpointer("/tmp/run/ckpt", keep=3)
  ckpt.save(step, state, {"data": loader_position, "config": cfg_dict})   # returns at once (async)
  ...
  abstract = jax.eval_shape(init_fn, rng)                      # + .sharding on every leaf
  restored = ckpt.restore(abstract)                            # newest checkpoint that reads back
  if restored is not None:
    step, state, extra = restored
  ckpt.close()

What is on disk (Orbax 0.12.8, local file system)::

  <directory>/
    <step>/                          one committed checkpoint, named by its step
      _CHECKPOINT_METADATA           step metadata (init/commit timestamps)
      commit_success.txt             written just before the commit rename
      state/                         the pytree: OCDBT/zarr (manifest.ocdbt, d/, ocdbt.process_0/…)
      extra/metadata                 the JSON ``extra`` dict
      digest/metadata                per leaf of ``state``: two uint32 checksums of its bits
    <step>.orbax-checkpoint-tmp/     a save in flight, or one cut short: never a step
    <step>.corrupt-<time>/           a checkpoint that failed to restore, moved aside (see restore)

A save writes into ``<step>.orbax-checkpoint-tmp`` and commits by renaming it to ``<step>``, so an
interrupted save never looks like a checkpoint. ``latest_step``/``restore`` additionally require the
``commit_success.txt`` marker, so a step directory that appeared by other means (a copy cut short, a
foreign writer) is not trusted either.

Integrity: Orbax verifies neither the array files nor their values, so a flipped bit in a data
file restores silently. Each save therefore writes a digest of the state (per leaf, the wrapping
uint32 sum of its words and the sum weighted by odd position factors, computed on the devices, so
sharded and multi-host states need no gather), and ``restore`` recomputes it: a mismatch makes that
step unreadable (the warning names it and the leaves that differ), so the older one is tried and
the bad one moved aside as for any other failure. A single flipped bit always changes both sums.
Checkpoints without a digest (written before it existed) restore with an info line.

Typed PRNG keys (``jax.random.key``) are saved natively by Orbax (the key data plus the key
implementation in the array metadata) and come back as typed keys of the same implementation.

``extra`` travels as JSON: tuples come back as lists and dict keys as strings.

Multi-process use: every process must call ``save``/``restore`` (Orbax synchronises them), but the
corruption fallback has only been exercised in a single process; moving a bad checkpoint aside is
done by process 0 only.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

_STATE = "state"
_EXTRA = "extra"
_DIGEST = "digest"
# Orbax's commit marker (``orbax.checkpoint.path.atomicity_types.COMMIT_SUCCESS_FILE``).
_COMMIT_MARKER = "commit_success.txt"
_QUARANTINE_SUFFIX = ".corrupt"
# Failure reasons (TensorStore errors quote whole specs) can run to pages: keep warnings short.
_REASON_CHARS = 300


class CheckpointRestoreWarning(UserWarning):
  """A checkpoint could not be restored and an older one is tried instead."""


class Checkpointer:
  """Saves and restores ``(step, state, extra)`` with Orbax; see the module docstring.

  Args:
    directory: root directory of the checkpoints; created if missing. Must be writable.
    keep: number of most recent checkpoints kept on disk; older ones are deleted after each save.
    async_save: write in a background thread; ``save`` returns once the arrays are copied to host.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self._directory = epath.Path(directory)
    _ensure_writable(self._directory)
    self._name_format = ocp.step.standard_name_format()
    self._manager = ocp.CheckpointManager(
      self._directory,
      options=ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
        enable_async_checkpointing=async_save,
        create=False,  # done (and checked) above
      ),
    )
    self._closed = False

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def save(self, step: int, state: Any, extra: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves ``state`` (a pytree of jax arrays, possibly sharded) and ``extra`` (JSON) at ``step``.

    Returns at once when ``async_save``; the checkpoint is committed in the background (``wait``).
    Returns False and saves nothing if a checkpoint for ``step`` already exists (committed or in
    flight), or, unless ``force``, if ``step`` is not newer than the latest saved step.
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    if not isinstance(extra, Mapping):
      raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
      json.dumps(extra)
    except (TypeError, ValueError) as e:
      raise TypeError(f"extra must be JSON-serialisable: {e}") from e
    if self._step_exists(step):
      logging.warning(
        "Checkpoint for step %d already exists in %s; not saved again.", step, self._directory
      )
      return False
    items = {
      _STATE: ocp.args.StandardSave(state),
      _EXTRA: ocp.args.JsonSave(dict(extra)),
      _DIGEST: ocp.args.JsonSave(digest(state)),
    }
    args = ocp.args.Composite(**items)
    try:
      return bool(self._manager.save(step, args=args, force=force))
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      logging.warning(
        "Checkpoint for step %d already exists in %s; not saved again.", step, self._directory
      )
      return False

  def latest_step(self) -> int | None:
    """The newest committed step on disk (saves still in flight are not counted), or None."""
    steps = [s for s, path in self._finalized_steps() if _is_committed(path)]
    return max(steps) if steps else None

  def restore(
    self, abstract_state: Any, step: int | None = None
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores ``(step, state, extra)``, with ``state`` laid out as ``abstract_state`` asks.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` set (or of jax arrays,
        whose shape/dtype/sharding are used); the restored arrays get exactly these shardings.
      step: the step to restore; None for the newest checkpoint that reads back. When that one
        fails (a file missing or truncated, unreadable metadata, no commit marker), a
        ``CheckpointRestoreWarning`` names it and the next older one is tried; once an older one
        restores, the failed newer ones are moved aside to ``<step>.corrupt-<time>`` so that
        ``latest_step`` and later saves at those steps behave.

    Returns:
      ``(step, state, extra)``, or None if there is no checkpoint at all (``step=None`` only).

    Raises:
      RuntimeError: checkpoints exist but none restores (lists every failure; nothing is moved), or
        the explicitly requested ``step`` fails to restore.
      FileNotFoundError: the explicitly requested ``step`` has no committed checkpoint.
    """
    self.wait()  # a restore must see the saves already issued, and not race them
    abstract_state = _as_abstract(abstract_state)
    finalized = self._finalized_steps()
    if step is not None:
      step = int(step)
      committed = {s for s, path in finalized if _is_committed(path)}
      if step not in committed:
        raise FileNotFoundError(
          f"No committed checkpoint for step {step} in {self._directory} "
          f"(committed steps: {sorted(committed)})"
        )
      try:
        return (step, *self._restore_step(step, abstract_state))
      except Exception as e:
        raise RuntimeError(
          f"Checkpoint step {step} in {self._directory} failed to restore: {_reason(e)}"
        ) from e

    if not finalized:
      return None
    failures: list[tuple[int, epath.Path, str]] = []
    for s, path in sorted(finalized, reverse=True):
      if not _is_committed(path):
        reason = f"no {_COMMIT_MARKER} (incomplete or foreign write)"
      else:
        try:
          state, extra = self._restore_step(s, abstract_state)
        except Exception as e:  # corruption shows up as many exception types
          reason = _reason(e)
          logging.warning(
            "Checkpoint step %d in %s failed to restore.", s, self._directory, exc_info=True
          )
        else:
          if failures:
            self._quarantine([path for _, path, _ in failures])
          return s, state, extra
      failures.append((s, path, reason))
      msg = f"Checkpoint step {s} in {self._directory} is unreadable, trying an older one: {reason}"
      logging.warning("%s", msg)
      warnings.warn(msg, CheckpointRestoreWarning, stacklevel=2)
    listing = "\n".join(f"  step {s}: {reason}" for s, _, reason in failures)
    hint = _layout_hint(abstract_state, [reason for _, _, reason in failures])
    raise RuntimeError(f"No checkpoint in {self._directory} could be restored:\n{listing}{hint}")

  def wait(self) -> None:
    """Blocks until every save issued so far is committed (re-raises a background save error)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions, then releases Orbax's resources. Idempotent."""
    if not self._closed:
      self._closed = True
      self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -- internals ---------------------------------------------------------------------------------

  def _finalized_steps(self) -> list[tuple[int, epath.Path]]:
    """Step directories Orbax considers final (tmp directories excluded), read from disk."""
    return [(m.step, m.path) for m in self._name_format.find_all(self._directory)]

  def _step_exists(self, step: int) -> bool:
    if step in self._manager.all_steps():  # includes a save still in flight
      return True
    return (self._directory / self._name_format.build_name(step)).exists()

  def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    items = {_STATE: ocp.args.StandardRestore(abstract_state), _EXTRA: ocp.args.JsonRestore()}
    has_digest = (self._directory / self._name_format.build_name(step) / _DIGEST).exists()
    if has_digest:
      items[_DIGEST] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    extra = restored[_EXTRA]
    if not isinstance(extra, dict):
      raise ValueError(f"extra is {type(extra).__name__}, not a dict")
    if not has_digest:
      logging.info("Checkpoint step %d has no digest (an older format): not verified.", step)
    else:
      expected, actual = restored[_DIGEST], digest(restored[_STATE])
      differ = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
      if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise ValueError(f"digest mismatch (the saved data changed) in {shown}")
    return restored[_STATE], extra

  def _quarantine(self, paths: list[epath.Path]) -> None:
    """Moves failed step directories aside so Orbax no longer sees them as steps."""
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for path in paths:
        target = path.parent / f"{path.name}{_QUARANTINE_SUFFIX}-{stamp}"
        try:
          path.rename(target)
          logging.warning("Moved unreadable checkpoint %s to %s.", path, target)
        except OSError as e:
          logging.warning("Could not move unreadable checkpoint %s aside: %s", path, e)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("miras_jax.train.checkpoint.quarantine")
    self._manager.reload()


def digest(state: Any) -> dict[str, list[int]]:
  """Per leaf of ``state`` (keyed by its path): ``[Σ w_i, Σ (2i+1)·w_i]`` mod 2³² over the leaf's
  bits read as unsigned words ``w_i`` (4-byte dtypes as uint32; 1- and 2-byte ones widened; typed
  PRNG keys by their key data). Computed on the devices; only the sums come to the host."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  groups: dict = {}  # one computation per set of devices the leaves live on
  for path, leaf in leaves:
    devices = frozenset(leaf.sharding.device_set) if isinstance(leaf, jax.Array) else frozenset()
    groups.setdefault(devices, []).append((jax.tree_util.keystr(path), leaf))
  out = {}
  for group in groups.values():
    sums = jax.device_get(_digest_leaves([leaf for _, leaf in group]))
    out.update({name: [int(x) for x in s] for (name, _), s in zip(group, sums, strict=True)})
  return out


@jax.jit
def _digest_leaves(leaves: list) -> list:
  def one(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    if x.dtype.itemsize > 4:
      raise TypeError(f"digest: {x.dtype} leaves (more than 4 bytes per item) are not supported")
    words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    words = words.astype(jnp.uint32)
    # The row-major position i of each word, laid out like the words (no reshape of a sharded
    # array: explicit-sharding meshes reject it).
    sharding = jax.typeof(words).sharding
    position = jnp.zeros(words.shape, jnp.uint32)
    for axis, stride in enumerate(_strides(words.shape)):
      iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis, out_sharding=sharding)
      position = position + iota * jnp.uint32(stride)
    odd = 2 * position + 1
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * odd, dtype=jnp.uint32)])

  return [one(x) for x in leaves]


def _strides(shape: tuple[int, ...]) -> list[int]:
  """Row-major element strides of ``shape`` (mod 2³², as the positions wrap in uint32)."""
  strides, step = [], 1
  for size in reversed(shape):
    strides.append(step % 2**32)
    step *= size
  return strides[::-1]


def _ensure_writable(directory: epath.Path) -> None:
  """Creates ``directory`` if missing and checks a file can be written in it."""
  probe = directory / f".write-probe-{uuid.uuid4().hex}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"Checkpoint directory {str(directory)!r} is not writable: {e}") from e


def _is_committed(step_path: epath.Path) -> bool:
  return (step_path / _COMMIT_MARKER).exists()


def _as_abstract(tree: Any) -> Any:
  """Leaves as ``ShapeDtypeStruct`` with a sharding; raises a clear error for one without."""

  def convert(path, leaf):
    if isinstance(leaf, jax.Array):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      raise ValueError(
        f"abstract_state leaf {jax.tree_util.keystr(path)} has no sharding; give every "
        "jax.ShapeDtypeStruct a sharding (e.g. from jax.eval_shape plus the mesh's NamedShardings)"
      )
    return leaf

  return jax.tree_util.tree_map_with_path(convert, tree)


def _layout_hint(abstract_state, reasons: list[str]) -> str:
  """A hint when the failures are the two block layouts of ``scan_layers`` meeting: the run's
  parameters stacked (``stack``) and the checkpoint's one per block (``blocks``), or the reverse."""
  params = getattr(abstract_state, "params", None)
  if not isinstance(params, dict) or not any("tree structures do not match" in r for r in reasons):
    return ""
  if not any(".blocks" in r or ".stack" in r for r in reasons):  # the mismatch is elsewhere
    return ""
  if "stack" in params:
    saved, now, convert = "one per block (scan_layers=False)", "stacked", "stacked_params"
  elif "blocks" in params:
    saved, now, convert = "stacked (scan_layers=True)", "one per block", "unstacked_params"
  else:
    return ""
  return (
    f"\nThe checkpoints hold the blocks' parameters {saved} and this run's model holds them "
    f"{now}: set model.overrides.scan_layers as the saved run had it, or convert the saved "
    f"parameters with miras_jax.models.{convert}. The checkpoints are left as they are."
  )


def _reason(e: BaseException) -> str:
  text = " ".join(str(e).split())
  if len(text) > _REASON_CHARS:
    text = text[:_REASON_CHARS] + " …"
  return f"{type(e).__name__}: {text}"
