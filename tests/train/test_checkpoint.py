"""``miras_jax.train.checkpoint.Checkpointer``: Orbax round trips, retention, atomicity, corruption.

- Bit-exact round trip of float32/int32/bfloat16 arrays, typed PRNG keys (two implementations),
  nested dicts/tuples, an optax state and the JSON ``extra``; async saves then ``wait``.
- ``keep`` bounds the step directories on disk; saving an existing step is a no-op.
- Orbax commits by renaming ``<step>.orbax-checkpoint-tmp`` to ``<step>``: a tmp directory, even a
  complete one, and a step directory without ``commit_success.txt`` are never restored.
- A corrupted newest checkpoint (data file truncated or deleted, metadata garbled, bits flipped in
  a data file: caught by the digest) gives a ``CheckpointRestoreWarning`` and the previous one;
  none readable gives a RuntimeError. The digest equals a numpy computation of its definition.
- Arrays sharded over a (2, 4) mesh restore into the same, a replicated and a different sharding.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import stat
import subprocess
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from miras_jax.train.checkpoint import Checkpointer, CheckpointRestoreWarning, digest

# When one array read fails (a corrupted checkpoint), Orbax leaves the other read coroutines
# un-awaited; pytest reports them when they are garbage collected. Collect them inside the test
# (the fixture below) so that this filter applies, rather than at the end of the session.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_orbax_coroutines():
  yield
  gc.collect()


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax 0.12.8's temporary directory suffix
COMMIT_MARKER = "commit_success.txt"


def _cpu0():
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _abstract(tree, sharding=None):
  """ShapeDtypeStructs of ``tree``, with each leaf's own sharding or the given one."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree
  )


def _small_state(seed: int = 0):
  # 16 KiB of incompressible data: above OCDBT's 1 KiB inline limit, so it gets its own data file.
  return {"w": jax.random.normal(jax.random.key(seed), (64, 64)), "step": jnp.int32(seed)}


def _step_dirs(directory) -> list[str]:
  return sorted(
    (p for p in os.listdir(directory) if p.isdigit() and os.path.isdir(directory / p)), key=int
  )


def _save_steps(directory, steps, **kwargs) -> Checkpointer:
  ckpt = Checkpointer(str(directory), async_save=False, **kwargs)
  for s in steps:
    assert ckpt.save(s, _small_state(s), {"pos": s})
  return ckpt


def _assert_restored(result, step):
  assert result is not None
  got_step, state, extra = result
  assert got_step == step
  chex.assert_trees_all_equal(state, jax.device_get(_small_state(step)))
  assert extra == {"pos": step}


# -- round trip ------------------------------------------------------------------------------------


def test_round_trip_bit_exact(tmp_path):
  params = {
    "dense": {"kernel": jax.random.normal(jax.random.key(1), (5, 7)), "bias": jnp.arange(7.0)},
    "embed": jax.random.normal(jax.random.key(2), (11, 3)).astype(jnp.bfloat16),
  }
  opt_state = optax.adamw(1e-3).init(params)  # namedtuples and an EmptyState
  state = {
    "params": params,
    "opt_state": opt_state,
    "step": jnp.int32(123),
    "counts": jnp.array([-(2**31), -1, 0, 2**31 - 1], jnp.int32),
    "specials": jnp.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], jnp.float32),
    "rng": jax.random.key(7),
    "rngs": (jax.random.split(jax.random.key(8), 3), jax.random.key(9, impl="rbg")),
  }
  extra = {"data": {"epoch": 2, "offset": 4096}, "config": {"lr": 1e-3, "name": "moneta"}}

  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:  # async by default
    assert ckpt.save(123, state, extra)
    ckpt.wait()
    assert ckpt.latest_step() == 123
    got_step, got, got_extra = ckpt.restore(_abstract(state))

  assert got_step == 123
  assert got_extra == extra
  assert jax.tree.structure(got) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape
    if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(a) == jax.random.key_impl(b)
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))  # bit-exact: NaN, -0.0
  # The restored keys are usable as keys.
  jax.random.normal(got["rngs"][1], (2,))


def test_restore_explicit_step_and_missing_step(tmp_path):
  ckpt = _save_steps(tmp_path, [1, 2])
  abstract = _abstract(_small_state())
  _assert_restored(ckpt.restore(abstract, step=1), 1)
  with pytest.raises(FileNotFoundError, match="step 5"):
    ckpt.restore(abstract, step=5)
  ckpt.close()


def test_empty_directory_returns_none_and_is_created(tmp_path):
  directory = tmp_path / "a" / "b"
  ckpt = Checkpointer(str(directory))
  assert directory.is_dir()
  assert ckpt.latest_step() is None
  assert ckpt.restore(_abstract(_small_state())) is None
  ckpt.close()


def test_abstract_state_without_sharding_is_rejected(tmp_path):
  ckpt = _save_steps(tmp_path, [1])
  abstract = jax.eval_shape(_small_state)  # no shardings
  with pytest.raises(ValueError, match="has no sharding"):
    ckpt.restore(abstract)
  ckpt.close()


# -- retention, async, duplicates ------------------------------------------------------------------


def test_keep_n_deletes_older_checkpoints(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  for s in range(1, 6):
    assert ckpt.save(s, _small_state(s), {"pos": s})
  ckpt.wait()
  assert _step_dirs(tmp_path) == ["4", "5"]
  assert ckpt.latest_step() == 5
  ckpt.close()
  assert _step_dirs(tmp_path) == ["4", "5"]
  assert not [p for p in os.listdir(tmp_path) if TMP_SUFFIX in p]


def test_async_save_same_step_twice(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=True)
  assert ckpt.save(3, _small_state(3), {"pos": 3})
  assert not ckpt.save(3, _small_state(99), {"pos": 99})  # in flight: no-op
  assert not ckpt.save(3, _small_state(99), {"pos": 99}, force=True)
  ckpt.wait()
  assert not ckpt.save(3, _small_state(99), {"pos": 99}, force=True)  # committed: no-op
  assert not ckpt.save(2, _small_state(2), {"pos": 2})  # older than the latest
  _assert_restored(ckpt.restore(_abstract(_small_state())), 3)
  assert ckpt.save(2, _small_state(2), {"pos": 2}, force=True)  # force writes an older step
  ckpt.wait()
  assert _step_dirs(tmp_path) == ["2", "3"]
  assert ckpt.latest_step() == 3
  ckpt.close()


def test_extra_must_be_json(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(1, _small_state(), {"bad": object()})
    assert ckpt.latest_step() is None


# -- atomicity -------------------------------------------------------------------------------------


def test_half_written_checkpoints_are_ignored(tmp_path):
  ckpt = _save_steps(tmp_path, [1, 2])
  # Orbax's own layout: the marker sits in the step directory and nothing else is in flight.
  assert (tmp_path / "2" / COMMIT_MARKER).is_file()
  # An interrupted save of step 7: complete content, but still under Orbax's tmp name.
  shutil.copytree(tmp_path / "2", tmp_path / f"7{TMP_SUFFIX}")
  # A step directory without the commit marker (e.g. a copy cut short).
  shutil.copytree(tmp_path / "2", tmp_path / "5")
  os.remove(tmp_path / "5" / COMMIT_MARKER)

  for c in (ckpt, Checkpointer(str(tmp_path), async_save=False)):  # live and freshly opened
    assert c.latest_step() == 2
  fresh = Checkpointer(str(tmp_path), async_save=False)
  with pytest.warns(CheckpointRestoreWarning, match=r"step 5 .*commit_success"):
    _assert_restored(fresh.restore(_abstract(_small_state())), 2)
  # The uncommitted step 5 was moved aside, so it can be saved again; the tmp dir stays ignored.
  assert _step_dirs(tmp_path) == ["1", "2"]
  assert fresh.save(5, _small_state(5), {"pos": 5})
  _assert_restored(fresh.restore(_abstract(_small_state())), 5)
  ckpt.close()
  fresh.close()


# -- corruption fallback ---------------------------------------------------------------------------


def _largest_data_file(step_dir):
  """The biggest file of the OCDBT store, i.e. the one holding the (compressed) array chunks.

  Orbax writes one OCDBT database per process (``state/ocdbt.process_<i>/``: ``manifest.ocdbt`` and
  ``d/<hash>`` data and b-tree files) and merges their b-trees into ``state/manifest.ocdbt`` +
  ``state/d/<hash>``, which point at the per-process data files. Values under 1 KiB are inlined in
  the b-tree nodes, so only the 16 KiB ``w`` gets a data file of its own.
  """
  files = [p for p in (step_dir / "state").glob("ocdbt.process_0/d/*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _corrupt(step_dir, how):
  if how == "truncate_data":
    _truncate(_largest_data_file(step_dir))
  elif how == "delete_data":
    os.remove(_largest_data_file(step_dir))
  elif how == "truncate_metadata":
    _truncate(step_dir / "state" / "_METADATA")
  elif how == "garble_extra":
    (step_dir / "extra" / "metadata").write_bytes(b"\xff{not json")
  else:
    raise ValueError(how)


@pytest.mark.parametrize(
  "how", ["truncate_data", "delete_data", "truncate_metadata", "garble_extra"]
)
def test_corrupt_latest_falls_back_with_warning(tmp_path, how):
  ckpt = _save_steps(tmp_path, [1, 2, 3])
  _corrupt(tmp_path / "3", how)
  fresh = Checkpointer(str(tmp_path), async_save=False)  # a restarted job
  with pytest.warns(CheckpointRestoreWarning, match="step 3 "):
    _assert_restored(fresh.restore(_abstract(_small_state())), 2)
  # Step 3 was moved aside: latest is 2 and the job can save step 3 again.
  assert _step_dirs(tmp_path) == ["1", "2"]
  assert [p for p in os.listdir(tmp_path) if p.startswith("3.corrupt-")]
  assert fresh.latest_step() == 2
  assert fresh.save(3, _small_state(3), {"pos": 3})
  _assert_restored(fresh.restore(_abstract(_small_state())), 3)
  ckpt.close()
  fresh.close()


def _flip_bits(path, count=3):
  """Flips one bit in each of ``count`` bytes in the middle of the file (sizes unchanged)."""
  data = bytearray(path.read_bytes())
  for i in range(count):
    data[len(data) // 2 + 7 * i] ^= 1 << (i % 8)
  path.write_bytes(bytes(data))


def test_flipped_bits_are_caught_by_the_digest(tmp_path):
  import orbax.checkpoint as ocp

  ckpt = _save_steps(tmp_path, [1, 2])
  ckpt.close()
  _flip_bits(_largest_data_file(tmp_path / "2"))
  # Orbax alone restores the flipped data without a complaint, with other values.
  raw = ocp.StandardCheckpointer().restore(tmp_path / "2" / "state", _abstract(_small_state(2)))
  assert not np.array_equal(np.asarray(raw["w"]), np.asarray(_small_state(2)["w"]))
  fresh = Checkpointer(str(tmp_path), async_save=False)
  with pytest.warns(CheckpointRestoreWarning, match=r"step 2 .*digest mismatch .*\['w'\]"):
    _assert_restored(fresh.restore(_abstract(_small_state())), 1)
  assert _step_dirs(tmp_path) == ["1"]
  assert [p for p in os.listdir(tmp_path) if p.startswith("2.corrupt-")]
  fresh.close()


def _numpy_digest(x: np.ndarray) -> list[int]:
  words = x.reshape(-1).view(f"uint{8 * x.dtype.itemsize}").astype(np.uint64)
  odd = 2 * np.arange(words.size, dtype=np.uint64) + 1
  return [int(words.sum() % 2**32), int((words * odd).sum() % 2**32)]


def test_digest_matches_numpy_and_sees_every_single_bit_flip():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5)).astype(np.float32)
  tree = {"f": jnp.asarray(x), "h": jnp.asarray(x).astype(jnp.bfloat16), "i": jnp.arange(4)}
  got = digest(tree)
  assert got["['f']"] == _numpy_digest(x)
  assert got["['h']"] == _numpy_digest(np.asarray(tree["h"]).view(np.uint16))
  assert got["['i']"] == _numpy_digest(np.arange(4, dtype=np.int32))
  assert digest({"k": jax.random.key(3)})["['k']"] == _numpy_digest(
    np.asarray(jax.random.key_data(jax.random.key(3)))
  )
  bits = x.view(np.uint32)
  for i in range(bits.size):
    for b in (0, 17, 31):
      flipped = bits.copy().reshape(-1)
      flipped[i] ^= np.uint32(1 << b)
      assert _numpy_digest(flipped.view(np.float32)) != _numpy_digest(x)
  flipped = bits.copy().reshape(-1)
  flipped[[2, 9]] ^= np.uint32(1 << 4)  # two flips that a plain sum could cancel: sign differs
  flipped[2] ^= np.uint32(0)
  assert digest({"f": jnp.asarray(flipped.view(np.float32).reshape(3, 5))})["['f']"] != got["['f']"]


def test_two_corrupt_fall_back_twice_and_none_readable_raises(tmp_path):
  ckpt = _save_steps(tmp_path, [1, 2, 3])
  abstract = _abstract(_small_state())
  _corrupt(tmp_path / "3", "truncate_data")
  _corrupt(tmp_path / "2", "delete_data")
  with pytest.warns(CheckpointRestoreWarning) as record:
    _assert_restored(ckpt.restore(abstract), 1)
  assert [str(w.message).split(" in ")[0] for w in record] == [
    "Checkpoint step 3",
    "Checkpoint step 2",
  ]
  assert _step_dirs(tmp_path) == ["1"]

  _corrupt(tmp_path / "1", "truncate_metadata")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointRestoreWarning)
    with pytest.raises(RuntimeError, match=r"(?s)No checkpoint .* could be restored.*step 1:"):
      ckpt.restore(abstract)
  assert _step_dirs(tmp_path) == ["1"]  # nothing is moved when nothing restores
  with pytest.raises(RuntimeError, match="step 1 .*failed to restore"):
    ckpt.restore(abstract, step=1)
  ckpt.close()


def test_wrong_abstract_state_does_not_move_good_checkpoints(tmp_path):
  ckpt = _save_steps(tmp_path, [1, 2])
  wrong = _abstract({"w": jnp.zeros((3, 3)), "step": jnp.int32(0)})
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointRestoreWarning)
    with pytest.raises(RuntimeError, match="could be restored"):
      ckpt.restore(wrong)
  assert _step_dirs(tmp_path) == ["1", "2"]
  ckpt.close()


# -- sharding --------------------------------------------------------------------------------------


def test_sharded_save_and_restore_into_other_shardings(tmp_path):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
  state = {
    "w": jax.device_put(
      jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16), NamedSharding(mesh, P("data", "fsdp"))
    ),
    "e": jax.device_put(
      jnp.arange(4 * 8).reshape(4, 8).astype(jnp.bfloat16), NamedSharding(mesh, P(None, "fsdp"))
    ),
    "keys": jax.device_put(jax.random.split(jax.random.key(0), 4), NamedSharding(mesh, P("fsdp"))),
    "step": jax.device_put(jnp.int32(9), NamedSharding(mesh, P())),
  }
  expected = jax.device_get({**state, "keys": jax.random.key_data(state["keys"])})
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.save(9, state, {"mesh": [2, 4]})

  def check(abstract):
    got_step, got, extra = ckpt.restore(abstract)
    assert got_step == 9 and extra == {"mesh": [2, 4]}
    for k in state:
      assert got[k].sharding.is_equivalent_to(abstract[k].sharding, got[k].ndim), k
      assert got[k].dtype == state[k].dtype, k
    chex.assert_trees_all_equal(
      jax.device_get({**got, "keys": jax.random.key_data(got["keys"])}), expected
    )

  check(_abstract(state))  # same shardings
  check(_abstract(state, NamedSharding(mesh, P())))  # fully replicated
  other = jax.make_mesh((4, 2), ("a", "b"))
  check(
    {
      "w": jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(other, P("b", "a"))),
      "e": jax.ShapeDtypeStruct((4, 8), jnp.bfloat16, sharding=NamedSharding(other, P("a"))),
      "keys": jax.ShapeDtypeStruct(
        (4,), state["keys"].dtype, sharding=NamedSharding(other, P("a"))
      ),
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=_cpu0()),
    }
  )
  ckpt.close()


# -- directory errors ------------------------------------------------------------------------------


def test_unwritable_directory_raises_value_error(tmp_path):
  # Under an existing file: not creatable, whoever runs the test.
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="file/ckpt"):
    Checkpointer(str(blocker / "ckpt"))
  with pytest.raises(ValueError, match="not writable"):
    Checkpointer(str(blocker))

  # A read-only directory. chmod does not bind root; `chattr +i` does, where the file system and
  # capabilities allow it; otherwise this part is skipped.
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
  immutable = False
  try:
    if _writable(read_only) and shutil.which("chattr"):
      immutable = (
        subprocess.run(["chattr", "+i", str(read_only)], capture_output=True).returncode == 0
      )
    if _writable(read_only):
      pytest.skip(f"cannot make a directory read-only as uid {os.geteuid()} (root ignores chmod)")
    with pytest.raises(ValueError, match=re.escape(str(read_only))):
      Checkpointer(str(read_only))
    with pytest.raises(ValueError, match="not writable"):
      Checkpointer(str(read_only / "sub"))
  finally:
    if immutable:
      subprocess.run(["chattr", "-i", str(read_only)], check=True)
    read_only.chmod(stat.S_IRWXU)


def _writable(directory) -> bool:
  probe = directory / "probe"
  try:
    probe.write_text("x")
  except OSError:
    return False
  probe.unlink()
  return True


@pytest.mark.parametrize("saved_stacked", [False, True])
def test_a_checkpoint_of_the_other_block_layout_is_named_and_kept(tmp_path, saved_stacked):
  """A run restored with the other ``scan_layers`` layout than it saved gets an error that says so
  and names the conversion; the checkpoint stays on disk."""
  from miras_jax import models
  from miras_jax.train.step import TrainState

  w = lambda s: jax.random.normal(jax.random.key(s), (64, 64))  # noqa: E731
  unrolled = {"embed": w(0), "blocks": {0: {"w": w(1)}, 1: {"w": w(2)}}}
  stacked = models.stacked_params(unrolled)
  saved, run = (stacked, unrolled) if saved_stacked else (unrolled, stacked)
  state = lambda p: TrainState(p, {"mu": p}, jnp.int32(1), jax.random.key(0))  # noqa: E731
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.save(1, state(saved), {})
  ckpt.wait()
  convert = "unstacked_params" if saved_stacked else "stacked_params"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", CheckpointRestoreWarning)
    with pytest.raises(RuntimeError, match=rf"scan_layers.*miras_jax\.models\.{convert}"):
      ckpt.restore(_abstract(state(run)))
  assert _step_dirs(tmp_path) == ["1"]
  ckpt.close()
