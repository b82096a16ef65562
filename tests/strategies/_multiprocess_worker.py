"""One process of a 2-process run: every strategy on a pool sharded over both processes' devices; writes JSON.

`python _multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.json`, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`: the processes join through a 127.0.0.1 coordinator (CPU
collectives over gloo), build one mesh over all devices, and place the same NumPy pool on it, each process
holding only its own shards. Per strategy: the ids from the host arrays (on this process's first device), on the
mesh, gathered from the mesh, and through PCB on the mesh.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import make_pool  # noqa: E402

from alpeft_jax import strategies  # noqa: E402
from alpeft_jax.strategies import spmd  # noqa: E402

OPTIONS = {"typiclust": {"k_nn": 5, "block": 64}, "probcover": {"block": 64}}
BUDGET = 24


def main() -> None:
    pid, nproc, port, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    mesh = Mesh(np.asarray(jax.devices()), (spmd.AXIS,))
    pool, labeled, _ = make_pool(n=400, d=8, k=5, n_labeled=20)
    on_mesh = {
        k: jax.make_array_from_callback(v.shape, NamedSharding(mesh, spmd.row_spec(k)), lambda idx, v=v: v[idx])
        for k, v in pool.items()
        if k != "labels"
    }
    assert not on_mesh["features"].is_fully_addressable  # each process holds only its shards
    on_mesh["labels"] = pool["labels"]
    names = [a for a in sys.argv[5:]] or strategies.names()
    out = {"devices": jax.device_count(), "local": jax.local_device_count()}
    with jax.default_device(jax.local_devices()[0]):
        for name in names:
            sel, opts = strategies.get(name), OPTIONS.get(name, {})
            out[name] = {
                "numpy": sel(3, pool, labeled, BUDGET, **opts),
                "mesh": sel(3, on_mesh, labeled, BUDGET, sharded=True, **opts),
                "gathered": sel(3, on_mesh, labeled, BUDGET, sharded=False, **opts),
                "pcb_numpy": strategies.select_with_pcb(name, 5, pool, labeled, BUDGET // 2, BUDGET, **opts),
                "pcb_mesh": strategies.select_with_pcb(
                    name, 5, on_mesh, labeled, BUDGET // 2, BUDGET, sharded=True, **opts
                ),
            }
            out[name] = {k: np.asarray(v).tolist() for k, v in out[name].items()}
            print(f"process {pid}: {name} done", file=sys.stderr, flush=True)
    with open(out_path, "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
