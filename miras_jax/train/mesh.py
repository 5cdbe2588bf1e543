"""Device mesh and shardings: axes ``data``, ``fsdp``, ``tensor``; parameters by logical names.

Axis types are ``Auto`` (set explicitly): the train step is one ``jax.jit`` with in/out
shardings and XLA's partitioner propagates shardings through the model. ``Explicit`` axes
(jax ≥ 0.7's default for ``make_mesh``) would need every op of the models to state its output
sharding.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")


def make_mesh(data: int, fsdp: int, tensor: int, devices=None) -> jax.sharding.Mesh:
  """A ``data × fsdp × tensor`` mesh over ``devices`` (all by default); ``data = -1`` takes the
  devices that fsdp and tensor leave."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  for name, size in (("fsdp", fsdp), ("tensor", tensor)):
    if size < 1:
      raise ValueError(f"mesh.{name} must be >= 1; got {size}")
  if data == -1:
    if n % (fsdp * tensor):
      raise ValueError(
        f"mesh: fsdp × tensor = {fsdp * tensor} does not divide the {n} devices available"
      )
    data = n // (fsdp * tensor)
  if data < 1 or data * fsdp * tensor != n:
    raise ValueError(
      f"mesh data × fsdp × tensor = {data} × {fsdp} × {tensor} = {data * fsdp * tensor} does not "
      f"match the {n} devices available"
    )
  return jax.make_mesh((data, fsdp, tensor), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def data_parallel_size(mesh) -> int:
  """How many ways the batch is split: over ``data`` and ``fsdp``."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(batch_size: int, grad_accum: int, mesh) -> None:
  """Each micro-batch must split evenly over the data-parallel devices (data × fsdp)."""
  micro, dp = batch_size // grad_accum, data_parallel_size(mesh)
  if micro % dp:
    raise ValueError(
      f"train.batch_size / train.grad_accum = {micro} is not divisible by the data-parallel size "
      f"data × fsdp = {dp}"
    )


def batch_sharding(mesh) -> NamedSharding:
  """Batch dim over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def logical_to_sharding(logical: P, shape, mesh, rules) -> NamedSharding:
  """Maps a logical ``PartitionSpec`` to mesh axes by ``rules``; a dim the mesh axis does not
  divide, or a mesh axis already used by an earlier dim, stays replicated."""
  table = dict(rules)
  used, spec = set(), []
  for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape, strict=True):
    axis = table.get(name) if name is not None else None
    if axis is None or axis in used or size % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return NamedSharding(mesh, P(*spec))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def tree_shardings(abstract, logical_specs, mesh, rules):
  """Shardings for a pytree of ``ShapeDtypeStruct`` given its logical specs (same structure)."""
  return jax.tree.map(
    lambda spec, x: logical_to_sharding(spec, x.shape, mesh, rules),
    logical_specs,
    abstract,
    is_leaf=lambda s: isinstance(s, P),
  )


def bytes_per_device(tree) -> float:
  """Bytes each device holds of a pytree of sharded (abstract) arrays, on average."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    shards = math.prod(
      x.sharding.mesh.shape[a] for a in jax.tree.leaves(tuple(x.sharding.spec)) if a is not None
    )
    total += np.prod(x.shape) * np.dtype(x.dtype).itemsize / shards
  return total
