"""Two real processes (gloo CPU collectives, 127.0.0.1 coordinator, 2 devices each) select on one pool sharded
over both: each holds only its own shards, and both end with the ids of the same pool in NumPy arrays."""

import json
import os
import socket
import subprocess
import sys

import pytest

from alpeft_jax import strategies

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    logs = [open(tmp / f"{i}.log", "w") for i in range(2)]  # files, not pipes: a full pipe would stall a process
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "_multiprocess_worker.py"),
                str(i),
                "2",
                str(port),
                str(tmp / f"{i}.json"),
            ],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            env=dict(env, PYTHONHASHSEED=("0", "5")[i]),
        )  # other set orders, same collectives
        for i in range(2)
    ]
    try:
        for p in procs:
            p.wait(timeout=1500)
    finally:
        for p, log in zip(procs, logs):
            p.kill()
            log.close()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp / f"{i}.log").read_text()[-3000:]
    return [json.loads((tmp / f"{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", strategies.names())
def test_every_process_selects_the_numpy_ids(reports, name):
    a, b = reports
    assert a["devices"] == 4 and a["local"] == 2
    assert a[name] == b[name]  # every process ends with the same ids
    r = a[name]
    assert r["mesh"] == r["numpy"] and r["gathered"] == r["numpy"] and len(set(r["numpy"])) == 24
    assert r["pcb_mesh"] == r["pcb_numpy"]
