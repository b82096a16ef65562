"""Pools sharded over 8 devices select the same ids as the same pool in NumPy arrays, for every strategy.

The device count must be set before JAX starts, so `_sharded_worker.py` runs in a subprocess with 8 fake
CPU devices and reports every strategy's ids (NumPy input; on the mesh; gathered from the mesh; through
PCB; three rounds) and the compilations of its rounds on the mesh.
"""

import json
import os
import subprocess
import sys

import pytest

from alpeft_jax import strategies

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "_sharded_worker.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", strategies.names())
def test_sharded_pool_selects_the_numpy_ids(report, name):
    r = report[name]
    assert len(set(r["numpy"])) == 24
    for key in ("mesh", "gathered", "default"):
        assert r[key] == r["numpy"], key
    assert r["unlabelled_mesh"] == r["unlabelled_numpy"]
    assert r["pcb_mesh"] == r["pcb_numpy"]
    assert r["rounds"] == r["rounds_numpy"]
    assert r["compiles"][1:] == [0, 0], r["compiles"]


def test_a_pool_split_on_another_axis_is_refused_with_the_fix(report):
    msg = report["wrong_sharding"]
    assert "pool['features']" in msg and "P('data', None)" in msg and "\n" not in msg
