"""label_studio.mode=pool at scale against a real Label Studio (the tests' server: SQLite, its own venv).

    python benchmarks/label_studio_pool.py [--tasks 10000] [--field-pages K] [--url URL --token TOKEN]

Imports a pool of `--tasks` small inline images (16x16 PNGs) in pages, pushes round 1's predictions for every
task, writes round 1's Data Manager fields, then pushes round 2's predictions and fields (the next round's
update). Prints each phase's seconds, its rate in tasks/s, and the peak Python memory it allocated (tracemalloc),
next to the 60 s target. Label Studio's API has no bulk update of task data, so fields go one request per task
(api.FIELD_WORKERS at once); `--field-pages K` times the fields of the first K pages only and prints the rate
(and the whole pool's time at that rate, marked "at the measured rate"). Without --url a server is started in a
temporary folder and stopped at the end.
"""

from __future__ import annotations

import argparse
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
from alpeft_jax.oracles.label_studio import api, pool, rules  # noqa: E402

TARGET_S = 60.0


def timed(what: str, n: int, fn, extrapolate_to: int | None = None) -> float:
    """Run fn(), print its seconds, tasks/s and peak allocated memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rate = n / dt if dt > 0 else float("inf")
    line = f"{what:<34} {n:>7} tasks {dt:8.1f} s {rate:8.0f} tasks/s  peak {peak / 2**20:6.1f} MiB"
    if extrapolate_to:
        line += f"  -> {extrapolate_to / rate:7.0f} s for {extrapolate_to} at the measured rate"
    total = dt if not extrapolate_to else extrapolate_to / rate
    print(f"{line}  ({'under' if total < TARGET_S else 'OVER'} the {TARGET_S:.0f} s target)", flush=True)
    return dt


def main() -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--field-pages", type=int, default=0, help="time the fields of this many pages (0: all)")
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
        pid = o.project()["id"]
        size = api.POOL_PAGE
        pages = (n + size - 1) // size
        field_pages = min(pages, args.field_pages or pages)
        field_n = min(n, field_pages * size)
        print(f"pool {n} tasks, {k} classes, pages of {size}; fields with {api.FIELD_WORKERS} requests in flight")
        rec: dict = {}

        def do_import() -> None:
            rec.update(pm.import_pool())

        timed("import", n, do_import)
        labeled = np.zeros(n, bool)
        for r in (1, 2):
            probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
            scores = rng.random(n).astype(np.float32)
            top = np.argmax(probs, -1)
            picks = np.argsort(-scores)[:100]
            rank = pool.ranks(n, picks, scores, labeled)
            chosen = pm._selected_rounds(r, picks)
            version = o.model_version(r)

            def push(probs=probs, top=top, version=version) -> None:
                for page in range(pages):
                    rows = np.arange(page * size, min(n, (page + 1) * size))
                    tids = pm.task_ids(rec)[rows]
                    preds = [
                        {
                            "task": int(t),
                            "model_version": version,
                            "score": float(probs[row, top[row]]),
                            "result": rules.choice_result(o.project(), names[top[row]]),
                        }
                        for row, t in zip(rows, tids)
                    ]
                    pm._push(pid, page, preds, int(tids[-1]), version)
                o.server.set_model_version(pid, version)

            def write_fields(probs=probs, top=top, scores=scores, rank=rank, chosen=chosen) -> None:
                for page in range(field_pages):
                    rows = np.arange(page * size, min(n, (page + 1) * size))
                    pm._fields_page(pid, rec, page, rows, pm.task_ids(rec)[rows], rank, scores, probs, top, chosen)

            timed(f"round {r}: predictions", n, push)
            timed(f"round {r}: fields", field_n, write_fields, None if field_n == n else n)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
