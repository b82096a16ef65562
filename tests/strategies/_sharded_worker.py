"""Every strategy on a pool sharded over 8 devices and on the same pool as NumPy arrays; prints JSON.

Run as `XLA_FLAGS=--xla_force_host_platform_device_count=8 python _sharded_worker.py` (the device count must
be set before JAX starts, so the test runs this in a subprocess). For each strategy: the ids from NumPy input,
from sharded input on the mesh and gathered to the host, through PCB both ways, and the compilations of
three rounds on the mesh.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import Mesh

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import al_rounds, make_pool  # noqa: E402

from alpeft_jax import strategies  # noqa: E402
from alpeft_jax.strategies import spmd  # noqa: E402

OPTIONS = {
    "typiclust": {"k_nn": 5, "block": 64},
    "probcover": {"block": 64},
    # the coverage rule's pass on the mesh's pool, before the hand-off (TypiClust) in every round here
    "tcm": {"switch": "coverage", "coverage": 1.0, "radius": 0.5, "k_nn": 5, "block": 64},
}
BUDGET = 24  # PCB keeps half


def main() -> None:
    if jax.device_count() != 8:
        sys.exit(f"expected 8 devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}), got {jax.device_count()}")
    mesh = Mesh(np.asarray(jax.devices()), (spmd.AXIS,))
    pool, labeled, y = make_pool(n=400, d=8, k=5, n_labeled=20)
    on_mesh = {
        k: jax.device_put(v, jax.NamedSharding(mesh, spmd.row_spec(k))) for k, v in pool.items() if k != "labels"
    }
    on_mesh["labels"] = pool["labels"]  # the driver's labels stay a host array
    none = np.zeros_like(labeled)
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or strategies.names()
    out = {}
    for name in names:
        t0 = time.time()
        sel, opts = strategies.get(name), OPTIONS.get(name, {})
        res = {}
        for tag, lab in (("", labeled), ("unlabelled_", none)):
            res[tag + "numpy"] = sel(3, pool, lab, BUDGET, **opts)
            res[tag + "mesh"] = sel(3, on_mesh, lab, BUDGET, sharded=True, **opts)
        res["gathered"] = sel(3, on_mesh, labeled, BUDGET, sharded=False, **opts)
        res["default"] = sel(3, on_mesh, labeled, BUDGET, **opts)
        res["pcb_numpy"] = strategies.select_with_pcb(name, 5, pool, labeled, BUDGET // 2, BUDGET, **opts)
        res["pcb_mesh"] = strategies.select_with_pcb(
            name, 5, on_mesh, labeled, BUDGET // 2, BUDGET, sharded=True, **opts
        )
        rounds = lambda r, p, lab: sel(r, p, lab, BUDGET, sharded=True, **opts)  # noqa: B023
        res["rounds"], compiles = al_rounds(rounds, on_mesh, labeled, y, BUDGET, 3)
        res["rounds_numpy"], _ = al_rounds(
            lambda r, p, lab: sel(r, p, lab, BUDGET, **opts),  # noqa: B023
            pool,
            labeled,
            y,
            BUDGET,
            3,
        )
        out[name] = {k: np.asarray(v).tolist() for k, v in res.items()} | {"compiles": compiles}
        print(f"{name}: done {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    wrong = dict(on_mesh, features=jax.device_put(pool["features"], jax.NamedSharding(mesh, spmd.P(None, spmd.AXIS))))
    try:
        strategies.get("coreset")(0, wrong, labeled, 3)
    except ValueError as e:
        out["wrong_sharding"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
