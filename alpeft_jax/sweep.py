r"""A paper table in one command: every strategy x seed of a config as its own run, resumable, then the summary.

    python -m alpeft_jax.sweep --config=configs/coop.py --args="dataset=dtd" \
        --strategies=random,entropy,badge,coreset,ours --seeds=1,2,3 --workdir=DIR [--config.KEY=VALUE ...]

Each cell is a normal run, `python -m alpeft_jax.main --config=FILE:ARGS,<strategy and seed> --workdir=DIR/<strategy>/
s<seed> --config.name=<strategy>`, so the command resumes like the driver does: a finished cell (all its rounds in
results.jsonl) is skipped, a half-done one continues from its checkpoint. Cells run seed by seed, so an
interrupted sweep has the same seeds for every strategy. At the end DIR/summary.md is
`python -m alpeft_jax.report --summary` over the finished cells (mean ± std over seeds, and the differences to
`--against`, paired by seed), DIR/curves.png their learning curves; each cell's output is in DIR/logs/.

Strategies (`--strategies`), mapped onto the config's own arguments:
- `ours`: the config's calibration-loss arm: its `ours` argument (configs/coop.py, configs/lora.py: entropy +
  the C-PEAL loss, weight 1, annealed, balanced); for a config with a `calib` argument instead (configs/demo.py,
  configs/study.py) `strategy=entropy,calib`.
- any name of alpeft_jax.strategies (random, entropy, badge, coreset, ...): the config's `strategy=` argument where
  it declares one (configs/peal.py, configs/demo.py), else `--config.al.strategy=NAME`, with no calibration loss
  unless `--args` or an override asks for it.
Seeds: the config's `seed=` argument where it declares one, else `--config.seed`. `--args` and the
`--config.KEY=VALUE` overrides apply to every cell; neither may set what the sweep sets per cell (strategy, `ours`,
`calib`, seed, name).

Devices: on a host with GPUs (CUDA_VISIBLE_DEVICES, else `nvidia-smi`; `--devices=0,1,...` names them) the GPUs are
cut into groups of `--devices_per_cell` (default 1) and each group runs one cell at a time, its process seeing
only that group. Without GPUs (a TPU VM, a CPU) the cells run one after another (`--jobs=N`: N at once on a CPU).
`--distributed` is passed to every cell (a multi-host TPU slice runs the same sweep on every host).

Every cell is checked before anything runs (the config's arguments, each override, then `preflight.check` with the
cell's workdir, which also refuses a cell started with another config); each problem is one `error:` line and the
command exits with status 2. SIGTERM or Ctrl-C stops the running cells (a cell also dies with its sweep); rerun the
same command to resume. `--dry_run` prints the plan: each cell's state (done, resume, new), device group and
command.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, NoReturn

from alpeft_jax.workdir import CONFIG_FILE, RESULTS_FILE, as_path, atomic_write, is_local

OURS = "ours"
SUMMARY_FILE = "summary.md"
LOG_DIR = "logs"
LOCK_FILE = ".sweep.lock"
# What the sweep sets per cell: `--args` and overrides must leave these alone.
_PER_CELL_ARGS = ("strategy", "ours", "calib", "seed")
_PER_CELL_KEYS = ("al.strategy", "seed", "name")


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message says what to change."""


# -- cells and their runner (also benchmarks/study.py's) ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep: its name, workdir, command line and log."""

    name: str  # e.g. "badge/s1"
    workdir: str
    argv: tuple[str, ...]
    log: str  # a local file; the cell's stdout and stderr are appended to it
    warm_key: str = ""  # cells sharing a feature cache: the first of a key runs alone before the others start


def _count_results(workdir: str) -> int:
    path = as_path(workdir) / RESULTS_FILE
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def rounds_of(workdir: str) -> int | None:
    """`al.rounds` of a run directory's config.json (None without one)."""
    import json

    path = as_path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    rounds = json.loads(path.read_text()).get("al", {}).get("rounds")
    return int(rounds) if rounds is not None else None


def finished(workdir: str, rounds: int | None = None) -> bool:
    """Whether a run directory holds all its rounds' results (`rounds`, else al.rounds of its config.json)."""
    rounds = rounds if rounds is not None else rounds_of(workdir)
    return rounds is not None and _count_results(workdir) >= rounds


def state(workdir: str) -> str:
    """'done', 'resume' (a run started there) or 'new'."""
    if finished(workdir):
        return "done"
    return "resume" if (as_path(workdir) / CONFIG_FILE).exists() else "new"


def _die_with_parent() -> None:  # in the child, before exec: SIGTERM when the sweep's process ends, even by SIGKILL
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM are still forwarded
        pass


@dataclasses.dataclass
class Outcome:
    """What became of one cell in `run_cells`."""

    cell: Cell
    status: str  # "skipped" (finished before), "ok", "failed", "unfinished" (exit 0 before its last round)
    returncode: int | None = None
    seconds: float = 0.0


def run_cells(
    cells: Sequence[Cell],
    slots: Sequence[Mapping[str, str]] = ({},),
    cwd: str | None = None,
    out: Callable[[str], None] = lambda s: print(s, flush=True),
    poll_seconds: float = 0.2,
) -> tuple[list[Outcome], int | None]:
    """Run every unfinished cell, one per slot at a time (a slot: environment variables, e.g. the GPUs it sees).

    Returns each cell's outcome and the signal that stopped the sweep (None if it ran to the end). On SIGTERM or
    SIGINT the running cells get SIGTERM and are waited for; cells not started yet stay as they are.
    """
    outcomes = {c.name: Outcome(c, "skipped") for c in cells if finished(c.workdir)}
    todo = [c for c in cells if c.name not in outcomes]
    warm = {c.warm_key for c in cells if c.warm_key and c.name in outcomes}
    warming: set[str] = set()
    running: dict[int, tuple[Cell, subprocess.Popen, float, IO[bytes]]] = {}
    stop: list[int] = []
    total, done = len(todo), 0
    out(f"{len(cells)} cells: {len(outcomes)} finished before, {total} to run, {len(slots)} at a time")

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)
        for _, proc, _, _ in running.values():
            if proc.poll() is None:
                proc.terminate()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            handlers[s] = signal.signal(s, on_signal)
    try:
        while (todo and not stop) or running:
            for slot in range(len(slots)):
                if slot in running or stop:
                    continue
                pick = next(
                    (c for c in todo if not c.warm_key or c.warm_key in warm or c.warm_key not in warming), None
                )
                if pick is None:
                    break
                todo.remove(pick)
                if pick.warm_key and pick.warm_key not in warm:
                    warming.add(pick.warm_key)
                os.makedirs(os.path.dirname(os.path.abspath(pick.log)), exist_ok=True)
                log: IO[bytes] = open(pick.log, "ab")
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"=== {stamp} sweep starts {pick.name}: {' '.join(pick.argv)}\n".encode())
                log.flush()
                env = dict(os.environ, **slots[slot])
                shown = " ".join(f"{k}={v}" for k, v in slots[slot].items())
                out(f"start {pick.name}" + (f" ({shown})" if shown else "") + f", log {pick.log}")
                proc = subprocess.Popen(
                    list(pick.argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
                running[slot] = (pick, proc, time.time(), log)
            for slot, (cell, proc, t0, done_log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                done_log.close()
                del running[slot]
                seconds = time.time() - t0
                if cell.warm_key:
                    warm.add(cell.warm_key)
                    warming.discard(cell.warm_key)
                if stop:
                    out(f"stopped {cell.name} after {seconds:.1f}s (rerun to resume it)")
                    continue
                status = "failed" if rc else ("ok" if finished(cell.workdir) else "unfinished")
                outcomes[cell.name] = Outcome(cell, status, rc, seconds)
                done += 1
                line = f"[{done}/{total}] {status} {seconds:6.1f}s {cell.name}"
                if status == "failed":
                    line += f" (exit {rc}): " + " | ".join(_tail(cell.log, 3))
                elif status == "unfinished":
                    line += " exited before its last round: " + " | ".join(_tail(cell.log, 2))
                out(line)
            if running:
                time.sleep(poll_seconds)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        for _cell, proc, _, log in running.values():  # only left on an exception: end what was started
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    return [outcomes[c.name] for c in cells if c.name in outcomes], (stop[0] if stop else None)


def _tail(path: str, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    lines = [re.sub(r".*\r", "", line).strip() for line in lines]  # progress bars: the last state of the line
    return [line for line in lines if line][-n:]


# -- devices ---------------------------------------------------------------------------------------------------
def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this host lets a process use: CUDA_VISIBLE_DEVICES when set, else those `nvidia-smi` lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def device_slots(devices: str, devices_per_cell: int | None, jobs: int | None) -> list[dict[str, str]]:
    """The environment of each slot that runs a cell: a group of GPUs each, or `jobs` plain slots without GPUs."""
    if devices == "auto":
        gpus = visible_gpus()
    elif devices == "none":
        gpus = []
    else:
        gpus = [d.strip() for d in devices.split(",") if d.strip()]
        if len(set(gpus)) != len(gpus):
            raise SweepError(f"--devices={devices} names a GPU twice")
    if not gpus:
        if devices_per_cell not in (None, 1):
            raise SweepError(
                f"--devices_per_cell={devices_per_cell} needs GPUs and this host shows none (CUDA_VISIBLE_DEVICES, "
                "nvidia-smi); on a TPU VM or a CPU the cells run one at a time (--jobs=N runs N at once on a CPU)"
            )
        if jobs is not None and jobs < 1:
            raise SweepError(f"--jobs={jobs}: give 1 or more cells at once")
        return [{} for _ in range(jobs or 1)]
    if jobs is not None:
        raise SweepError(
            f"--jobs is for hosts without GPUs; with {len(gpus)} GPUs a cell runs on each group of "
            "--devices_per_cell GPUs"
        )
    per = devices_per_cell or 1
    if per < 1 or len(gpus) % per:
        fits = [str(k) for k in range(1, len(gpus) + 1) if len(gpus) % k == 0]
        raise SweepError(
            f"--devices_per_cell={per} does not divide the {len(gpus)} GPUs ({','.join(gpus)}); use one of "
            f"{', '.join(fits)}"
        )
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i : i + per])} for i in range(0, len(gpus), per)]


# -- the sweep's cells from its command line -------------------------------------------------------------------
def _config_spec_args(path: str) -> dict[str, Any]:
    """The arguments a config file declares (its ARGS; {} for a file without any)."""
    from alpeft_jax.config import config_module

    try:
        mod = config_module(path)
    except FileNotFoundError:
        raise SweepError(f"--config={path}: no such file; the experiments are in configs/*.py") from None
    except ValueError:
        raise SweepError(f"--config={path} is not a Python config file") from None
    return dict(getattr(mod, "ARGS", {}) or {})


def arm_arguments(arm: str, declared: Mapping[str, Any], config: str) -> tuple[list[str], list[str]]:
    """(config-file arguments, `--config.` overrides) that make a cell of `config` run strategy `arm`."""
    from alpeft_jax.preflight import strategy_names

    names = strategy_names()

    def strategy(name: str) -> tuple[list[str], list[str]]:
        if "strategy" not in declared:
            return [], [f"--config.al.strategy={name}"]
        choices = declared["strategy"]
        if isinstance(choices, tuple) and name not in choices:
            raise SweepError(
                f"--strategies: {config} takes strategy={'|'.join(choices)}, not {name}; drop it or use another config"
            )
        return [f"strategy={name}"], []

    if arm == OURS:
        if isinstance(declared.get("ours"), bool):
            return ["ours"], []
        if isinstance(declared.get("calib"), bool):
            args, overrides = strategy("entropy")
            return [*args, "calib"], overrides
        raise SweepError(
            f"--strategies: {config} has no `ours` (or `calib`) argument, so `ours` means nothing there; "
            f"use strategy names ({', '.join(names)})"
        )
    if arm not in names:
        import difflib

        close = difflib.get_close_matches(arm, [*names, OURS], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SweepError(f"--strategies: unknown strategy {arm!r}{hint}; use ours or one of {', '.join(names)}")
    return strategy(arm)


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' or '1-5' (or both, '1-3,7') -> [1, 2, 3] ...; anything else is a SweepError."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
        if not m:
            raise SweepError(f"--seeds={text}: {part!r} is not an integer or a range like 1-5; e.g. --seeds=1,2,3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise SweepError(f"--seeds={text}: the range {part} is empty")
        seeds += range(lo, hi + 1)
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds={text} names a seed twice")
    return seeds


@dataclasses.dataclass(frozen=True)
class Plan:
    """The cells of a sweep with what each one runs."""

    root: str  # the sweep's directory
    cells: list[Cell]
    arms: list[str]
    seeds: list[int]
    file_args: dict[str, list[str]]  # cell name -> config-file arguments
    overrides: dict[str, list[str]]  # cell name -> `--config.` arguments (the sweep's and the user's)


def plan(
    config: str,
    args: str,
    arms: Sequence[str],
    seeds: Sequence[int],
    workdir: str,
    overrides: Sequence[str] = (),
    distributed: bool = False,
    logdir: str = "",
) -> Plan:
    """Every cell of the sweep, seed by seed; bad strategies, arguments and overrides are a SweepError first."""
    if not arms:
        raise SweepError("--strategies is empty; e.g. --strategies=random,entropy,badge,coreset,ours")
    if len(set(arms)) != len(arms):
        raise SweepError(f"--strategies={','.join(arms)} names a strategy twice")
    declared = _config_spec_args(config)
    user = [a.strip() for a in args.split(",") if a.strip()]
    taken = [a.partition("=")[0] for a in user if a.partition("=")[0] in _PER_CELL_ARGS]
    if taken:
        raise SweepError(
            f"--args sets {', '.join(taken)}; the sweep sets it per cell (--strategies=..., --seeds=...): drop it"
        )
    for given in overrides:
        key = given.split(".", 1)[1].partition("=")[0]
        if key in _PER_CELL_KEYS:
            raise SweepError(f"{given}: the sweep sets config.{key} per cell (--strategies, --seeds): drop it")
    per_arm = {arm: arm_arguments(arm, declared, config) for arm in arms}
    logdir = logdir or (
        os.path.join(workdir, LOG_DIR) if is_local(workdir) else os.path.join("sweep_logs", _slug(workdir))
    )
    cells: list[Cell] = []
    file_args: dict[str, list[str]] = {}
    cell_overrides: dict[str, list[str]] = {}
    for seed in seeds:
        for arm in arms:
            arm_args, arm_overrides = per_arm[arm]
            a = [*user, *arm_args] + ([f"seed={seed}"] if "seed" in declared else [])
            o = [*arm_overrides, *([] if "seed" in declared else [f"--config.seed={seed}"]), f"--config.name={arm}"]
            o += list(overrides)
            name = f"{arm}/s{seed}"
            cell_dir = workdir.rstrip("/") + f"/{arm}/s{seed}"
            argv = [
                sys.executable,
                "-m",
                "alpeft_jax.main",
                f"--config={config}" + (":" + ",".join(a) if a else ""),
                f"--workdir={cell_dir}",
                *o,
                *(["--distributed"] if distributed else []),
            ]
            cells.append(Cell(name, cell_dir, tuple(argv), os.path.join(logdir, f"{arm}_s{seed}.log")))
            file_args[name], cell_overrides[name] = a, o
    return Plan(workdir.rstrip("/"), cells, list(arms), list(seeds), file_args, cell_overrides)


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.rstrip("/")).strip("._") or "sweep"


def cell_config(cell: Cell) -> Any:
    """The config `alpeft_jax.main` builds for a cell: its file with its arguments, then its overrides."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["sweep", *(a for a in cell.argv[3:] if a.startswith(("--config", "--noconfig.")))]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv["config"].value


def check(p: Plan) -> tuple[Plan, list[str]]:
    """Every problem of every cell, one line each (common ones once, others naming their cells), before anything
    runs; and the plan with the cells that share a feature cache (`scoring.cache_dir`) keyed to warm it in turn."""
    from alpeft_jax import main as main_lib
    from alpeft_jax import preflight

    found: dict[str, list[str]] = {}
    cells = []
    for cell in p.cells:
        argv = ["alpeft_jax.main", *cell.argv[3:]]
        lines = main_lib.command_line_problems(argv)
        if not lines:
            c = cell_config(cell)
            cell = dataclasses.replace(cell, warm_key=c.scoring.cache_dir)
            if c.oracle != "simulated":
                lines = [f"oracle={c.oracle}: a sweep runs without a person; use --config.oracle=simulated"]
            else:
                runlocal = "runlocal" in [a.partition("=")[0] for a in p.file_args[cell.name]]
                lines = preflight.check(c, cell.workdir, runlocal=runlocal)
        cells.append(cell)
        for line in lines:
            found.setdefault(line, []).append(cell.name)
    out = []
    for line, names in found.items():
        out.append(line if len(names) == len(p.cells) else f"{', '.join(names)}: {line}")
    return dataclasses.replace(p, cells=cells), out


# -- the summary -----------------------------------------------------------------------------------------------
def default_against(arms: Sequence[str]) -> list[str]:
    """The groups the summary differences against by default: random and entropy, where the sweep has them."""
    return [a for a in ("random", "entropy") if a in arms]


def summary(p: Plan, against: Sequence[str], command: str = "") -> str | None:
    """DIR/summary.md (and DIR/curves.png) from the finished cells, as `report --summary` writes them; None if none."""
    from alpeft_jax import report

    dirs = [c.workdir for c in sorted(p.cells, key=lambda c: p.arms.index(c.name.split("/")[0])) if finished(c.workdir)]
    if not dirs:
        return None
    by_seed = report.group_runs_by_seed(dirs)
    text = report.summary_text(by_seed, against=[a for a in against if a in by_seed])
    root = p.root
    n = len(p.cells)
    head = [f"<!-- written by: {command} -->"] if command else []
    head += [f"{len(dirs)} of {n} cells finished." if len(dirs) < n else f"All {n} cells finished.", ""]
    body = "\n".join([*head, text]) + "\n"
    atomic_write(as_path(root) / SUMMARY_FILE, body)
    curves = as_path(root) / "curves.png"
    if is_local(root):
        report.plot_curves(report.group_runs(dirs), str(curves))
    else:  # the plot is drawn locally, then uploaded
        with tempfile.TemporaryDirectory() as tmp:
            local = report.plot_curves(report.group_runs(dirs), os.path.join(tmp, "curves.png"))
            with open(local, "rb") as f:
                curves.write_bytes(f.read())
    return body


# -- command line ----------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A SweepError: `main` prints it as one line and returns 2."""
        raise SweepError(message)


def _lock(workdir: str) -> IO[str] | None:
    """Hold DIR/.sweep.lock while the sweep runs (local DIR); a second sweep of the same DIR is refused."""
    if not is_local(workdir):
        return None  # object stores have no locks; a TPU slice runs the same sweep on every host on purpose
    os.makedirs(workdir, exist_ok=True)
    f = open(os.path.join(workdir, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise SweepError(f"another sweep (pid {pid}) is running in {workdir}; wait for it or stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def parse_command_line(argv: Sequence[str]) -> tuple[argparse.Namespace, Plan, list[dict[str, str]], list[str]]:
    """(flags, the plan, the device slots, the summary's reference groups) of a command line; SweepError if bad."""
    p = _Parser(prog="python -m alpeft_jax.sweep", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--config", required=True, help="the experiment file, e.g. configs/coop.py")
    p.add_argument("--args", default="", help="the config file's arguments for every cell, e.g. dataset=dtd")
    p.add_argument("--strategies", required=True, help="comma-separated, e.g. random,entropy,badge,coreset,ours")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated integers or ranges: 1,2,3 or 1-10")
    p.add_argument("--workdir", required=True, help="the sweep's directory: DIR/<strategy>/s<seed> per cell")
    p.add_argument("--against", default=None, help="groups the summary differences against (default: random,entropy)")
    p.add_argument("--devices", default="auto", help="auto | none | comma-separated GPU ids")
    p.add_argument("--devices_per_cell", type=int, default=None, help="GPUs per cell (default 1)")
    p.add_argument("--jobs", type=int, default=None, help="without GPUs: cells at once (default 1)")
    p.add_argument("--distributed", action="store_true", help="pass --distributed to every cell (TPU pod slices)")
    p.add_argument("--logdir", default="", help="the cells' logs (default DIR/logs; ./sweep_logs for gs:// DIRs)")
    p.add_argument("--dry_run", action="store_true", help="print the plan and exit")
    flags_, rest = p.parse_known_args(list(argv))
    overrides = [a for a in rest if a.startswith(("--config.", "--noconfig."))]
    bad = [a for a in rest if a not in overrides]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (cell settings go as --config.KEY=VALUE)")
    unvalued = [a for a in overrides if a.startswith("--config.") and "=" not in a]
    if unvalued:
        p.error(f"{unvalued[0]}: write --config.KEY=VALUE (one argument)")
    slots = device_slots(flags_.devices, flags_.devices_per_cell, flags_.jobs)
    sweep = plan(
        flags_.config,
        flags_.args,
        [s.strip() for s in flags_.strategies.split(",") if s.strip()],
        parse_seeds(flags_.seeds),
        flags_.workdir,
        overrides,
        flags_.distributed,
        flags_.logdir,
    )
    against = default_against(sweep.arms) if flags_.against is None else [a for a in flags_.against.split(",") if a]
    unknown = [a for a in against if a not in sweep.arms]
    if unknown:
        raise SweepError(f"--against {','.join(unknown)}: not among --strategies={','.join(sweep.arms)}")
    return flags_, sweep, slots, against


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: check every cell, run the unfinished ones, write the summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags_, sweep, slots, against = parse_command_line(argv)
        sweep, found = check(sweep)
    except (SweepError, ValueError, FileNotFoundError) as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if found:
        for line in found:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if flags_.dry_run:
        for i, cell in enumerate(sweep.cells):
            env = " ".join(f"{k}={v}" for k, v in slots[i % len(slots)].items())
            print(f"{state(cell.workdir):6} {cell.name}  {env + ' ' if env else ''}" + " ".join(cell.argv[1:]))
        print(f"{len(slots)} cell(s) at a time; summary: {flags_.workdir.rstrip('/')}/{SUMMARY_FILE}")
        return 0
    try:
        lock = _lock(flags_.workdir)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        outcomes, stopped = run_cells(sweep.cells, slots)
    finally:
        if lock is not None:
            lock.close()
    if stopped is not None:
        print(f"stopped by signal {stopped}; rerun the same command to resume", file=sys.stderr)
        return 128 + stopped
    command = "python -m alpeft_jax.sweep " + " ".join(argv)
    text = summary(sweep, against, command)
    if text:
        print(f"\n{text}\nsummary: {flags_.workdir.rstrip('/')}/{SUMMARY_FILE}")
    bad_cells = [o for o in outcomes if o.status in ("failed", "unfinished")]
    if bad_cells:
        print(f"{len(bad_cells)} cell(s) did not finish: " + ", ".join(o.cell.name for o in bad_cells), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
