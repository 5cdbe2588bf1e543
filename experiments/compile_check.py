r"""Ahead-of-time compile check of a run's train step on a fake CPU mesh: does it shard and fit?

  python -m experiments.compile_check --config=configs/moneta.py:340m --mesh=data:4,fsdp:2
  python -m experiments.compile_check --config=configs/mqar.py --mesh=data:2,fsdp:2,tensor:2 \
    --config.train.batch_size=8

Builds the mesh (``data × fsdp × tensor`` fake CPU devices: ``XLA_FLAGS`` and ``JAX_PLATFORMS``
are set before jax is imported), the abstract sharded train state (``miras_jax.train.loop.build``)
and an abstract global batch (``train.batch_size`` × ``data.pack_len``, or × MQAR's
``data.options.seq_len``), then lowers and compiles the jitted, donated train step exactly as the
training loop does. Nothing is allocated or run and no dataset is prepared. Prints one JSON object:
the model and its parameter count, the mesh, the per-device bytes of the parameters and optimizer
state (from their shardings), XLA's ``memory_analysis()`` of the compiled step (per device) and the
lowering and compile times (``miras_jax.train.aot.compile_step`` does the work).

``--mesh``: comma-separated ``axis:size`` with axes ``data``, ``fsdp``, ``tensor`` (sizes >= 1; an
axis left out is 1). ``--config.x.y=v`` overrides the config as for ``experiments.train``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

AXES = ("data", "fsdp", "tensor")

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file[:arg]", lock_config=True)
_MESH = flags.DEFINE_string(
  "mesh", None, "the fake device mesh, e.g. data:4,fsdp:2[,tensor:1] (an axis left out is 1)"
)
flags.mark_flags_as_required(["config", "mesh"])

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def parse_mesh(text: str) -> dict[str, int]:
  """``"data:4,fsdp:2"`` → ``{"data": 4, "fsdp": 2, "tensor": 1}``; ValueError says what is wrong."""
  example = "expected comma-separated axis:size such as data:4,fsdp:2,tensor:1"
  if not text or not text.strip():
    raise ValueError(f"--mesh is empty; {example}")
  sizes: dict[str, int] = {}
  for part in text.split(","):
    part = part.strip()
    name, sep, value = part.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
      raise ValueError(f"--mesh={text!r}: {part!r} is not axis:size; {example}")
    if name not in AXES:
      raise ValueError(f"--mesh={text!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
    if name in sizes:
      raise ValueError(f"--mesh={text!r}: axis {name!r} given twice")
    if not re.fullmatch(r"\d+", value) or int(value) < 1:
      raise ValueError(f"--mesh={text!r}: size of {name!r} must be an integer >= 1; got {value!r}")
    sizes[name] = int(value)
  return {axis: sizes.get(axis, 1) for axis in AXES}


def _check_mesh_flag(value: str | None) -> bool:
  if value is not None:
    try:
      parse_mesh(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from e
  return True


flags.register_validator("mesh", _check_mesh_flag)


def _use_fake_cpu_devices(n: int) -> None:
  """Points jax at ``n`` fake CPU devices; must run before jax's backend starts."""
  kept = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)
  ]
  os.environ["XLA_FLAGS"] = " ".join([*kept, f"{_DEVICE_COUNT_FLAG}={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # imported by something else: its config has read the env already
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      raise RuntimeError(
        "jax's backend started before compile_check could set up the fake CPU devices"
      )
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)


_assignments: list[tuple[str, str]] = []  # the --config.PATH=VALUE flags, for apply_overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from miras_jax.train.aot import compile_step  # imports jax: after the fake devices are set
  from miras_jax.train.settings import apply_overrides

  mesh_sizes = parse_mesh(_MESH.value)
  _use_fake_cpu_devices(math.prod(mesh_sizes.values()))
  apply_overrides(_CONFIG.value, _assignments)
  report = compile_step(_CONFIG.value, mesh_sizes).report
  print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
  from miras_jax.train.settings import assignment_flags_parser

  app.run(main, flags_parser=assignment_flags_parser(_assignments))
