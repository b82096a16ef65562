"""label_studio.mode=pool at scale against a real Label Studio (the tests' server: SQLite, its own venv).

    python benchmarks/label_studio_pool.py [--tasks 10000] [--budget 100] [--url URL --token TOKEN]

Imports a pool of `--tasks` small inline images (16x16 PNGs) in pages, then publishes round 1 (every task's
prediction in bulk, the round's `--budget` picks marked, the views saved) and round 2 (the next round's update),
through the oracle's own `publish`. Prints each phase's seconds and rate in tasks/s next to the 60 s target, the
split of a round between the bulk predictions and the picks' updates, and the peak Python memory the phase
allocated (tracemalloc). Without --url a server is started in a temporary folder and stopped at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from alpeft_jax import oracles  # noqa: E402
from alpeft_jax.data import ArraySource  # noqa: E402
from alpeft_jax.oracles.label_studio import api  # noqa: E402

TARGET_S = 60.0


class Clock:
    """Seconds spent in chosen methods of an object, summed by name."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, obj, name: str) -> None:
        """Time every call of obj.name."""
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)


def timed(what: str, n: int, fn, clock: Clock, parts: dict[str, str]) -> float:
    """Run fn(), print its seconds, tasks/s, the parts' seconds and the peak allocated memory."""
    clock.spent.clear()
    tracemalloc.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rate = n / dt if dt > 0 else float("inf")
    verdict = "under" if dt < TARGET_S else "OVER"
    print(
        f"{what:<22} {n:>7} tasks {dt:7.1f} s {rate:7.0f} tasks/s  peak {peak / 2**20:6.1f} MiB  "
        f"({verdict} the {TARGET_S:.0f} s target, {dt / TARGET_S:.2f}x)",
        flush=True,
    )
    for name, label in parts.items():
        if name in clock.spent:
            print(f"    {label:<38} {clock.spent[name]:7.1f} s", flush=True)
    return dt


def main() -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--budget", type=int, default=100, help="picks per round")
    p.add_argument("--url", default="")
    p.add_argument("--token", default="")
    args = p.parse_args()
    n, k = args.tasks, args.classes
    server = None
    if not args.url:
        import _label_studio_server as ls_server

        base = tempfile.mkdtemp(prefix="ls_bench_")
        t0 = time.time()
        server = ls_server.start(Path(base))
        print(f"Label Studio {ls_server.VERSION} at {server.url} (SQLite) up in {time.time() - t0:.0f}s")
        args.url, args.token = server.url, server.token
    try:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
        names = [f"class{i}" for i in range(k)]
        src = ArraySource(images, rng.integers(0, k, n), names, ids=np.arange(n))
        view = oracles.PoolView(src, np.arange(n), names)
        wd = tempfile.mkdtemp(prefix="ls_bench_run_")
        o = oracles.LabelStudioOracle(view, wd, run_name="bench", token=args.token, url=args.url, mode="pool")
        pm = o.pool_mode
        assert pm is not None
        o.project()
        clock = Clock()
        for name in ("_push_predictions", "_mark_picks", "save_view"):
            clock.wrap(pm if hasattr(pm, name) else o.server, name)
        parts = {
            "_push_predictions": "predictions, bulk (+ model version)",
            "_mark_picks": f"picks' round and rank ({api.PICK_WORKERS} at once)",
            "save_view": "saved views",
        }
        print(
            f"pool {n} tasks, {k} classes; import pages of {api.POOL_PAGE}; predictions up to "
            f"{api.PREDICTIONS_PER_REQUEST} a request; {args.budget} picks a round"
        )
        timed("import", n, pm.import_pool, clock, parts)
        labeled = np.zeros(n, bool)
        for r in (1, 2):
            probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
            scores = rng.random(n).astype(np.float32)
            scores[labeled] = -np.inf
            picks = np.argsort(-scores)[: args.budget]
            publish = functools.partial(o.publish, r, picks, scores, probs, labeled.copy())
            timed(f"round {r}: publish", n, publish, clock, parts)
            labeled[picks] = True
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
