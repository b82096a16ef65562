"""Reports: per-run learning curves, and several runs (strategies × seeds) aggregated as in the papers' tables.

    python -m alpeft_jax.report DIR [DIR ...] [--out curves.png] [--metric accuracy]
    python -m alpeft_jax.report DIR [DIR ...] --summary --against random,entropy+pcb

Runs are grouped by their config's `name` (else strategy + calibration); each group gets mean ± std per round
over its seeds, printed as a markdown table, and one plot of accuracy and ECE against the number of labels.
A run without a test set reports k-fold cross-validated estimates on its labels (results rows with
``evaluation: "cv"``): its tables, summary and plots say "cv" where a run with a test set says "test".
`--summary` prints one row per group instead: final-round and area-under-curve accuracy, the differences to each
`--against` group paired by seed (mean ± standard error over the seeds both ran), final ECE and NLL, how many
classes have labels and how many the least-labelled class has, seconds spent scoring and selecting per round, and
how often the calibration loss was active. Runs whose rows carry stop signals also get a table of where each
stopping rule (`alpeft_jax.stopping`) would have stopped them, the labels that saves and the accuracy given up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alpeft_jax.workdir import CONFIG_FILE, CURVES_FILE, RESULTS_FILE

Rows = list[dict[str, Any]]


def load_run(workdir: str) -> tuple[str, Rows]:
    """(group label, per-round rows) of one run directory."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no {RESULTS_FILE}; is it a run directory with a finished round?")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    label = os.path.basename(os.path.normpath(workdir))
    cfg_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        label = (
            cfg.get("name")
            if cfg.get("name") not in (None, "", "run")
            else (f"{cfg['al']['strategy']}" + ("+calib" if cfg["train"]["calibration"] != "none" else ""))
        )
    return label, rows


def run_seed(workdir: str) -> int | None:
    """The seed in a run directory's config.json (None without one)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("seed")


def group_runs_by_seed(workdirs: Sequence[str]) -> dict[str, dict[int, Rows]]:
    """Runs grouped by label, each group keyed by seed (two runs of one group with one seed is an error)."""
    groups: dict[str, dict[int, Rows]] = {}
    for i, d in enumerate(workdirs):
        label, rows = load_run(d)
        seed = run_seed(d)
        seed = -1 - i if seed is None else int(seed)
        if seed in groups.setdefault(label, {}):
            raise ValueError(f"{d}: a second run of {label!r} with seed {seed}; pass each run once.")
        groups[label][seed] = rows
    return groups


def group_runs(workdirs: Sequence[str]) -> dict[str, list[Rows]]:
    """Runs grouped by label, in first-seen order."""
    groups: dict[str, list[Rows]] = {}
    for d in workdirs:
        label, rows = load_run(d)
        groups.setdefault(label, []).append(rows)
    return groups


def evaluation(rows: Rows) -> str:
    """ "cv" for a run whose rows are cross-validated estimates (it had no test set), else "test"."""
    return "cv" if rows and all(r.get("evaluation") == "cv" for r in rows) else "test"


def _marks(groups: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(prefix of metric names, label of each group): "cv " / "test " when all groups agree, else the labels of
    the cv groups marked " (cv)"."""
    kinds = {
        label: evaluation(next(iter(runs.values())) if isinstance(runs, dict) else runs[0])
        for label, runs in groups.items()
        if runs
    }
    if len(set(kinds.values())) == 1:
        return f"{next(iter(kinds.values()))} ", {label: label for label in groups}
    return "", {label: f"{label} (cv)" if kinds.get(label) == "cv" else label for label in groups}


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
    prefix, shown = _marks(groups)
    where = "" if prefix else " (test set; cv: cross-validated on the labels)"
    lines = [f"{prefix}{metric} ({'%' if scale == 100 else 'x1'}) by number of labels{where}", "", head, sep]
    for label, runs in groups.items():
        _, mean, std = _series(runs, metric)
        cells = [f"{scale * m:.2f} ± {scale * s:.2f}" for m, s in zip(mean[:n], std[:n])]
        lines.append(f"| {shown[label]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def area_under_curve(rows: Rows, metric: str = "accuracy") -> float:
    """Trapezoid area of `metric` over the number of labels, divided by the label range (a mean over the curve)."""
    x = np.asarray([r["n_labeled"] for r in rows], np.float64)
    y = np.asarray([float(r[metric]) for r in rows], np.float64)
    if len(x) < 2:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2 / (x[-1] - x[0]))


def _final(rows: Rows, key: str) -> float:
    """`key` at the last round (NaN for runs that predate it)."""
    return float(rows[-1].get(key, float("nan")))


def _per_round(rows: Rows, key: str) -> float:
    """Mean of `key` over the selecting rounds (round 0 is a random draw)."""
    vals = [float(r[key]) for r in rows[1:] if r.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


SUMMARY_STATS = {  # name -> (statistic of one run's rows, display scale: 100 for percentages, decimals shown)
    "final accuracy": (lambda rows: _final(rows, "accuracy"), 100.0, 2),
    "AUC accuracy": (lambda rows: area_under_curve(rows, "accuracy"), 100.0, 2),
    "final ECE": (lambda rows: _final(rows, "ece"), 100.0, 2),
    "AUC ECE": (lambda rows: area_under_curve(rows, "ece"), 100.0, 2),
    "final NLL": (lambda rows: _final(rows, "nll"), 1.0, 3),
    "classes labelled": (lambda rows: _final(rows, "classes_covered"), 1.0, 1),
    "rarest class": (lambda rows: _final(rows, "rarest_class_labels"), 1.0, 1),
    "scoring s/round": (lambda rows: _per_round(rows, "seconds_scoring"), 1.0, 3),
    "selection s/round": (lambda rows: _per_round(rows, "seconds_selection"), 1.0, 3),
    "calibration active": (lambda rows: _per_round(rows, "calibration_active_share"), 100.0, 2),
    "train misclassified": (lambda rows: _per_round(rows, "train_misclassified_share"), 100.0, 2),
}


def _se(values: Any) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def paired_difference(a: dict[int, Rows], b: dict[int, Rows], stat: Any) -> tuple[float, float, int]:
    """Mean and standard error of stat(a) - stat(b) over the seeds both groups ran, and their number."""
    seeds = sorted(set(a) & set(b))
    d = np.asarray([stat(a[s]) - stat(b[s]) for s in seeds], np.float64)
    if len(d) == 0:
        return float("nan"), float("nan"), 0
    return float(d.mean()), _se(d), len(d)


def group_stat(runs: dict[int, Rows], column: str) -> tuple[float, float]:
    """Mean and std over a group's runs of a SUMMARY_STATS column, in display units (runs without it skipped)."""
    stat, scale, _ = SUMMARY_STATS[column]
    vals = np.asarray([stat(r) for r in runs.values()], np.float64) * scale
    ok = vals[~np.isnan(vals)]
    return (float(ok.mean()), float(ok.std())) if len(ok) else (float("nan"), float("nan"))


def complete_runs(runs: dict[int, Rows]) -> dict[int, Rows]:
    """The runs of a group that reached its most common number of rounds (unfinished runs left out)."""
    n = max((len(r) for r in runs.values()), default=0)
    return {s: r for s, r in runs.items() if len(r) == n}


def summary_table(
    groups: dict[str, dict[int, Rows]],
    columns: Sequence[str] = ("final accuracy", "AUC accuracy", "final ECE", "final NLL"),
    against: Sequence[str] = (),
    diff_stats: Sequence[str] = ("final accuracy", "AUC accuracy"),
) -> str:
    """One row per group: mean ± std over seeds of each column, then (group - reference) paired by seed ± s.e."""
    prefix, shown = _marks(groups)
    metric_words = ("accuracy", "ECE", "NLL")
    head = ["method", "seeds", *(f"{prefix}{c}" if c.split()[-1] in metric_words else c for c in columns)]
    for ref in against:
        head += [f"Δ {stat.split()[0]} vs {ref}" for stat in diff_stats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = {k: complete_runs(v) for k, v in groups.items()}
    missing = [ref for ref in against if ref not in groups]
    if missing:
        raise ValueError(f"--against {','.join(missing)} names no group; the groups are: {', '.join(groups)}")
    for label, runs in groups.items():
        cells = [shown[label], str(len(runs))]
        for col in columns:
            mean, std = group_stat(runs, col)
            digits = SUMMARY_STATS[col][2]
            cells.append("–" if np.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}")
        for ref in against:
            for col in diff_stats:
                stat, scale, _ = SUMMARY_STATS[col]
                if ref == label:
                    cells.append("–")
                    continue
                mean, se, n = paired_difference(runs, groups[ref], stat)
                cells.append("–" if n == 0 else f"{scale * mean:+.2f} ± {scale * se:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_curve_table(
    groups: dict[str, dict[int, Rows]], of: str, against: Sequence[str], metric: str = "accuracy", scale: float = 100.0
) -> str:
    """Rows = rounds (labels so far), columns = `of` - each group of `against` in `metric`, paired by seed at that
    round: mean ± standard error over the seeds both ran, in bold where it is at least twice its standard error."""
    runs = {k: complete_runs(v) for k, v in groups.items()}
    missing = [g for g in (of, *against) if g not in runs]
    if missing:
        raise ValueError(f"no runs of {', '.join(missing)}; the groups are: {', '.join(groups)}")
    n = min(len(r) for g in (of, *against) for r in runs[g].values())
    first = next(iter(runs[of].values()))
    lines = [
        "| labels | " + " | ".join(f"Δ vs {g}" for g in against) + " |",
        "|---|" + "---|" * len(against),
    ]
    for i in range(n):
        cells = []
        for g in against:
            mean, se, k = paired_difference(runs[of], runs[g], lambda rows, i=i: float(rows[i][metric]))
            sure = k > 1 and abs(mean) >= 2 * se and mean != 0
            cells.append(
                "–" if k == 0 else f"{'**' if sure else ''}{scale * mean:+.2f} ± {scale * se:.2f}{'**' if sure else ''}"
            )
        lines.append(f"| {first[i]['n_labeled']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COST_COLUMNS = (
    "AUC ECE",
    "classes labelled",
    "rarest class",
    "scoring s/round",
    "selection s/round",
    "calibration active",
    "train misclassified",
)


def summary_text(groups: dict[str, dict[int, Rows]], against: Sequence[str] = ()) -> str:
    """What `--summary` prints: the accuracy table with the paired differences, then the calibration and cost one."""
    return summary_table(groups, against=against) + "\n\n" + summary_table(groups, columns=COST_COLUMNS)


def stop_outcome(rows: Rows, rule: str, threshold: float | None = None) -> tuple[int, int, float, bool]:
    """Where `rule` (at `threshold`; None: as recorded) stops one run: its round, the labels saved against the last
    round, the accuracy given up there (points), and whether it stops before the last round."""
    from alpeft_jax.stopping import first_stop

    i = first_stop(rows, rule, threshold)
    early = i is not None and i < len(rows) - 1
    i = len(rows) - 1 if i is None else i
    saved = int(rows[-1]["n_labeled"] - rows[i]["n_labeled"])
    return int(rows[i]["round"]), saved, 100.0 * (float(rows[-1]["accuracy"]) - float(rows[i]["accuracy"])), early


def stop_table(groups: dict[str, dict[int, Rows]], rules: Sequence[str] = ("kappa", "gain")) -> str:
    """Where each stopping rule would have stopped each group's runs (the rows' stop signals, `stopping.py`).

    Per group and rule, over the runs with stop signals: how many stop before their last round, the stop round
    (mean ± std; a run the rule never stops counts at its last round), the labels that saves against labelling to
    the last round, and the accuracy given up there (final - at the stop, points, mean ± standard error).
    """
    head = ["method", "rule", "seeds", "stops early", "stop round", "labels saved", "accuracy given up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in groups.items():
        runs = {s: r for s, r in runs.items() if r and "stop_rules" in r[-1]}
        if not runs:
            continue
        for rule in rules:
            at, saved, lost, early = zip(*(stop_outcome(rows, rule) for rows in runs.values()))
            cells = [
                label,
                rule,
                str(len(runs)),
                f"{sum(early)} of {len(runs)}",
                f"{np.mean(at):.1f} ± {np.std(at):.1f}",
                f"{np.mean(saved):.1f} ± {np.std(saved):.1f}",
                f"{np.mean(lost):+.2f} ± {_se(lost):.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STOP_THRESHOLDS = {"kappa": (0.9, 0.93, 0.95, 0.97, 0.99), "gain": (0.01, 0.005, 0.0025, 0.001)}


def stop_sweep_stats(runs: Sequence[Rows], rule: str, threshold: float) -> dict[str, float]:
    """One rule at one threshold over runs: runs stopped early, mean labels saved, accuracy given up (mean, s.e.,
    worst; points)."""
    _, saved, lost, early = zip(*(stop_outcome(rows, rule, threshold) for rows in runs))
    return {
        "early": float(sum(early)),
        "saved": float(np.mean(saved)),
        "lost": float(np.mean(lost)),
        "lost_se": _se(lost),
        "worst": float(max(lost)),
    }


def stop_sweep_table(
    groups: dict[str, dict[int, Rows]], thresholds: Mapping[str, Sequence[float]] = STOP_THRESHOLDS
) -> str:
    """Each rule at each threshold over all the groups' runs together (read off their recorded signals): how many
    runs it stops early, the labels saved (mean), and the accuracy given up (mean ± standard error, and the worst)."""
    runs = [r for g in groups.values() for r in g.values() if r and "stop_rules" in r[-1]]
    head = ["rule", "threshold", "runs", "stops early", "labels saved", "accuracy given up", "worst given up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule, values in thresholds.items():
        for t in values:
            st = stop_sweep_stats(runs, rule, t)
            shown = f"mean kappa >= {t:g}" if rule == "kappa" else f"gain < {100 * t:g} points"
            cells = [
                rule,
                shown,
                str(len(runs)),
                f"{st['early']:.0f} of {len(runs)}",
                f"{st['saved']:.1f}",
                f"{st['lost']:+.2f} ± {st['lost_se']:.2f}",
                f"{st['worst']:+.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(groups: dict[str, list[Rows]], path: str) -> str:
    """Accuracy and ECE against labels, one line per group (mean; a ±std band up to 4 groups); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    prefix, shown = _marks(groups)
    for i, (label, runs) in enumerate(groups.items()):
        if not runs or not runs[0]:
            continue
        # ten colours, then the same colours dashed, dotted, ...: no two groups share a line style
        style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[i // 10 % 4], marker="osd^"[i // 10 % 4])
        for ax, metric in zip(axes, ("accuracy", "ece")):
            x, mean, std = _series(runs, metric)
            ax.plot(x, 100 * mean, label=shown[label], markersize=4, **style)
            if len(runs) > 1 and len(groups) <= 4:  # more bands than that hide the lines
                ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2, color=style["color"])
    titles = (f"{prefix}accuracy (%)", f"{prefix}ECE (%)") if prefix else ("accuracy (%), test or cv", "ECE (%)")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("labelled examples")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: aggregate run directories into a markdown table and a plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", default="", help="plot path (default: curves.png beside the first run)")
    p.add_argument("--metric", default="accuracy", help="accuracy | ece | nll | brier")
    p.add_argument("--summary", action="store_true", help="one row per group: final/AUC accuracy, ECE, NLL, cost")
    p.add_argument("--against", default="", help="with --summary: comma-separated groups to difference against")
    p.add_argument("--stop-sweep", action="store_true", help="each stopping rule at several thresholds, all runs")
    args = p.parse_args(argv)
    try:
        if args.summary:
            by_seed = group_runs_by_seed(args.workdirs)
            print(summary_text(by_seed, against=[a for a in args.against.split(",") if a]))
        groups = group_runs(args.workdirs)
        stops = stop_table({label: dict(enumerate(runs)) for label, runs in groups.items()})
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.summary:
        print(markdown_table(groups, args.metric, 100.0 if args.metric in ("accuracy", "ece") else 1.0))
    if stops.count("\n") > 1:
        print("\nWhere each stopping rule would have stopped (stop signals of the rows; al.stop, stopping.py):\n")
        print(stops)
        if args.stop_sweep:
            print("\nEach rule at other thresholds (read off the same signals; all runs together):\n")
            print(stop_sweep_table({label: dict(enumerate(runs)) for label, runs in groups.items()}))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.workdirs[0])), CURVES_FILE)
    print(f"\nplot: {plot_curves(groups, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
