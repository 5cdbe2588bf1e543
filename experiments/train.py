"""Training entry point (absl flags; the logic lives in miras_jax.train).

  python -m experiments.train --config=configs/mqar.py --workdir=/tmp/mqar [--config.train.steps=N]

``--config.SECTION.KEY=VALUE`` sets a field of the config file (typed like the value it replaces);
``--config.model.overrides.FIELD=VALUE`` may set any field of the model's config class, declared in
the config file or not (``miras_jax.train.settings.apply_overrides``).

Output: the progress line, evaluations, warnings and the summary (absl/Orbax INFO lines only with
``--verbosity=0``). Exit status: 0 when the run completed or was preempted (SIGTERM, Ctrl-C; run the command again to
resume), 2 for a user error (unknown flag or key, a value out of range, an unwritable workdir: one
line on stderr; ``--traceback`` shows the full trace), 3 when training diverged (a non-finite loss
or gradient; see summary.json).

Multi-host (TPU pods, GPU clusters): every process runs the same command; JAX's distributed runtime
is initialised from the environment (TPU, SLURM, …) or from --coordinator_address,
--num_processes and --process_id.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file[:arg]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and metrics")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-host)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "call jax.distributed.initialize() even without the flags above"
)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "show the full traceback of a user error")
flags.mark_flags_as_required(["config", "workdir"])

USAGE_ERROR, DIVERGED = 2, 3
_assignments: list[tuple[str, str]] = []


def _user_error(message: str) -> None:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flags, with the ``--config.PATH=VALUE`` assignments kept for ``apply_overrides``."""
  from miras_jax.train.settings import split_assignments

  rest, assignments = split_assignments(argv)
  _assignments.extend(assignments)
  sys.argv[:] = rest  # config_flags also reads the overrides from sys.argv
  try:
    return flags.FLAGS(rest)
  except Exception as e:  # flags.Error, or the config file's own errors
    if "--traceback" in argv:
      raise
    _user_error(e)


def main(argv):
  if len(argv) > 1:
    _user_error(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # the run's own lines only; --verbosity=0 for INFO
    logging.set_verbosity(logging.WARNING)
  import jax

  from miras_jax.train.settings import apply_overrides

  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  from miras_jax.train.loop import train

  try:
    apply_overrides(_CONFIG.value, _assignments)
    summary = train(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # bad config values, unknown keys, unwritable workdir, missing data
    if _TRACEBACK.value:
      raise
    _user_error(e)
  if summary["status"] == "diverged":
    sys.exit(DIVERGED)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
