"""Command line: `python -m alpeft_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.x=y ...]`.

Before any compute the whole run is checked: the config file's arguments, every `--config.` key and value
(a misspelt key is one line with the closest real one), then `preflight.check` (data, weights, label schedule,
workdir). Every problem is printed as one `error:` line and the command exits with status 2, having written
nothing. Rerunning the same command with the same workdir resumes the run; `--labels=FILE` hands in the labels
a human filled in (oracle=file). `--settings` lists every setting with its default and comment.

The log shows the rounds (`--verbosity=1`: each training epoch too); a finished run ends with one line naming its
rounds, labels and final model (`workdir.finished_line`). Ctrl-C stops with one line; the state written so far is
the resume point, so the same command continues.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from alpeft_jax import config as config_lib
from alpeft_jax import schema

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, caches and results.")
_LABELS = flags.DEFINE_string("labels", None, "A filled-in labels CSV for the pending round (oracle=file).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "Continue a workdir made with a different config.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with what the environment says (Cloud TPU pods, "
    "Slurm, Open MPI, JAX_COORDINATOR_ADDRESS).",
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0, for a multi-process run by hand.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")
flags.DEFINE_bool(
    "settings",
    False,
    "Print every setting (--config.KEY=VALUE) with its default, comment and "
    "accepted values, then exit (needs no --config or --workdir).",
)
flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
    """Keep INFO lines from the project; libraries (Orbax, JAX) only warn."""
    import logging as std_logging

    class _Filter(std_logging.Filter):
        def filter(self, record: std_logging.LogRecord) -> bool:
            return record.levelno >= std_logging.WARNING or "alpeft_jax" in record.pathname

    logging.get_absl_handler().addFilter(_Filter())


def configure_logging() -> None:
    """INFO lines (the rounds, not the epochs) unless `--verbosity` says otherwise (1: per-epoch lines too)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)
    quiet_library_logs()


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


_BOOL_WORDS = ("true", "false", "t", "f", "1", "0")


def _flat_types(d: dict[str, Any], prefix: str = "") -> dict[str, type]:
    out: dict[str, type] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_types(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = type(v)
    return out


def _value_problem(key: str, kind: type, value: str) -> str | None:
    if kind is bool:
        ok = value.lower() in _BOOL_WORDS
        expected = "true or false"
    elif kind is int:
        ok, expected = value.lstrip("+-").isdigit(), "an integer"
    elif kind is float:
        try:
            float(value)
            ok = True
        except ValueError:
            ok = False
        expected = "a number"
    else:
        return None
    return None if ok else f"--config.{key}={value}: expected {expected}"


def command_line_problems(argv: list[str]) -> list[str]:
    """Problems with `--config` and the `--config.x=y` overrides in argv, one line each, before absl parses them."""
    spec = None
    for i, a in enumerate(argv[1:], start=1):
        if a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith("--config="):
            spec = a.split("=", 1)[1]
    if not spec:
        return []  # absl reports the missing flag
    try:
        file_config = config_lib.load_config_file(spec)
    except (FileNotFoundError, ValueError, SyntaxError, ImportError, AttributeError, TypeError) as e:
        return [line for line in str(e).splitlines() if line.strip()] or [f"{spec}: {type(e).__name__}"]
    types = _flat_types(file_config.to_dict())
    problems = []
    for i, a in enumerate(argv[1:], start=1):
        negated = a.startswith("--noconfig.")
        if not (a.startswith("--config.") or negated):
            continue
        key, has_value, value = a.split(".", 1)[1].partition("=")
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1, cutoff=0.6)
            hint = (
                f"; did you mean --config.{close[0]}?"
                if close
                else "; `python -m alpeft_jax.main --settings` lists every key with its default"
            )
            problems.append(f"--config.{key}: no such config key{hint}")
            continue
        if negated or (not has_value and types[key] is bool):
            continue
        if not has_value:
            if i + 1 >= len(argv):
                problems.append(f"--config.{key} needs a value")
                continue
            value = argv[i + 1]
        problem = _value_problem(key, types[key], value)
        if problem:
            problems.append(problem)
    return problems


def _fail(problems: list[str]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail([str(e).splitlines()[0]])
        raise  # unreachable: _fail exits


def main(argv: list[str]) -> None:
    """Check the whole run, then run the active-learning loop of the given config in the workdir."""
    initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from alpeft_jax import preflight

    del argv
    config = _CONFIG.value
    run_dir = _WORKDIR.value or ""  # a required flag
    spec = config_flags.get_config_filename(flags.FLAGS["config"])  # "path[:args]", as given
    config.name = config_lib.rename_after_overrides(config_lib.load_config_file(spec), config)
    file_args = spec.partition(":")[2].split(",")
    problems = preflight.check(
        config,
        run_dir,
        allow_config_change=_ALLOW.value,
        runlocal="runlocal" in [a.strip().partition("=")[0] for a in file_args],
    )
    if problems:
        _fail(problems)
    from alpeft_jax import loop
    from alpeft_jax.convert.common import CheckpointError
    from alpeft_jax.oracles import LabelFileError
    from alpeft_jax.parallel import is_leader

    configure_logging()
    try:
        run = loop.Run(config, run_dir, labels_file=_LABELS.value, allow_config_change=_ALLOW.value)
        results = run.run()
    except (LabelFileError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as e:
        _fail([str(e)])
    except KeyboardInterrupt:
        # Every phase is recorded before the next starts (workdir.py): the same command resumes where this stopped.
        print("interrupted; the run's state is saved, and the same command resumes it", file=sys.stderr)
        sys.exit(130)
    if results and is_leader():
        print(result_line(results[-1], run_dir))
    if run.finished and is_leader():
        print(run.finished)  # the run's last line


def result_line(last: dict[str, Any], run_dir: str) -> str:
    """The line the command prints after its last round: labels, and the test or cv accuracy and ECE it measured."""
    from alpeft_jax import workdir

    what = f"{last['cv_folds']}-fold cv" if last.get("evaluation") == "cv" else "test"  # never cv as a test figure
    return (
        f"round {last['round']}: {last['n_labeled']} labels, {what} accuracy {100 * last['accuracy']:.2f}%, "
        f"{what} ECE {100 * last['ece']:.2f}% — results in {run_dir}/{workdir.RESULTS_FILE}"
    )


def settings_help() -> str:
    """Every setting with its default, comment and accepted values (`--settings`), from `alpeft_jax.schema`."""
    from alpeft_jax import preflight

    return "\n".join(
        [
            "Settings: --config.KEY=VALUE overrides a config file's value; the defaults are config.base()'s "
            "(alpeft_jax/schema.py declares them; configs/*.py change some).",
            *schema.help_lines(preflight.strategy_names()),
        ]
    )


def run_cli(argv: list[str] | None = None) -> None:
    """The command line: argument checks (exit 2 with one line per problem), then absl and `main`."""
    argv = list(sys.argv if argv is None else argv)
    if "--settings" in argv[1:]:
        print(settings_help())
        return
    problems = command_line_problems(argv)
    if problems:
        _fail(problems)
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_cli()
