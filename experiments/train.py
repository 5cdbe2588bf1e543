"""Training entry point (absl flags; the logic lives in miras_jax.train).

  python -m experiments.train --config=configs/mqar.py --workdir=/tmp/mqar [--config.train.steps=N]

Multi-host (TPU pods, GPU clusters): every process runs the same command; JAX's distributed runtime
is initialised from the environment (TPU, SLURM, …) or from --coordinator_address,
--num_processes and --process_id.
"""

from absl import app, flags
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax

  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  from miras_jax.train.loop import train

  train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
