"""Reports: per-run learning curves, and several runs (strategies × seeds) aggregated as in the papers' tables.

    python -m alpeft_jax.report DIR [DIR ...] [--out curves.png] [--metric accuracy]

Runs are grouped by their config's `name` (else strategy + calibration); each group gets mean ± std per round
over its seeds, printed as a markdown table, and one plot of accuracy and ECE against the number of labels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

Rows = list[dict[str, Any]]


def load_run(workdir: str) -> tuple[str, Rows]:
    """(group label, per-round rows) of one run directory."""
    path = os.path.join(workdir, "results.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no results.jsonl; is it a run directory with a finished round?")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    label = os.path.basename(os.path.normpath(workdir))
    cfg_path = os.path.join(workdir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        label = cfg.get("name") if cfg.get("name") not in (None, "", "run") else (
            f"{cfg['al']['strategy']}" + ("+calib" if cfg["train"]["calibration"] != "none" else "")
        )
    return label, rows


def group_runs(workdirs: Sequence[str]) -> dict[str, list[Rows]]:
    """Runs grouped by label, in first-seen order."""
    groups: dict[str, list[Rows]] = {}
    for d in workdirs:
        label, rows = load_run(d)
        groups.setdefault(label, []).append(rows)
    return groups


def _series(runs: list[Rows], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n_labeled, mean and std of `metric` over runs, over the rounds all runs have."""
    n = min(len(r) for r in runs)
    vals = np.asarray([[float(r[i][metric]) for i in range(n)] for r in runs])
    labels = np.asarray([runs[0][i]["n_labeled"] for i in range(n)])
    return labels, vals.mean(0), vals.std(0)


def markdown_table(groups: dict[str, list[Rows]], metric: str = "accuracy", scale: float = 100.0) -> str:
    """Rows = groups, columns = rounds (labels so far): mean ± std of `metric` over seeds."""
    n = min(min(len(r) for r in runs) for runs in groups.values())
    first = next(iter(groups.values()))[0]
    head = "| method | seeds | " + " | ".join(f"{first[i]['n_labeled']}" for i in range(n)) + " |"
    sep = "|---|---|" + "---|" * n
    lines = [f"{metric} ({'%' if scale == 100 else 'x1'}) by number of labels", "", head, sep]
    for label, runs in groups.items():
        _, mean, std = _series(runs, metric)
        cells = [f"{scale * m:.2f} ± {scale * s:.2f}" for m, s in zip(mean[:n], std[:n])]
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(groups: dict[str, list[Rows]], path: str) -> str:
    """Accuracy and ECE against labels, one line (mean, ±std band) per group; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, runs in groups.items():
        if not runs or not runs[0]:
            continue
        for ax, metric in zip(axes, ("accuracy", "ece")):
            x, mean, std = _series(runs, metric)
            ax.plot(x, 100 * mean, marker="o", label=label)
            if len(runs) > 1:
                ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
    for ax, title in zip(axes, ("test accuracy (%)", "ECE (%)")):
        ax.set_xlabel("labelled examples")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: aggregate run directories into a markdown table and a plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", default="", help="plot path (default: curves.png beside the first run)")
    p.add_argument("--metric", default="accuracy", help="accuracy | ece | nll | brier")
    args = p.parse_args(argv)
    try:
        groups = group_runs(args.workdirs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(groups, args.metric, 100.0 if args.metric in ("accuracy", "ece") else 1.0))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.workdirs[0])), "curves.png")
    print(f"\nplot: {plot_curves(groups, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
