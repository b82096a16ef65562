"""Selection time and peak memory: alpeft_jax strategies against scikit-activeml, side by side.

Every case (strategy, library, N, D, K, budget) runs in its own subprocess so that peak RSS
(resource.getrusage ru_maxrss) is not contaminated by other cases. "time" is a second call after a
warm-up call on the same data (JAX compiles on the first); "first" includes compilation. A peer case
whose estimated memory exceeds --peer-max-gb is skipped and the row says why. TCM has no peer: its row's peer is
the peer of the part it runs on that case (`tcm_part`: TypiClust below 3 labels per class, margin from there).

Full grid (slow; needs a large machine):
    python benchmarks/selection.py
Reduced run:
    python benchmarks/selection.py --n 10000 100000 --k 10 --budget 100 --strategies entropy coreset badge
On a GPU, `--on-device --no-peer` times selection from arrays already in device memory (the setting of the GPU
anchors); without it the host-to-device copy of the pool is part of every call's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL = ["entropy", "margin", "coreset", "badge", "typiclust", "probcover", "tcm"]


def tcm_part(n_labeled: int, k: int) -> str:
    """The strategy tcm runs on a case under its default rule (al.tcm.switch_per_class labels per class)."""
    from alpeft_jax import schema

    handed_off = n_labeled >= schema.default("al.tcm.switch_per_class") * k
    return str(schema.default("al.tcm.then" if handed_off else "al.tcm.first"))


def make_data(n: int, d: int, k: int, n_labeled: int, seed: int = 0) -> dict:
    """Synthetic pool: Gaussian-mixture features, linear logits, a random labelled set."""
    import numpy as np

    g = np.random.default_rng(seed)
    centres = g.normal(size=(k, d)).astype(np.float32)
    w = (g.normal(size=(d, k)) / np.sqrt(d)).astype(np.float32)
    feats = np.empty((n, d), np.float32)
    y = g.integers(0, k, n)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        feats[s:e] = centres[y[s:e]] + g.normal(size=(e - s, d)).astype(np.float32)
    logits = (feats @ w) * 3.0
    labeled = np.zeros(n, bool)
    labeled[g.choice(n, n_labeled, replace=False)] = True
    labels = np.where(labeled, y, -1)
    return {"features": feats, "logits": logits, "labels": labels, "labeled": labeled}


def peer_memory_gb(strategy: str, n: int, d: int, k: int, n_labeled: int = 0) -> float:
    """Rough peak-memory estimate for scikit-activeml (float64 copies dominate)."""
    if strategy == "tcm":
        strategy = tcm_part(n_labeled, k)
    if strategy in ("entropy", "margin"):
        return 3 * n * k * 8 / 1e9
    base = n * d * 8 * 2 / 1e9
    if strategy == "badge":
        return base + 2 * n * d * k * 8 / 1e9  # materialised N x (D*K) gradient embedding, plus a copy
    if strategy == "probcover":
        return base + 2 * n * n * 8 / 1e9  # full pairwise distance matrix
    return base


def run_ours(strategy: str, data: dict, budget: int) -> object:
    from alpeft_jax import strategies

    pool = {k: data[k] for k in ("features", "logits", "labels")}
    return strategies.get(strategy)(0, pool, data["labeled"], budget)


def to_device(data: dict) -> dict:
    """The pool's float arrays as device arrays (the host-to-device copy is then outside the timed call)."""
    import jax

    out = dict(data)
    for k in ("features", "logits"):
        out[k] = jax.block_until_ready(jax.device_put(data[k]))
    return out


def run_peer(strategy: str, data: dict, budget: int) -> object:
    import numpy as np
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import Badge, CoreSet, ProbCover, TypiClust, UncertaintySampling

    class FixedProba(SkactivemlClassifier):
        """predict_proba from stored probabilities; X is a column of row indices."""

        def __init__(self, probas=None, emb=None, classes=None, missing_label=-1):
            super().__init__(classes=classes, missing_label=missing_label)
            self.probas, self.emb = probas, emb

        def fit(self, X, y, sample_weight=None):
            self._validate_data(X, y)
            return self

        def predict_proba(self, X, return_embeddings=False):
            i = np.asarray(X)[:, 0].astype(int)
            return (self.probas[i], self.emb[i]) if return_embeddings else self.probas[i]

    labeled = data["labeled"]
    n, k = data["logits"].shape
    if strategy == "tcm":  # no peer has TCM: the peer of the part it runs on this case
        strategy = tcm_part(int(labeled.sum()), k)
    y = np.where(labeled, data["labels"], -1)
    lg = data["logits"].astype(np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.arange(n, dtype=float)[:, None]
    if strategy in ("entropy", "margin"):
        clf = FixedProba(p, classes=np.arange(k)).fit(idx, y)
        method = "entropy" if strategy == "entropy" else "margin_sampling"
        return UncertaintySampling(method=method, missing_label=-1, random_state=0).query(
            idx, y, clf, fit_clf=False, batch_size=budget
        )
    feats = data["features"].astype(np.float64)
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if strategy == "coreset":
        return CoreSet(missing_label=-1, random_state=0).query(fn, y, batch_size=budget)
    if strategy == "badge":
        clf = FixedProba(p, fn, classes=np.arange(k)).fit(idx, y)
        return Badge(clf_embedding_flag_name="return_embeddings", missing_label=-1, random_state=0).query(
            idx, y, clf, fit_clf=False, batch_size=budget
        )
    if strategy == "typiclust":
        return TypiClust(missing_label=-1, random_state=0, k=20).query(fn, y, batch_size=budget)
    if strategy == "probcover":
        return ProbCover(n_classes=k, missing_label=-1, random_state=0).query(fn, y, batch_size=budget)
    raise ValueError(f"unknown strategy {strategy!r}")


def child(spec: dict) -> None:
    """Run one case and print a JSON line with timings and peak RSS."""
    import resource

    data = make_data(spec["n"], spec["d"], spec["k"], spec["n_labeled"])
    if spec.get("on_device") and spec["lib"] == "ours":
        data = to_device(data)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    fn = run_ours if spec["lib"] == "ours" else run_peer
    if spec["lib"] == "ours":  # imports are not part of the selection time
        import alpeft_jax.strategies  # noqa: F401
    else:
        import skactiveml.pool  # noqa: F401
    t0 = time.perf_counter()
    out = fn(spec["strategy"], data, spec["budget"])
    first = time.perf_counter() - t0
    if spec["lib"] == "ours" and not spec.get("single_call"):  # steady state after compilation
        t0 = time.perf_counter()
        out = fn(spec["strategy"], data, spec["budget"])
        steady = time.perf_counter() - t0
    else:
        steady = first
    assert len(set(int(i) for i in out)) == spec["budget"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB -> GB
    print(json.dumps({"time": steady, "first": first, "peak_gb": peak, "data_gb": rss_data}))


def run_case(spec: dict, timeout: float) -> dict:
    """Run `child(spec)` in a fresh interpreter; returns its JSON or an error note."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))  # runs from a checkout
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"timeout > {timeout:.0f} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"note": f"failed rc={r.returncode}: {last[:80]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt(res: dict) -> str:
    if "time" not in res:
        return f"{'-':>8} {'-':>8} {'-':>7}"
    return f"{res['time']:8.3f} {res['first']:8.2f} {res['peak_gb']:7.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--budget", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--strategies", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--n-labeled", type=int, default=100)
    ap.add_argument("--no-peer", action="store_true", help="skip scikit-activeml")
    ap.add_argument("--peer-max-gb", type=float, default=8.0, help="skip peer cases estimated above this")
    ap.add_argument("--peer-max-n", type=int, default=10**9, help="skip peer cases with more examples")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    ap.add_argument(
        "--on-device",
        action="store_true",
        help="place features and logits on the default device before timing ours (GPU anchors)",
    )
    ap.add_argument(
        "--single-call",
        action="store_true",
        help="time our first call only (compilation included), for cases too long to run twice",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"cpu count {os.cpu_count()}; load average {load}; times in s ('first' includes JAX compilation), "
        "peak RSS in GB"
    )
    head = (
        f"{'strategy':10} {'N':>8} {'K':>4} {'b':>5} | {'ours':>8} {'first':>8} {'peakGB':>7} | "
        f"{'skal':>8} {'first':>8} {'peakGB':>7} | {'speedup':>7}  note"
    )
    print(head)
    print("-" * len(head))
    for strategy in args.strategies:
        for n in args.n:
            for k in args.k:
                for budget in args.budget:
                    spec = dict(
                        strategy=strategy,
                        n=n,
                        d=args.d,
                        k=k,
                        budget=budget,
                        n_labeled=args.n_labeled,
                        single_call=args.single_call,
                        on_device=args.on_device,
                    )
                    ours = run_case({**spec, "lib": "ours"}, args.timeout)
                    note = ours.get("note", "")
                    est = peer_memory_gb(strategy, n, args.d, k, args.n_labeled)
                    if args.no_peer:
                        peer = {"note": "peer not run"}
                    elif est > args.peer_max_gb:
                        peer = {"note": f"peer skipped: needs ~{est:.0f} GB > {args.peer_max_gb:.0f} GB"}
                    elif n > args.peer_max_n:
                        peer = {"note": f"peer skipped: N > --peer-max-n {args.peer_max_n}"}
                    else:
                        peer = run_case({**spec, "lib": "peer"}, args.timeout)
                    note = "; ".join(x for x in (note, peer.get("note", "")) if x)
                    speed = f"{peer['time'] / ours['time']:7.1f}x" if "time" in ours and "time" in peer else f"{'-':>8}"
                    print(
                        f"{strategy:10} {n:8d} {k:4d} {budget:5d} | {fmt(ours)} | {fmt(peer)} | {speed}  {note}",
                        flush=True,
                    )
    print("load average at the end " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
