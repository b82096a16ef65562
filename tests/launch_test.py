"""launch/: the Cloud TPU VM script and the Slurm batch file, run against fake gcloud / sbatch / srun on PATH.

The fakes record each call's argv as JSON (one file per call), so an argument with spaces is checked whole. For
`run` the fake gcloud also executes the `--command` of `ssh` with bash in a fake home, and the workers' fake
Python records its argv: the experiment's arguments are checked where they finally arrive. Every dry run's
printed script is executed against the same fakes and must make exactly the calls the real mode makes.
"""

import glob
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import time
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))
import tpu  # noqa: E402

sys.path.pop(0)

TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")
SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")

FAKE_GCLOUD = r"""#!{python} -S
import json, os, shutil, subprocess, sys
calls = os.environ["FAKE_CALLS"]
with open(os.path.join(calls, "%03d.json" % len(os.listdir(calls))), "w") as f:
    json.dump(["gcloud"] + sys.argv[1:], f)
args = sys.argv[1:]
if not os.environ.get("FAKE_EXEC"):
    sys.exit(0)
home = os.environ["HOME"]
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    sys.exit(subprocess.call(["bash", "-c", command], cwd=home))
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dst = [a for a in args[4:] if not a.startswith("--")]
    if ":" in src:  # worker -> here
        src = os.path.join(home, src.split(":", 1)[1])
        shutil.copytree(src, os.path.join(dst, os.path.basename(src)))
    else:
        shutil.copy(src, os.path.join(home, dst.split(":", 1)[1]))
"""

# The workers' interpreter: records its argv; runs the real report for `-m alpeft_jax.report`.
FAKE_PYTHON = r"""#!{python} -S
import json, os, sys, time
log = os.environ["FAKE_PYTHON_LOG"]
with open(os.path.join(log, "%03d.json" % len(os.listdir(log))), "w") as f:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd()}}, f)
if sys.argv[1:3] == ["-m", "alpeft_jax.report"]:
    os.execv("{python}", ["{python}"] + sys.argv[1:])
print("fake alpeft_jax.main started", flush=True)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""

# uv on the workers: records its argv; `uv venv DIR` makes DIR/bin/python and DIR/bin/hf (the fake above).
FAKE_UV = r"""#!{python} -S
import json, os, shutil, sys
log = os.environ["FAKE_UV_LOG"]
with open(os.path.join(log, "%03d.json" % len(os.listdir(log))), "w") as f:
    json.dump(sys.argv[1:], f)
if sys.argv[1] == "venv":
    d = os.path.join(sys.argv[-1], "bin")
    os.makedirs(d)
    shutil.copy(os.environ["FAKE_PYTHON"], os.path.join(d, "python"))
    shutil.copy(os.environ["FAKE_PYTHON"], os.path.join(d, "hf"))
"""


def _script(path, text):
    with open(path, "w") as f:
        f.write(text.format(python=sys.executable))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def fakes(tmp_path):
    """PATH with fake gcloud/uv first, a fake worker home, and the folders the fakes record into."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    dirs = {k: tmp_path / k for k in ("calls", "dry_calls", "python_log", "uv_log", "tmp")}
    for d in (bin_dir, home, *dirs.values()):
        d.mkdir()
    _script(bin_dir / "gcloud", FAKE_GCLOUD)
    _script(bin_dir / "uv", FAKE_UV)
    fake_python = _script(tmp_path / "fake_python", FAKE_PYTHON)
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DRY_RUN",
            "QUEUED",
            "SPOT",
            "RUNTIME",
            "PROJECT",
            "REPO",
            "REF",
            "VENV",
            "RUN_NAME",
            "WORKER",
            "DEST",
            "WEIGHTS",
        )
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        HOME=str(home),
        TMPDIR=str(dirs["tmp"]),
        FAKE_CALLS=str(dirs["calls"]),
        FAKE_PYTHON_LOG=str(dirs["python_log"]),
        FAKE_UV_LOG=str(dirs["uv_log"]),
        FAKE_PYTHON=fake_python,
        TPU_NAME="al-test",
        ZONE="us-east5-b",
    )
    return dict(env=env, home=home, **dirs)


def _records(d):
    out = []
    for p in sorted(glob.glob(os.path.join(d, "*.json"))):
        with open(p) as f:
            out.append(json.load(f))
    return out


def _launch(fakes, *args, **env):
    e = dict(fakes["env"], **{k: str(v) for k, v in env.items()})
    return subprocess.run([TPU_VM, *args], env=e, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _launch_and_dry_run(fakes, *args, **env):
    """Run for real against the fakes, then run the dry run's printed script; both must make the same calls."""
    before = len(os.listdir(fakes["calls"]))
    real = _launch(fakes, *args, **env)
    assert real.returncode == 0, real.stderr
    calls = _records(fakes["calls"])[before:]
    dry = _launch(fakes, *args, DRY_RUN=1, **env)
    assert dry.returncode == 0, dry.stderr
    e = dict(fakes["env"], FAKE_CALLS=str(fakes["dry_calls"]))  # the printed script alone, no FAKE_EXEC
    e.pop("FAKE_EXEC", None)
    for f in os.listdir(fakes["dry_calls"]):
        os.remove(os.path.join(fakes["dry_calls"], f))
    replay = subprocess.run(["bash", "-euc", dry.stdout], env=e, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    assert _records(fakes["dry_calls"]) == calls
    return calls, real


def _flag(call, name):
    values = [a.split("=", 1)[1] for a in call if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, call)
    return values[0]


# ------------------------------------------------------------------------------------------------------------
# Hosts and runtimes per accelerator type (the Cloud TPU documentation's tables, written out by hand)


@pytest.mark.parametrize(
    "accelerator, hosts, runtime",
    [
        ("v2-8", 1, "tpu-ubuntu2204-base"),
        ("v3-32", 4, "tpu-ubuntu2204-base"),
        ("v4-8", 1, "tpu-ubuntu2204-base"),
        ("v4-16", 2, "tpu-ubuntu2204-base"),
        ("v4-64", 8, "tpu-ubuntu2204-base"),
        ("v5p-8", 1, "v2-alpha-tpuv5"),
        ("v5p-16", 2, "v2-alpha-tpuv5"),
        ("v5p-128", 16, "v2-alpha-tpuv5"),
        ("v5litepod-1", 1, "v2-alpha-tpuv5-lite"),
        ("v5litepod-4", 1, "v2-alpha-tpuv5-lite"),
        ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"),
        ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),
        ("v5e-32", 8, "v2-alpha-tpuv5-lite"),
        ("v5litepod-256", 64, "v2-alpha-tpuv5-lite"),
        ("v6e-1", 1, "v2-alpha-tpuv6e"),
        ("v6e-8", 1, "v2-alpha-tpuv6e"),
        ("v6e-16", 4, "v2-alpha-tpuv6e"),
        ("v6e-256", 64, "v2-alpha-tpuv6e"),
    ],
)
def test_hosts_and_runtime_follow_from_the_accelerator(accelerator, hosts, runtime):
    assert tpu.num_hosts(accelerator) == hosts
    assert tpu.runtime_for(accelerator) == runtime


@pytest.mark.parametrize("accelerator", ["v4-6", "v5litepod-2", "v6e-12", "v7-8", "tpu-8", "v4"])
def test_unknown_accelerator_is_one_clear_error(fakes, accelerator):
    r = _launch(fakes, "create", ACCELERATOR=accelerator)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ACCELERATOR=") and "e.g. v" in r.stderr
    assert not os.listdir(fakes["calls"])


def test_missing_settings_are_named_in_one_line_and_nothing_runs(fakes):
    env = dict(fakes["env"])
    del env["TPU_NAME"], env["ZONE"]
    r = subprocess.run([TPU_VM, "run"], env=dict(env, ACCELERATOR="v4-8"), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    for name in ("TPU_NAME", "ZONE", "CONFIG", "WORKDIR"):
        assert name in r.stderr
    assert not os.listdir(fakes["calls"])
    r = subprocess.run([TPU_VM, "run"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "set ACCELERATOR" in r.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["setup", "now"], {}, "setup takes no arguments, not now"),
        (["create", "--preemptible"], {}, "create takes only --spot, not --preemptible"),
        (["logs"], {"LOG_LINES": "many"}, "LOG_LINES='many' is not a number"),
        (["deploy"], {}, "unknown command 'deploy'"),
    ],
)
def test_bad_arguments_are_one_clear_error(fakes, args, env, message):
    r = _launch(fakes, *args, ACCELERATOR="v4-8", **env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr
    assert not os.listdir(fakes["calls"])


def test_missing_gcloud_is_one_clear_error(fakes, tmp_path):
    only = tmp_path / "only"  # a PATH with bash and Python but no gcloud
    only.mkdir()
    os.symlink(sys.executable, only / "python3")
    os.symlink(
        subprocess.run(["bash", "-c", "command -v bash"], capture_output=True, text=True).stdout.strip(), only / "bash"
    )
    r = subprocess.run(
        [TPU_VM, "delete"], env=dict(fakes["env"], PATH=str(only), ACCELERATOR="v4-8"), capture_output=True, text=True
    )
    assert (
        r.returncode == 2
        and r.stderr == "error: gcloud is not on PATH (install the Google Cloud CLI and run `gcloud auth login`)\n"
    )


def test_venv_can_be_moved(fakes):
    (ssh,), _ = _launch_and_dry_run(fakes, "run", ACCELERATOR="v4-8", CONFIG="c.py", WORKDIR="w", VENV="~/envs/al")
    assert 'PYTHONUNBUFFERED=1 setsid nohup "$HOME"/envs/al/bin/python -m alpeft_jax.main' in _flag(ssh, "command")


def test_dry_run_guards_what_is_missing(fakes):
    env = dict(fakes["env"], ACCELERATOR="v4-8", DRY_RUN="1")
    del env["TPU_NAME"]
    r = subprocess.run([TPU_VM, "run", "--config.name=a b"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("TPU_NAME", "CONFIG", "WORKDIR"):
        assert "${" + name + "?}" in r.stdout
    assert "${ZONE?}" not in r.stdout and "us-east5-b" in r.stdout
    assert not os.listdir(fakes["calls"])  # a dry run calls nothing
    replay = subprocess.run(
        ["bash", "-c", r.stdout], env=dict(fakes["env"], CONFIG="c.py"), capture_output=True, text=True
    )  # TPU_NAME set now, WORKDIR still not: the shell stops before gcloud
    assert replay.returncode != 0 and "WORKDIR" in replay.stderr
    assert not os.listdir(fakes["calls"])


# ------------------------------------------------------------------------------------------------------------
# The three slices of the issue: create, setup, run, status, stop, logs, fetch, delete

SLICES = [  # accelerator, runtime, hosts
    ("v4-8", "tpu-ubuntu2204-base", 1),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 4),
    ("v6e-8", "v2-alpha-tpuv6e", 1),
]


@pytest.mark.parametrize("accelerator, runtime, hosts", SLICES)
def test_create_and_delete(fakes, accelerator, runtime, hosts):
    calls, _ = _launch_and_dry_run(fakes, "create", "--spot", ACCELERATOR=accelerator)
    (call,) = calls
    assert "--spot" in call and _flag(call, "zone") == "us-east5-b" and _flag(call, "accelerator-type") == accelerator
    if hosts > 1:  # a pod slice: a queued resource holding the node
        assert call[1:6] == ["compute", "tpus", "queued-resources", "create", "al-test-qr"]
        assert _flag(call, "node-id") == "al-test" and _flag(call, "runtime-version") == runtime
    else:
        assert call[1:6] == ["compute", "tpus", "tpu-vm", "create", "al-test"]
        assert _flag(call, "version") == runtime
    calls, _ = _launch_and_dry_run(fakes, "delete", ACCELERATOR=accelerator, PROJECT="my-proj")
    (call,) = calls
    assert _flag(call, "project") == "my-proj" and "--quiet" in call
    assert call[3:6] == (["queued-resources", "delete", "al-test-qr"] if hosts > 1 else ["tpu-vm", "delete", "al-test"])


def test_runtime_can_be_overridden(fakes):
    (call,), _ = _launch_and_dry_run(fakes, "create", ACCELERATOR="v4-8", RUNTIME="tpu-vm-base")
    assert _flag(call, "version") == "tpu-vm-base" and "--spot" not in call


@pytest.mark.parametrize("accelerator, runtime, hosts", SLICES)
def test_setup_copies_head_and_installs_python311_with_jax_tpu(fakes, accelerator, runtime, hosts):
    calls, _ = _launch_and_dry_run(fakes, "setup", ACCELERATOR=accelerator)
    scp, ssh = calls
    assert scp[1:5] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    archive = scp[5]
    with tarfile.open(archive) as t:  # the committed checkout, ready to install
        names = set(t.getnames())
    assert {"pyproject.toml", "alpeft_jax/main.py", "configs/demo.py", "launch/tpu_vm.sh"} <= names
    assert ssh[1:6] == ["compute", "tpus", "tpu-vm", "ssh", "al-test"] and "--worker=all" in ssh
    script = _flag(ssh, "command")
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pin = re.search(r'"jax(>=[^"]+)"', f.read()).group(1)
    assert f"jax[tpu]{pin}" in script and "--python 3.11" in script

    # The script itself, on a fake worker: it unpacks the code and installs into a uv-made Python 3.11.
    r = _launch(fakes, "setup", ACCELERATOR=accelerator, FAKE_EXEC=1)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(fakes["home"] / "alpeft_jax" / "pyproject.toml")
    uv = _records(fakes["uv_log"])
    assert uv[0] == ["venv", "--quiet", "--python", "3.11", str(fakes["home"] / "alpeft_venv")]
    assert uv[1][:2] == ["pip", "install"] and f"jax[tpu]{pin}" in uv[1]
    assert uv[1][-3:-1] == ["-e", "alpeft_jax[cloud]"]  # the [cloud] extra: the gs:// workdirs' file system
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert any(r.startswith("gcsfs") for r in tomllib.load(f)["project"]["optional-dependencies"]["cloud"])
    (check,) = _records(fakes["python_log"])
    assert ("jax.devices()" in check["argv"][1]) == (hosts == 1)


def test_setup_copies_the_data_to_every_worker(fakes):
    _, ssh = _launch_and_dry_run(fakes, "setup", ACCELERATOR="v5litepod-16", DATA="gs://b/my data/tfds/")[0]
    assert "--worker=all" in ssh
    r = _launch(fakes, "setup", ACCELERATOR="v5litepod-16", DATA="gs://b/my data/tfds/", FAKE_EXEC=1)
    assert r.returncode == 0, r.stderr
    rsync = [c for c in _records(fakes["calls"]) if c[1:3] == ["storage", "rsync"]]
    assert rsync[-1] == ["gcloud", "storage", "rsync", "--recursive", "gs://b/my data/tfds", "alpeft_data/tfds"]
    assert os.path.isdir(fakes["home"] / "alpeft_data" / "tfds")


def test_setup_downloads_the_clip_resnet_weights_the_cpeal_configs_read(fakes):
    from alpeft_jax.config import CLIP_BACKBONES

    (_, ssh), _ = _launch_and_dry_run(fakes, "setup", ACCELERATOR="v4-8", WEIGHTS="rn50,rn101")
    script = _flag(ssh, "command")
    for key in ("rn50", "rn101"):
        w = CLIP_BACKBONES[key]  # what the configs read (weights/clip-rn50/...) and the command preflight prints
        local = os.path.join("alpeft_jax", os.path.dirname(w.source))  # runs start in ~/alpeft_jax
        assert '"$HOME"/alpeft_venv/bin/' + w.download_command(local).replace('"', "") in script
    r = _launch(fakes, "setup", ACCELERATOR="v4-8", WEIGHTS="rn101", FAKE_EXEC=1)
    assert r.returncode == 0, r.stderr
    hf = [rec["argv"] for rec in _records(fakes["python_log"]) if rec["argv"][:1] == ["download"]]
    assert hf == [
        [
            "download",
            "timm/resnet101_clip.openai",
            "open_clip_model.safetensors",
            "open_clip_config.json",
            "--local-dir",
            "alpeft_jax/weights/clip-rn101",
        ]
    ]
    bad = _launch(fakes, "setup", ACCELERATOR="v4-8", WEIGHTS="rn50,vit_b16")
    assert bad.returncode == 2 and "WEIGHTS=rn50,vit_b16: unknown vit_b16; use rn50,rn101" in bad.stderr


def test_setup_clones_when_given_a_repository(fakes):
    (ssh,), _ = _launch_and_dry_run(fakes, "setup", ACCELERATOR="v4-8", REPO="https://example.org/al.git", REF="v1")
    script = _flag(ssh, "command")
    assert "git clone --quiet https://example.org/al.git alpeft_jax" in script and "checkout --quiet v1" in script


def _worker(fakes):
    """A worker after `setup`: the code directory and the venv's (fake) Python."""
    (fakes["home"] / "alpeft_jax").mkdir()
    venv_bin = fakes["home"] / "alpeft_venv" / "bin"
    venv_bin.mkdir(parents=True)
    os.symlink(fakes["env"]["FAKE_PYTHON"], venv_bin / "python")


def _wait_for(path, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if glob.glob(str(path)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


@pytest.mark.parametrize("accelerator, runtime, hosts", SLICES)
def test_run_keeps_every_argument_whole_and_logs_per_worker(fakes, accelerator, runtime, hosts):
    env = dict(ACCELERATOR=accelerator, CONFIG="configs/lora.py", WORKDIR="gs://bucket/runs/lora s1")
    extra = ["--config.name=my run", "--config.data.dir=gs://b/tfds", "it's $HOME"]
    (ssh,), _ = _launch_and_dry_run(fakes, "run", *extra, **env)
    assert ssh[1:6] == ["compute", "tpus", "tpu-vm", "ssh", "al-test"] and "--worker=all" in ssh

    _worker(fakes)
    r = _launch(fakes, "run", *extra, FAKE_EXEC=1, **env)
    assert r.returncode == 0, r.stderr
    _wait_for(fakes["python_log"] / "*.json")
    (started,) = _records(fakes["python_log"])
    dist = ["--distributed"] if hosts > 1 else []
    assert started["argv"] == [
        "-m",
        "alpeft_jax.main",
        "--config=configs/lora.py",
        "--workdir=gs://bucket/runs/lora s1",
        *dist,
        *extra,
    ]
    assert started["cwd"] == str(fakes["home"] / "alpeft_jax")
    logs = glob.glob(str(fakes["home"] / "alpeft_logs" / "lora_s1.*.log"))
    assert len(logs) == 1 and os.path.realpath(fakes["home"] / "alpeft_logs" / "latest.log") == logs[0]
    _wait_for_text(logs[0], "fake alpeft_jax.main started")
    assert "started, log" in r.stdout


def _wait_for_text(path, text, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            if text in f.read():
                return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}")


def test_status_stop_and_logs_follow_the_background_run(fakes):
    env = dict(ACCELERATOR="v4-8", CONFIG="configs/demo.py", WORKDIR="/tmp/run1")
    _worker(fakes)
    r = _launch(fakes, "run", FAKE_EXEC=1, FAKE_SLEEP=60, **env)
    assert r.returncode == 0, r.stderr
    _wait_for(fakes["python_log"] / "*.json")
    pid = int((fakes["home"] / "alpeft_logs" / "latest.pid").read_text())
    try:
        status = _launch(fakes, "status", FAKE_EXEC=1, **env)
        assert "== " in status.stdout and ": running" in status.stdout
        again = _launch(fakes, "run", FAKE_EXEC=1, **env)  # never two runs at once on a worker
        assert again.returncode != 0 and "still going" in again.stderr
        logs = _launch(fakes, "logs", FAKE_EXEC=1, LOG_LINES=5, **env)
        assert logs.returncode == 0 and "fake alpeft_jax.main started" in logs.stdout
        stop = _launch(fakes, "stop", FAKE_EXEC=1, **env)
        assert ": stopped" in stop.stdout
        deadline = time.time() + 10
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid)
        assert ": not running" in _launch(fakes, "status", FAKE_EXEC=1, **env).stdout
    finally:
        if _alive(pid):
            os.kill(pid, 9)
    calls, _ = _launch_and_dry_run(fakes, "logs", "-f", WORKER="all", **env)
    assert _flag(calls[0], "worker") == "all" and "tail -n 100 -F" in _flag(calls[0], "command")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def test_fetch_gathers_results_and_makes_the_report(fakes, tmp_path):
    runs = []
    for name, accs in (("entropy s1", [0.4, 0.6]), ("random s1", [0.4, 0.5])):
        d = tmp_path / "worker_runs" / name
        d.mkdir(parents=True)
        with open(d / "results.jsonl", "w") as f:
            for r, acc in enumerate(accs):
                f.write(json.dumps(dict(round=r, n_labeled=10 * (r + 1), accuracy=acc, ece=0.1, nll=1.0)) + "\n")
        cfg = dict(name=name.split()[0], al=dict(strategy=name.split()[0]), train=dict(calibration="none"))
        (d / "config.json").write_text(json.dumps(cfg))
        runs.append(str(d))
    _worker(fakes)
    dest = tmp_path / "fetched"
    r = _launch(fakes, "fetch", *runs, FAKE_EXEC=1, DEST=dest)
    assert r.returncode == 0, r.stderr
    report = (dest / "alpeft_fetch" / "report.md").read_text()
    assert "| entropy | 1 | 40.00 ± 0.00 | 60.00 ± 0.00 |" in report
    assert "| random | 1 | 40.00 ± 0.00 | 50.00 ± 0.00 |" in report
    assert (dest / "alpeft_fetch" / "curves.png").stat().st_size > 1000
    calls, _ = _launch_and_dry_run(fakes, "fetch", "gs://b/runs/a", DEST=tmp_path / "d2")
    ssh, scp = calls
    assert "gcloud storage cp gs://b/runs/a/results.jsonl gs://b/runs/a/config.json" in _flag(ssh, "command")
    assert _flag(ssh, "worker") == "0"
    assert scp[4:8] == ["scp", "--recurse", "al-test:alpeft_fetch", str(tmp_path / "d2")]


# ------------------------------------------------------------------------------------------------------------
# The README's Launch commands are these tested ones: its TPU blocks, run as they are in a dry run


def _readme_launch_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("\n## Launch\n") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(r"```\n(.*?)```", section, re.S)


@pytest.mark.parametrize("accelerator, runtime, hosts", [SLICES[0], SLICES[1]])
def test_readme_tpu_commands_dry_run(fakes, tmp_path, accelerator, runtime, hosts):
    (block,) = [b for b in _readme_launch_blocks() if f"ACCELERATOR={accelerator}" in b]
    env = {k: v for k, v in fakes["env"].items() if k not in ("TPU_NAME", "ZONE")}  # the block sets them
    r = subprocess.run(
        ["bash", "-euc", block],
        env=dict(env, DRY_RUN="1", DEST=str(tmp_path / "fetched")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert not os.listdir(fakes["calls"])
    replay = subprocess.run(["bash", "-euc", r.stdout], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    calls = _records(fakes["calls"])
    (create,) = [c for c in calls if "create" in c[:6]]
    assert runtime in (_flag(create, "runtime-version") if hosts > 1 else _flag(create, "version"))
    (run,) = [c for c in calls if "ssh" in c[:5] and "alpeft_jax.main" in _flag(c, "command")]
    command = _flag(run, "command")
    assert "--worker=all" in run and ("--distributed" in command) == (hosts > 1)
    assert "'--config.data.dir=~/alpeft_data/tensorflow_datasets'" in command
    (setup,) = [c for c in calls if "ssh" in c[:5] and "uv venv" in _flag(c, "command")]
    assert "gcloud storage rsync --recursive gs://BUCKET/tensorflow_datasets" in _flag(setup, "command")


# ------------------------------------------------------------------------------------------------------------
# Slurm

FAKE_SBATCH = r"""#!{python} -S
# Records its argv, then runs the script as Slurm would on the first node of a 2-node x 8-GPU allocation.
import json, os, subprocess, sys
with open(os.path.join(os.environ["FAKE_CALLS"], "sbatch.json"), "w") as f:
    json.dump(sys.argv[1:], f)
script, args = sys.argv[1], sys.argv[2:]
env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[07-08]")
sys.exit(subprocess.call(["bash", script, *args], env=env))
"""

FAKE_SRUN = r"""#!{python} -S
# Records its argv, then starts the command once, as task 11 (node 2, local id 3) of the 16 would be.
import json, os, subprocess, sys
with open(os.path.join(os.environ["FAKE_CALLS"], "srun.json"), "w") as f:
    json.dump(sys.argv[1:], f)
args = sys.argv[1:]
if os.environ.get("FAKE_SRUN_RECORD_ONLY"):
    sys.exit(0)
command = args[next(i for i, a in enumerate(args) if not a.startswith("-")):]  # srun's options come first
env = dict(os.environ, SLURM_STEP_NODELIST="gpu[07-08]", SLURM_NTASKS="16", SLURM_PROCID="11", SLURM_LOCALID="3",
           SLURM_STEP_NUM_NODES="2")
sys.exit(subprocess.call(command, env=env))
"""

FAKE_MAIN = r"""#!{python}
# Stands in for the nodes' Python: records argv and what jax.distributed.initialize() would read from Slurm.
import json, os, sys
from jax._src import clusters
detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, None)
with open(os.path.join(os.environ["FAKE_CALLS"], "python.json"), "w") as f:
    json.dump(dict(argv=sys.argv[1:], detected=detected), f)
"""


def test_slurm_batch_file_runs_one_process_per_gpu_with_arguments_intact(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), calls.mkdir()
    _script(bin_dir / "sbatch", FAKE_SBATCH)
    _script(bin_dir / "srun", FAKE_SRUN)
    fake_python = _script(tmp_path / "python", FAKE_MAIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_CALLS=str(calls),
        CONFIG="configs/lora.py",
        WORKDIR="/shared/runs/lora s1",
        PYTHON=fake_python,
        LOGDIR=str(tmp_path / "logs"),
    )
    r = subprocess.run(
        ["sbatch", SBATCH, "--config.name=my run", "--config.seed=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr

    with open(SBATCH) as f:
        directives = dict(line[len("#SBATCH --") :].strip().split("=", 1) for line in f if line.startswith("#SBATCH"))
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == directives["gpus-per-node"] == "8"
    assert "gpus-per-task" not in directives  # every task sees all GPUs of its node and takes one

    srun = json.loads((calls / "srun.json").read_text())
    assert "--kill-on-bad-exit=1" in srun and f"--output={tmp_path / 'logs'}/alpeft-%j.%t.log" in srun  # log per task
    ran = json.loads((calls / "python.json").read_text())
    assert ran["argv"] == [
        "-m",
        "alpeft_jax.main",
        "--config=configs/lora.py",
        "--workdir=/shared/runs/lora s1",
        "--distributed",
        "--config.name=my run",
        "--config.seed=2",
    ]
    coordinator, num_processes, process_id, local_devices = ran["detected"]
    assert coordinator == f"gpu07:{4242 % 4096 + 65535 - 4096 + 1}" and num_processes == 16 and process_id == 11
    assert local_devices == [3]


def test_readme_slurm_command(tmp_path):
    (block,) = [b for b in _readme_launch_blocks() if "sbatch launch/slurm.sbatch" in b]
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), calls.mkdir()
    _script(bin_dir / "sbatch", FAKE_SBATCH)
    _script(bin_dir / "srun", FAKE_SRUN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_CALLS=str(calls),
        FAKE_SRUN_RECORD_ONLY="1",
        LOGDIR=str(tmp_path / "logs"),
    )
    r = subprocess.run(["bash", "-euc", block], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    srun = json.loads((calls / "srun.json").read_text())
    assert srun[2:] == [
        "/shared/venvs/alpeft/bin/python",
        "-m",
        "alpeft_jax.main",
        "--config=configs/lora.py:ours",
        "--workdir=/shared/runs/lora_dtd_ours_s1",
        "--distributed",
        "--config.data.dir=/shared/tensorflow_datasets",
        "--config.dtype=float16",
    ]


def test_slurm_batch_file_names_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "WORKDIR")}
    r = subprocess.run(["bash", SBATCH], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "set CONFIG" in r.stderr


# ------------------------------------------------------------------------------------------------------------
# Sweeps: `launch/tpu_vm.sh sweep` and `launch/slurm_sweep.sbatch`

SLURM_SWEEP = os.path.join(ROOT, "launch", "slurm_sweep.sbatch")
SWEEP_ARGS = ["--args=dataset=dtd", "--strategies=random,entropy,badge,coreset,ours", "--seeds=1,2,3"]


@pytest.mark.parametrize("accelerator, runtime, hosts", [SLICES[0], SLICES[1]])
def test_tpu_sweep_starts_the_sweep_on_every_worker(fakes, accelerator, runtime, hosts):
    env = dict(ACCELERATOR=accelerator, CONFIG="configs/coop.py", WORKDIR="gs://bucket/sweeps/coop dtd")
    extra = [*SWEEP_ARGS, "--config.data.dir=~/alpeft_data/tensorflow_datasets"]
    (ssh,), _ = _launch_and_dry_run(fakes, "sweep", *extra, **env)
    assert "--worker=all" in ssh and "-m alpeft_jax.sweep" in _flag(ssh, "command")
    _worker(fakes)
    r = _launch(fakes, "sweep", *extra, FAKE_EXEC=1, **env)
    assert r.returncode == 0, r.stderr
    _wait_for(fakes["python_log"] / "*.json")
    (started,) = _records(fakes["python_log"])
    dist = ["--distributed"] if hosts > 1 else []
    assert started["argv"] == [
        "-m",
        "alpeft_jax.sweep",
        "--config=configs/coop.py",
        "--workdir=gs://bucket/sweeps/coop dtd",
        *dist,
        *extra,
    ]
    assert started["cwd"] == str(fakes["home"] / "alpeft_jax")
    assert glob.glob(str(fakes["home"] / "alpeft_logs" / "coop_dtd.*.log"))


def test_tpu_sweep_without_strategies_is_one_clear_error(fakes):
    r = _launch(fakes, "sweep", "--args=dataset=dtd", ACCELERATOR="v4-8", CONFIG="configs/coop.py", WORKDIR="gs://b/s")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sweep needs --strategies=" in r.stderr
    assert not os.listdir(fakes["calls"])


def test_readme_tpu_sweep_command_dry_run(fakes):
    (block,) = [b for b in _readme_launch_blocks() if "tpu_vm.sh sweep" in b]
    env = dict(fakes["env"], ACCELERATOR="v4-8")
    r = subprocess.run(["bash", "-euc", block], env=dict(env, DRY_RUN="1"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    replay = subprocess.run(["bash", "-euc", r.stdout], env=env, cwd=ROOT, capture_output=True, text=True)
    assert replay.returncode == 0, replay.stderr
    (ssh,) = _records(fakes["calls"])
    command = _flag(ssh, "command")
    assert "-m alpeft_jax.sweep --config=configs/coop.py --workdir=gs://BUCKET/sweeps/coop_dtd_rn50" in command
    assert "--strategies=random,entropy,badge,coreset,ours --seeds=1,2,3" in command


def test_slurm_sweep_runs_one_cell_per_gpu_group_of_the_job(tmp_path):
    """The batch file under a fake sbatch that hands the job 4 GPUs: the real sweep plans 2 groups of 2."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), calls.mkdir()
    _script(bin_dir / "sbatch", FAKE_SBATCH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_CALLS=str(calls),
        CONFIG=os.path.join(ROOT, "tests", "configs", "tiny.py"),
        WORKDIR=str(tmp_path / "sweep one"),
        PYTHON=sys.executable,
        PYTHONPATH=ROOT,
        CUDA_VISIBLE_DEVICES="4,5,6,7",  # what Slurm sets for the job's GPUs
    )
    args = ["--args=rounds=2", "--strategies=random,entropy", "--seeds=1,2", "--devices_per_cell=2", "--dry_run"]
    r = subprocess.run(["sbatch", SLURM_SWEEP, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((calls / "sbatch.json").read_text()) == [SLURM_SWEEP, *args]
    plan = [line for line in r.stdout.splitlines() if line.startswith("new ")]
    assert len(plan) == 4
    assert "CUDA_VISIBLE_DEVICES=4,5" in plan[0] and "CUDA_VISIBLE_DEVICES=6,7" in plan[1]
    assert f"--workdir={tmp_path / 'sweep one'}/entropy/s2" in plan[3]
    assert "2 cell(s) at a time" in r.stdout

    with open(SLURM_SWEEP) as f:
        directives = dict(line[len("#SBATCH --") :].strip().split("=", 1) for line in f if line.startswith("#SBATCH"))
    assert directives["nodes"] == "1" and directives["ntasks"] == "1"
    missing = subprocess.run(["bash", SLURM_SWEEP], env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert missing.returncode != 0 and "set CONFIG" in missing.stderr


def test_readme_slurm_sweep_command(tmp_path):
    (block,) = [b for b in _readme_launch_blocks() if "sbatch launch/slurm_sweep.sbatch" in b]
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), calls.mkdir()
    _script(bin_dir / "sbatch", FAKE_SBATCH)
    python = _script(
        tmp_path / "python",
        FAKE_MAIN.replace("from jax._src import clusters\n", "").replace(
            "detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, None)",
            "detected = None",
        ),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_CALLS=str(calls))
    block = block.replace("/shared/venvs/alpeft/bin/python", python)
    r = subprocess.run(["bash", "-euc", block], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ran = json.loads((calls / "python.json").read_text())
    assert ran["argv"] == [
        "-m",
        "alpeft_jax.sweep",
        "--config=configs/coop.py",
        "--workdir=/shared/sweeps/coop_dtd_rn50",
        *SWEEP_ARGS,
        "--config.data.dir=/shared/tensorflow_datasets",
    ]
