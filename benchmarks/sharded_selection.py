"""Selection on a pool sharded over a mesh: gather it to the host first, or select where the rows are.

The pool (features [N,D], logits [N,K], labels) is put on a 1-D mesh over `--devices` fake CPU devices
(`--xla_force_host_platform_device_count`, set before JAX starts, so each strategy runs in its own
subprocess), sharded on the example axis, placed anew before each call. Two ways, same call, same ids:
  gather   `sharded=False`: every array the strategy reads is copied to host NumPy, then selected as from host
           arrays ('copy' is that copy alone);
  sharded  `sharded=True`: the strategy runs on the global arrays, each device on its own rows.
"time" is a second call after a warm-up call on the same data (JAX compiles on the first); strategies listed
in --single-call are timed on their first call, compilation included (marked *). ratio = gather / sharded:
above 1 the sharded path is faster.

    python benchmarks/sharded_selection.py                     # N = 1M, D = 512, K = 10, budget 100, 8 devices
    python benchmarks/sharded_selection.py --n 20000 --d 64    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from selection import make_data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL = ["entropy", "coreset", "badge", "typiclust", "probcover"]


def child(spec: dict) -> None:
    """Run one strategy both ways on a sharded pool; print a JSON line with the timings."""
    import jax
    from jax.sharding import Mesh, NamedSharding

    from alpeft_jax import strategies
    from alpeft_jax.strategies import spmd

    if jax.device_count() != spec["devices"]:
        sys.exit(f"expected {spec['devices']} devices, got {jax.device_count()}")
    data = make_data(spec["n"], spec["d"], spec["k"], spec["n_labeled"])
    labeled = data.pop("labeled")
    mesh = Mesh(np.asarray(jax.devices()), (spmd.AXIS,))

    def fresh_pool() -> dict:
        # placed anew before every call: a jax.Array keeps its host copy once made, which would hide the gather
        return {
            k: jax.block_until_ready(jax.device_put(v, NamedSharding(mesh, spmd.row_spec(k)))) for k, v in data.items()
        }

    select = strategies.get(spec["strategy"])
    reads = sorted(strategies.requires(spec["strategy"]))
    out = {}
    for path, sharded in (("gather", False), ("sharded", True)):
        for _ in range(1 if spec["single_call"] else 2):
            pool = fresh_pool()
            t0 = time.perf_counter()
            ids = select(0, pool, labeled, spec["budget"], sharded=sharded)
            out[path] = time.perf_counter() - t0
            del pool
        out[path + "_ids"] = np.asarray(ids).tolist()
    pool = fresh_pool()
    t0 = time.perf_counter()
    for k in reads:
        spmd.to_host(pool[k])
    out["copy"] = time.perf_counter() - t0
    out["same_ids"] = out.pop("gather_ids") == out.pop("sharded_ids")
    print(json.dumps(out))


def run_case(spec: dict, timeout: float) -> dict:
    """`child(spec)` in a fresh interpreter with the fake device count; its JSON or an error note."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={spec['devices']}",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))  # runs from a checkout
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"timeout > {timeout:.0f} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"note": f"failed rc={r.returncode}: {last[:100]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--probcover-n", type=int, default=100_000, help="N for ProbCover (all-pairs passes)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--n-labeled", type=int, default=100)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--strategies", nargs="+", default=ALL, choices=ALL)
    ap.add_argument(
        "--single-call",
        nargs="*",
        default=["typiclust", "probcover"],
        choices=ALL,
        help="strategies timed on their first call only (long ones)",
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per strategy")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    print(
        f"{args.devices} fake CPU devices on {os.cpu_count()} cores; load average "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + f"; D = {args.d}, K = {args.k}, budget {args.budget}, {args.n_labeled} labelled; times in s "
        "(* first call, compilation included)"
    )
    head = (
        f"{'strategy':10} {'N':>8} | {'gather':>8} {'(copy)':>8} | {'sharded':>8} | {'ratio':>6} | "
        f"{'faster':8} {'same ids':8}  note"
    )
    print(head)
    print("-" * len(head))
    for strategy in args.strategies:
        n = args.probcover_n if strategy == "probcover" else args.n
        single = strategy in args.single_call
        spec = dict(
            strategy=strategy,
            n=n,
            d=args.d,
            k=args.k,
            budget=args.budget,
            n_labeled=args.n_labeled,
            devices=args.devices,
            single_call=single,
        )
        res = run_case(spec, args.timeout)
        mark = "*" if single else " "
        if "gather" not in res:
            print(
                f"{strategy:10} {n:8d} | {'-':>8} {'-':>8} | {'-':>8} | {'-':>6} | {'-':8} {'-':8}  "
                f"{res.get('note', '')}",
                flush=True,
            )
            continue
        ratio = res["gather"] / res["sharded"]
        faster = "sharded" if ratio > 1 else "gather"
        print(
            f"{strategy:10} {n:8d} | {res['gather']:7.3f}{mark} {res['copy']:8.3f} | {res['sharded']:7.3f}{mark} | "
            f"{ratio:5.2f}x | {faster:8} {str(res['same_ids']):8}",
            flush=True,
        )
    print("load average at the end " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
