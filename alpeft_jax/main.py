"""Command line: `python -m alpeft_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.x=y ...]`.

The config file is locked: a misspelt `--config.` key is an error. Rerunning the same command with the same
workdir resumes the run; `--labels=FILE` hands in the labels a human filled in (oracle=file).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, caches and results.")
_LABELS = flags.DEFINE_string("labels", None, "A filled-in labels CSV for the pending round (oracle=file).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "Continue a workdir made with a different config.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with what the environment says (TPU pods, Slurm, "
    "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, for a multi-process run by hand.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
    """Keep INFO lines from the project; libraries (Orbax, JAX) only warn."""
    import logging as std_logging

    class _Filter(std_logging.Filter):
        def filter(self, record: std_logging.LogRecord) -> bool:
            return record.levelno >= std_logging.WARNING or "alpeft_jax" in record.pathname

    logging.get_absl_handler().addFilter(_Filter())


def initialize_distributed(
    from_env: bool, coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Join a multi-process run (before any other JAX call): from the environment, or by hand."""
    by_hand = coordinator is not None or num_processes is not None or process_id is not None
    if not (from_env or by_hand):
        return
    import jax

    if by_hand:
        if coordinator is None or num_processes is None or process_id is None:
            raise app.UsageError("--coordinator, --num_processes and --process_id go together; give all three.")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    """Run the active-learning loop of the given config in the workdir."""
    del argv
    initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from alpeft_jax import loop
    from alpeft_jax.convert.common import CheckpointError
    from alpeft_jax.oracles import LabelFileError

    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    try:
        results = loop.run(_CONFIG.value, _WORKDIR.value, labels_file=_LABELS.value,
                           allow_config_change=_ALLOW.value)
    except (LabelFileError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if results:
        last = results[-1]
        print(f"round {last['round']}: {last['n_labeled']} labels, accuracy {100 * last['accuracy']:.2f}%, "
              f"ECE {100 * last['ece']:.2f}% — results in {_WORKDIR.value}/results.jsonl")


if __name__ == "__main__":
    app.run(main)
