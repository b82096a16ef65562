#!/usr/bin/env python3
"""Cloud TPU VM launcher behind `launch/tpu_vm.sh`: create, setup, run, sweep, stop, status, logs, fetch, delete.

    TPU_NAME=al ZONE=us-central2-b ACCELERATOR=v4-8 ./launch/tpu_vm.sh create
    TPU_NAME=al ZONE=us-central2-b ACCELERATOR=v4-8 ./launch/tpu_vm.sh setup
    TPU_NAME=al ZONE=us-central2-b ACCELERATOR=v4-8 CONFIG=configs/lora.py WORKDIR=gs://b/runs/lora_s1 \\
        ./launch/tpu_vm.sh run --config.data.dir=gs://b/tfds
    TPU_NAME=al ZONE=us-central2-b ACCELERATOR=v4-8 CONFIG=configs/coop.py WORKDIR=gs://b/sweeps/coop_dtd \\
        ./launch/tpu_vm.sh sweep --args=dataset=dtd --strategies=random,entropy,badge,coreset,ours --seeds=1,2,3

Every step is a `gcloud` command; `DRY_RUN=1` prints them as a shell script instead of running them, with
`${VAR?}` in place of each variable that is not set. The number of hosts follows from ACCELERATOR alone (chips
per host by TPU generation), so a dry run needs no API call. Runs on the Python 3 of the machine that holds the
checkout (3.8 or newer); only the TPU workers need the package's own Python (>= 3.11, brought by `uv`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile

USAGE = """usage: launch/tpu_vm.sh COMMAND [ARGS...]
environment: TPU_NAME, ZONE, ACCELERATOR (v4-8 ... v6e-256); optional PROJECT, RUNTIME (else chosen by ACCELERATOR)

  create [--spot]   create the TPU VM; pod slices (more than one host) go through a queued resource
  setup             copy the checkout's HEAD to every worker (or `git clone $REPO`), and $DATA if set; install
                    Python 3.11 with uv and the package (with its [cloud] extra: gs:// workdirs) and jax[tpu]
  run [ARGS...]     start `python -m alpeft_jax.main --config=$CONFIG --workdir=$WORKDIR [--distributed] ARGS`
                    on every worker in the background (nohup), a log per worker in ~/alpeft_logs
  sweep [ARGS...]   the same with `python -m alpeft_jax.sweep --config=$CONFIG --workdir=$WORKDIR ARGS`: every
                    strategy x seed of CONFIG one after another, then $WORKDIR/summary.md (--strategies=... --seeds=...)
  stop              stop the run started last, on every worker
  status            the TPU's state and, per worker, whether the run is going and its last log lines
  logs [-f]         the last $LOG_LINES (100) lines of the run's log on worker $WORKER (0; `all` for every worker)
  fetch [DIR...]    copy results.jsonl + config.json of $WORKDIR (or DIR...) from worker 0's view (gs:// or a
                    worker-local path), make the report table and plot there, and copy them to $DEST
  delete            delete the TPU VM (or its queued resource)

Other settings: DRY_RUN=1 (print, do not run), SPOT=1, QUEUED=0|1 (default: 1 for pod slices), REPO and REF
(clone instead of copying HEAD), DATA=gs://BUCKET/DIR (setup copies it to ~/alpeft_data/DIR on every worker;
runs read it as --config.data.dir=~/alpeft_data/DIR), WEIGHTS=rn50,rn101 (setup downloads these CLIP ResNet
weights from the Hugging Face hub with `hf download` into the code directory's weights/clip-<name>, where the
C-PEAL configs read them), VENV (~/alpeft_venv), PYTHON_VERSION (3.11), RUN_NAME (the log's name; default:
WORKDIR's last part), DEST (workdirs/fetched/$TPU_NAME).
"""

# generation -> (what the accelerator size counts, how many of them one host holds, runtime image)
# v2/v3/v4/v5p sizes count TensorCores (2 per chip, 4 chips per host); v5e/v6e sizes count chips, and their
# slices of up to 8 chips are one host while larger slices are made of 4-chip hosts.
GENERATIONS = {
    "v2": ("cores", 8, "tpu-ubuntu2204-base"),
    "v3": ("cores", 8, "tpu-ubuntu2204-base"),
    "v4": ("cores", 8, "tpu-ubuntu2204-base"),
    "v5p": ("cores", 8, "v2-alpha-tpuv5"),
    "v5litepod": ("chips", 4, "v2-alpha-tpuv5-lite"),
    "v6e": ("chips", 4, "v2-alpha-tpuv6e"),
}
CHIP_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
CODE_DIR = "alpeft_jax"  # on each worker, relative to the home directory
LOG_DIR = "alpeft_logs"
# Whether the process $p is alive (a zombie whose parent has not reaped it is not).
ALIVE = 'ps -o stat= -p "$p" 2>/dev/null | grep -qv Z'
FETCH_DIR = "alpeft_fetch"
DATA_DIR = "alpeft_data"  # on each worker, beside CODE_DIR: runs read it as --config.data.dir=~/alpeft_data/NAME
# WEIGHTS=... for setup: the CLIP ResNets the C-PEAL configs read from weights/clip-<name>/open_clip_model.safetensors
# (relative to CODE_DIR, where runs start): their hub repository and files (alpeft_jax.config.CLIP_BACKBONES).
HUB_WEIGHTS = {
    "rn50": ("timm/resnet50_clip.openai", ("open_clip_model.safetensors", "open_clip_config.json")),
    "rn101": ("timm/resnet101_clip.openai", ("open_clip_model.safetensors", "open_clip_config.json")),
}


class LaunchError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Guard(str):
    """A variable that is not set, rendered as `${NAME?}` in a dry run."""

    def __new__(cls, name: str) -> Guard:
        """The placeholder text for variable `name`."""
        return super().__new__(cls, f"\0{name}\0")


_GUARD = re.compile(r"\0(\w+)\0")


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    """'v4-8' -> ('v4', 8); 'v5e-16' is read as 'v5litepod-16'."""
    m = re.fullmatch(r"(v2|v3|v4|v5p|v5e|v5litepod|v6e)-(\d+)", accelerator.strip())
    if not m:
        raise LaunchError(
            f"ACCELERATOR={accelerator!r} is not a TPU type; use one of v2/v3/v4/v5p/v5litepod/v6e-"
            "<size>, e.g. v4-8, v5litepod-16, v5p-8, v6e-8"
        )
    gen, size = m.group(1), int(m.group(2))
    gen = "v5litepod" if gen == "v5e" else gen
    counts, _, _ = GENERATIONS[gen]
    if (counts == "chips" and size not in CHIP_SIZES) or (counts == "cores" and (size < 8 or size % 8)):
        sizes = "one of " + ", ".join(str(s) for s in CHIP_SIZES) if counts == "chips" else "a multiple of 8"
        raise LaunchError(
            f"ACCELERATOR={accelerator!r}: a {gen} size counts {counts} and is {sizes} (e.g. {gen}-8, {gen}-16)"
        )
    return gen, size


def num_hosts(accelerator: str) -> int:
    """How many TPU VM hosts (workers) a slice of this type has."""
    gen, size = parse_accelerator(accelerator)
    counts, per_host, _ = GENERATIONS[gen]
    if counts == "chips" and size <= 8:
        return 1
    return max(1, size // per_host)


def runtime_for(accelerator: str) -> str:
    """The TPU VM software version for JAX on this generation."""
    return GENERATIONS[parse_accelerator(accelerator)[0]][2]


def accelerator_name(accelerator: str) -> str:
    """The type as gcloud spells it (v5e-N -> v5litepod-N)."""
    gen, size = parse_accelerator(accelerator)
    return f"{gen}-{size}"


def jax_requirement(root: str) -> str:
    """`jax[tpu]` with the version bounds of the package's own jax requirement (pyproject.toml)."""
    with open(os.path.join(root, "pyproject.toml")) as f:
        m = re.search(r'"jax\s*([<>=!~][^"]*)"', f.read())
    return "jax[tpu]" + (m.group(1).replace(" ", "") if m else "")


def render(argv: list[str]) -> str:
    """One shell line for `argv`; a guarded argument is double-quoted so that the shell expands `${NAME?}`."""
    out = []
    for a in argv:
        if _GUARD.search(a):
            escaped = re.sub(r'([\\"`$])', r"\\\1", a)
            out.append('"' + _GUARD.sub(lambda m: "${" + m.group(1) + "?}", escaped) + '"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def run_name(workdir: str) -> str:
    """A file-name-safe run name from the workdir's last part."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(workdir.rstrip("/")))).strip("._")
    return name or "run"


class Launcher:
    """Builds the gcloud commands of each subcommand from the environment, then prints or runs them."""

    def __init__(self, env: dict[str, str], root: str, out: object = None) -> None:
        self.env = env
        self.root = root
        self.dry = env.get("DRY_RUN", "") not in ("", "0")
        self.out = out or sys.stdout
        self.missing: list[str] = []

    # ----- settings
    def need(self, name: str, hint: str) -> str:
        """The value of a required variable; in a dry run a `${NAME?}` guard stands in for a missing one."""
        value = self.env.get(name, "")
        if value:
            return value
        if self.dry:
            return Guard(name)
        self.missing.append(f"{name} ({hint})")
        return ""

    def check(self) -> None:
        """Fail with one line naming every missing variable."""
        if self.missing:
            raise LaunchError("set " + "; ".join(self.missing))

    def accelerator(self) -> str:
        """ACCELERATOR, required and valid in every mode: it decides the runtime and the number of hosts."""
        acc = self.env.get("ACCELERATOR", "")
        if not acc:
            raise LaunchError(
                "set ACCELERATOR (the TPU type, e.g. v4-8, v5litepod-16, v6e-8): it decides the "
                "runtime image and the number of hosts"
            )
        return accelerator_name(acc)

    def tpu(self) -> tuple[str, list[str]]:
        """(TPU name, ['--zone=..', '--project=..'])."""
        name = self.need("TPU_NAME", "the TPU VM's name, e.g. TPU_NAME=al-v4")
        zone = self.need("ZONE", "e.g. ZONE=us-central2-b")
        flags = [f"--zone={zone}"]
        if self.env.get("PROJECT"):
            flags.append(f"--project={self.env['PROJECT']}")
        return name, flags

    def queued(self, accelerator: str) -> bool:
        """Whether the TPU is (to be) made through a queued resource: pod slices by default."""
        q = self.env.get("QUEUED", "")
        return num_hosts(accelerator) > 1 if q == "" else q not in ("0", "false", "no")

    def venv(self, sub: str = "") -> str:
        """The workers' virtual environment (VENV, default ~/alpeft_venv), or a path in it, as a remote shell word."""
        venv = self.env.get("VENV", "") or "~/alpeft_venv"
        path = (venv + "/" + sub) if sub else venv
        if path == "~" or path.startswith("~/"):  # the worker's home, expanded there
            return '"$HOME"' + shlex.quote(path[1:]) if len(path) > 1 else '"$HOME"'
        return shlex.quote(path)

    def venv_python(self) -> str:
        """The workers' interpreter, as a remote shell word."""
        return self.venv("bin/python")

    @staticmethod
    def only(command: str, args: list[str], allowed: tuple[str, ...] = ()) -> None:
        """Fail on arguments the subcommand does not take."""
        unknown = [a for a in args if a not in allowed]
        if unknown:
            takes = f"only {' '.join(allowed)}" if allowed else "no arguments"
            raise LaunchError(f"{command} takes {takes}, not {' '.join(unknown)}")

    # ----- execution
    def emit(self, argv: list[str], check: bool = True) -> int:
        """Print (dry run) or run one command."""
        if self.dry:
            print(render(argv), file=self.out)
            return 0
        try:
            rc = subprocess.call(argv)
        except FileNotFoundError:
            raise LaunchError(
                f"{argv[0]} is not on PATH"
                + (" (install the Google Cloud CLI and run `gcloud auth login`)" if argv[0] == "gcloud" else "")
            ) from None
        if rc and check:
            raise LaunchError(f"`{render(argv)[:200]}` failed with exit code {rc}")
        return rc

    def ssh(self, name: str, flags: list[str], worker: str, command: str) -> list[str]:
        """gcloud ssh running `command` on one worker or all."""
        return [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            name,
            *flags,
            f"--worker={worker}",
            f"--command={command}",
        ]

    # ----- subcommands
    def create(self, args: list[str]) -> None:
        """Create the TPU VM (a queued resource for pod slices; --spot or SPOT=1 for Spot capacity)."""
        acc = self.accelerator()
        self.only("create", args, ("--spot",))
        spot = "--spot" in args or self.env.get("SPOT", "") not in ("", "0")
        name, flags = self.tpu()
        self.check()
        runtime = self.env.get("RUNTIME") or runtime_for(acc)
        extra = ["--spot"] if spot else []
        if self.queued(acc):
            self.emit(
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "queued-resources",
                    "create",
                    f"{name}-qr",
                    f"--node-id={name}",
                    *flags,
                    f"--accelerator-type={acc}",
                    f"--runtime-version={runtime}",
                    *extra,
                ]
            )
            if not self.dry:
                print(
                    f"queued {acc} ({num_hosts(acc)} hosts) as {name}-qr; `launch/tpu_vm.sh status` shows when it "
                    "is ACTIVE, then run `launch/tpu_vm.sh setup`",
                    file=sys.stderr,
                )
        else:
            self.emit(
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "create",
                    name,
                    *flags,
                    f"--accelerator-type={acc}",
                    f"--version={runtime}",
                    *extra,
                ]
            )

    def setup_script(self, acc: str, clone: bool) -> str:
        """The shell script each worker runs: the code, uv, Python, the package and the matching jax[tpu]."""
        pyver = self.env.get("PYTHON_VERSION", "") or "3.11"
        lines = ["set -e", 'cd "$HOME"']
        if clone:
            repo = shlex.quote(self.env["REPO"])
            ref = shlex.quote(self.env.get("REF", "") or "HEAD")
            lines += [
                f"rm -rf {CODE_DIR} && git clone --quiet {repo} {CODE_DIR}",
                f"git -C {CODE_DIR} checkout --quiet {ref}",
            ]
        else:
            lines += [f"rm -rf {CODE_DIR} && mkdir {CODE_DIR}", f"tar -xzf {CODE_DIR}.tar.gz -C {CODE_DIR}"]
        data = self.env.get("DATA", "").rstrip("/")
        if data:  # datasets on every worker's disk (TFDS's array_record files are read locally)
            dest = f"{DATA_DIR}/{os.path.basename(data)}"
            lines += [f"mkdir -p {dest}", f"gcloud storage rsync --recursive {shlex.quote(data)} {shlex.quote(dest)}"]
        lines += [
            # uv brings its own Python: the TPU images ship 3.10, the package needs >= 3.11.
            'export PATH="$HOME/.local/bin:$PATH"',
            "command -v uv >/dev/null || python3 -m pip install --quiet --user uv "
            "|| curl -LsSf https://astral.sh/uv/install.sh | sh",
            f"[ -x {self.venv_python()} ] || uv venv --quiet --python {shlex.quote(pyver)} {self.venv()}",
            # the [cloud] extra: gcsfs and google-cloud-storage, for the gs:// workdirs every TPU run writes to
            f"uv pip install --quiet --python {self.venv_python()} -e {shlex.quote(CODE_DIR + '[cloud]')} "
            f"{shlex.quote(jax_requirement(self.root))}",
        ]
        for key in self.weights():  # hf, from huggingface_hub (a dependency of the package), in the venv
            hub, files = HUB_WEIGHTS[key]
            lines.append(
                f"{self.venv('bin/hf')} download {hub} {' '.join(files)} --local-dir {CODE_DIR}/weights/clip-{key}"
            )
        if num_hosts(acc) == 1:  # a pod slice's hosts only see their chips together, inside a distributed run
            lines.append(f"{self.venv_python()} -c 'import jax; print(jax.devices())'")
        else:
            lines.append(f"{self.venv_python()} -c 'import alpeft_jax, jax; print(\"jax\", jax.__version__)'")
        lines.append('echo "$(hostname): ready"')
        return "\n".join(lines)

    def weights(self) -> list[str]:
        """The CLIP ResNet weights WEIGHTS asks setup to download (rn50, rn101), checked."""
        keys = [k.strip() for k in self.env.get("WEIGHTS", "").split(",") if k.strip()]
        bad = [k for k in keys if k not in HUB_WEIGHTS]
        if bad:
            raise LaunchError(f"WEIGHTS={self.env['WEIGHTS']}: unknown {', '.join(bad)}; use {','.join(HUB_WEIGHTS)}")
        return keys

    def setup(self, args: list[str]) -> None:
        """Put the code on every worker (HEAD as an archive, or a clone of $REPO), install it, fetch $WEIGHTS."""
        self.only("setup", args)
        acc = self.accelerator()
        name, flags = self.tpu()
        self.weights()
        self.check()
        clone = bool(self.env.get("REPO"))
        if not clone:
            ref = self.env.get("REF", "") or "HEAD"
            archive = os.path.join(tempfile.gettempdir(), f"alpeft_jax-{name}.tar.gz")
            self.emit(["git", "-C", self.root, "archive", "--format=tar.gz", f"--output={archive}", ref])
            if not self.dry and subprocess.run(["git", "-C", self.root, "diff", "--quiet", "HEAD"]).returncode:
                print(f"note: setup copies the committed {ref}; uncommitted changes stay here", file=sys.stderr)
            self.emit(
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "tpu-vm",
                    "scp",
                    archive,
                    f"{name}:{CODE_DIR}.tar.gz",
                    *flags,
                    "--worker=all",
                ]
            )
        self.emit(self.ssh(name, flags, "all", self.setup_script(acc, clone)))

    def run(self, args: list[str], module: str = "alpeft_jax.main") -> None:
        """Start the experiment on every worker in the background, a log per worker."""
        acc = self.accelerator()
        name, flags = self.tpu()
        config = self.need("CONFIG", "the experiment file, e.g. CONFIG=configs/lora.py")
        example = "gs://bucket/sweeps/coop_dtd" if module == "alpeft_jax.sweep" else "gs://bucket/runs/lora_s1"
        workdir = self.need("WORKDIR", f"shared by all hosts, e.g. WORKDIR={example}")
        self.check()
        hosts = num_hosts(acc)
        if hosts > 1 and not workdir.startswith(("gs://", "\0")) and not self.dry:
            print(
                f"note: {acc} has {hosts} hosts; WORKDIR={workdir} must be storage they all share (gs://...)",
                file=sys.stderr,
            )
        argv = [f"--config={config}", f"--workdir={workdir}", *(["--distributed"] if hosts > 1 else []), *args]
        rname = self.env.get("RUN_NAME") or (run_name(workdir) if not isinstance(workdir, Guard) else "run")
        rname = run_name(rname)
        cmd = " ".join([self.venv_python(), "-m", module, *(shlex.quote(a) for a in argv)])
        script = "\n".join(
            [
                'cd "$HOME"',
                f"mkdir -p {LOG_DIR}",
                f"p=$(cat {LOG_DIR}/latest.pid 2>/dev/null || true)",
                f'if [ -n "$p" ] && {ALIVE}; then',
                '  echo "$(hostname): a run is still going (launch/tpu_vm.sh stop ends it)" >&2; exit 3',
                "fi",
                f'log="$HOME/{LOG_DIR}/{rname}.$(hostname).log"',
                f"cd {CODE_DIR}",
                f'PYTHONUNBUFFERED=1 setsid nohup {cmd} > "$log" 2>&1 < /dev/null &',
                f'echo $! > "$HOME/{LOG_DIR}/latest.pid"',
                f'ln -sfn "$log" "$HOME/{LOG_DIR}/latest.log"',
                'echo "$(hostname): started, log $log"',
            ]
        )
        self.emit(self.ssh(name, flags, "all", script))

    def sweep(self, args: list[str]) -> None:
        """Start `python -m alpeft_jax.sweep` (every strategy x seed of CONFIG, then the summary) on every worker."""
        if not any(a.startswith("--strategies") for a in args):
            raise LaunchError("sweep needs --strategies=..., e.g. sweep --strategies=random,entropy,badge,coreset,ours")
        self.run(args, module="alpeft_jax.sweep")

    def stop(self, args: list[str]) -> None:
        """Stop the latest run on every worker."""
        self.only("stop", args)
        name, flags = self.tpu()
        self.check()
        script = (
            f'p=$(cat "$HOME/{LOG_DIR}/latest.pid" 2>/dev/null) && kill -- -"$p" 2>/dev/null '
            '&& echo "$(hostname): stopped" || echo "$(hostname): no run going"'
        )
        self.emit(self.ssh(name, flags, "all", script))

    def status(self, args: list[str]) -> None:
        """The TPU's state, then per worker whether the run goes on and its last log lines."""
        self.only("status", args)
        acc = self.accelerator()
        name, flags = self.tpu()
        self.check()
        if self.queued(acc):
            self.emit(
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "queued-resources",
                    "describe",
                    f"{name}-qr",
                    *flags,
                    "--format=value(state.state)",
                ],
                check=False,
            )
        self.emit(
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "describe",
                name,
                *flags,
                "--format=value(state,health,acceleratorType)",
            ],
            check=False,
        )
        script = (
            f'p=$(cat "$HOME/{LOG_DIR}/latest.pid" 2>/dev/null); '
            f'if [ -n "$p" ] && {ALIVE}; then s=running; else s="not running"; fi; '
            f'echo "== $(hostname): $s"; tail -n 3 "$HOME/{LOG_DIR}/latest.log" 2>/dev/null; true'
        )
        self.emit(self.ssh(name, flags, "all", script), check=False)

    def logs(self, args: list[str]) -> None:
        """Tail the latest log of one worker (WORKER, default 0; -f follows)."""
        self.only("logs", args, ("-f", "--follow"))
        follow = bool(args)
        raw = self.env.get("LOG_LINES", "") or "100"
        if not raw.isdigit():
            raise LaunchError(f"LOG_LINES={raw!r} is not a number of lines; e.g. LOG_LINES=200")
        name, flags = self.tpu()
        self.check()
        tail = f'tail -n {raw}{" -F" if follow else ""} "$HOME/{LOG_DIR}/latest.log"'
        self.emit(self.ssh(name, flags, self.env.get("WORKER", "") or "0", tail))

    def fetch(self, args: list[str]) -> None:
        """Gather results.jsonl/config.json of the workdirs on worker 0, report there, copy everything here."""
        name, flags = self.tpu()
        workdirs = args or [self.need("WORKDIR", "the run's workdir, or pass the workdirs as arguments")]
        self.check()
        dest = self.env.get("DEST") or os.path.join(
            "workdirs", "fetched", name if not isinstance(name, Guard) else "tpu"
        )
        lines = ["set -e", 'cd "$HOME"', f"rm -rf {FETCH_DIR} && mkdir {FETCH_DIR}"]
        dirs = []
        for i, wd in enumerate(workdirs):
            sub = f"{FETCH_DIR}/{i:02d}_{run_name(wd) if not isinstance(wd, Guard) else 'run'}"
            dirs.append(sub)
            src = shlex.quote(wd.rstrip("/")) if not isinstance(wd, Guard) else f'"{wd}"'
            copy = "gcloud storage cp" if wd.startswith("gs://") else "cp"
            lines += [f"mkdir -p {sub}", f"{copy} {src}/results.jsonl {src}/config.json {sub}/"]
        lines.append(
            f"cd {CODE_DIR} && {self.venv_python()} -m alpeft_jax.report "
            + " ".join(f'"$HOME/{d}"' for d in dirs)
            + f' --out "$HOME/{FETCH_DIR}/curves.png" | tee "$HOME/{FETCH_DIR}/report.md"'
        )
        self.emit(self.ssh(name, flags, "0", "\n".join(lines)))
        self.emit(["mkdir", "-p", dest])
        self.emit(
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "scp",
                "--recurse",
                f"{name}:{FETCH_DIR}",
                dest,
                *flags,
                "--worker=0",
            ]
        )
        if not self.dry:
            print(
                f"report: {os.path.join(dest, FETCH_DIR, 'report.md')}, plot: "
                f"{os.path.join(dest, FETCH_DIR, 'curves.png')}",
                file=sys.stderr,
            )

    def delete(self, args: list[str]) -> None:
        """Delete the TPU VM, or its queued resource (which deletes the VM with it)."""
        self.only("delete", args)
        acc = self.accelerator()
        name, flags = self.tpu()
        self.check()
        if self.queued(acc):
            self.emit(
                ["gcloud", "compute", "tpus", "queued-resources", "delete", f"{name}-qr", *flags, "--force", "--quiet"]
            )
        else:
            self.emit(["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *flags, "--quiet"])


COMMANDS = ("create", "setup", "run", "sweep", "stop", "status", "logs", "fetch", "delete")


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Dispatch one subcommand; a bad setting prints one line and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        getattr(Launcher(dict(os.environ if env is None else env), root), command)(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
