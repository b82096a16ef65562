"""Many devices and many processes, for real: the command line on `configs/demo.py:mode=lora,runlocal` (LoRA).

- one process with 1 device vs one process with 8 fake CPU devices: the same selections, metrics within 1e-4;
- 2 real local processes (127.0.0.1 coordinator, gloo CPU collectives, 2 fake devices each) into one shared
  workdir vs one process with 4 devices: both exit 0 with the same selections and metrics;
- one of the 2 processes SIGKILLed mid-round, then the same command on both: the same results again.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from _required import require_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/demo.py:mode=lora,runlocal"
TOL = 1e-4

require_fashion_mnist(module=True)  # configs/demo.py reads Fashion-MNIST


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, devices, *flags, log=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "alpeft_jax.main",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        "--config.train.checkpoint_every_steps=1",
        *flags,
    ]
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _start_processes(workdir, n, devices_each, tag):
    port = _free_port()
    return [
        _start(
            workdir,
            devices_each,
            f"--coordinator=127.0.0.1:{port}",
            f"--num_processes={n}",
            f"--process_id={i}",
            log=f"{workdir}.{tag}.p{i}.log",
        )
        for i in range(n)
    ]


def _wait(procs, timeout=900):
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def _log_tail(workdir):
    text = ""
    for name in sorted(os.listdir(os.path.dirname(workdir))):
        if name.startswith(os.path.basename(workdir)) and name.endswith(".log"):
            with open(os.path.join(os.path.dirname(workdir), name)) as f:
                text += f"--- {name}\n" + f.read()[-3000:]
    return text


def _results(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_same(got, ref):
    assert [r["round"] for r in got] == [r["round"] for r in ref] == [0, 1]
    for a, b in zip(got, ref):
        assert a["selected_ids"] == b["selected_ids"], (a["round"], a["selected_ids"], b["selected_ids"])
        for k in ("accuracy", "nll", "ece", "brier", "final_train_loss"):
            assert abs(a[k] - b[k]) <= TOL, (a["round"], k, a[k], b[k])


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """One process with 4 devices: the reference for the multi-process runs."""
    wd = str(tmp_path_factory.mktemp("mh") / "one_process_4_devices")
    proc = _start(wd, 4, log=wd + ".log")
    assert _wait([proc]) == [0], _log_tail(wd)
    return _results(wd)


@pytest.mark.slow  # the 2-process tests below cover the mesh in the default run
def test_one_device_equals_eight_devices(tmp_path):
    runs = {}
    procs = {d: _start(str(tmp_path / f"d{d}"), d, log=str(tmp_path / f"d{d}.log")) for d in (1, 8)}
    for d, p in procs.items():
        assert _wait([p]) == [0], _log_tail(str(tmp_path / f"d{d}"))
        runs[d] = _results(str(tmp_path / f"d{d}"))
    _assert_same(runs[8], runs[1])


def test_two_processes_equal_one_process_with_four_devices(tmp_path, four_devices):
    wd = str(tmp_path / "two_processes")
    procs = _start_processes(wd, 2, 2, "run")
    assert _wait(procs) == [0, 0], _log_tail(wd)
    _assert_same(_results(wd), four_devices)
    # Only process 0 wrote the JSON state and reports; the TensorBoard events are there.
    assert os.path.exists(os.path.join(wd, "al_state.json"))
    assert any(name.startswith("events.out") for name in os.listdir(os.path.join(wd, "tensorboard")))
    assert not [n for n in os.listdir(wd) if n.endswith(".tmp") or n.startswith(".tmp-")]


def _state(workdir):
    try:
        with open(os.path.join(workdir, "al_state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@pytest.mark.slow  # the default run keeps the 2-process equality test and tests/loop_test.py's stop-and-resume
def test_kill_one_process_mid_round_then_resume(tmp_path, four_devices):
    wd = str(tmp_path / "killed")
    procs = _start_processes(wd, 2, 2, "first")
    deadline = time.time() + 600
    killed = False
    while time.time() < deadline and all(p.poll() is None for p in procs):
        st = _state(wd)
        # Round 1 is training and its first in-round checkpoint is committed: kill the second process now.
        if (
            st
            and st["round"] == 1
            and st["phase"] == "train"
            and os.path.isdir(os.path.join(wd, "progress"))
            and any(n.isdigit() for n in os.listdir(os.path.join(wd, "progress")))
        ):
            procs[1].send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    assert killed, "the run finished or failed before round 1's training: " + _log_tail(wd)
    # The survivor cannot finish alone: it stops on the lost peer, or we stop it.
    _wait(procs, timeout=60)
    assert not os.path.exists(os.path.join(wd, "results.jsonl")) or len(_results(wd)) == 1
    procs = _start_processes(wd, 2, 2, "resumed")
    assert _wait(procs) == [0, 0], _log_tail(wd)
    _assert_same(_results(wd), four_devices)
