r"""The study behind RESULTS.md: every run through the command line, then the tables and plots.

    python benchmarks/study.py run [--part linear,lora,linear20] [--groups core|extra|tcm|all] [--seeds 10] [--jobs 2]
    python benchmarks/study.py tables [--seeds 10]     # docs/study_tables.md and docs/study_*.png from the runs
    python benchmarks/study.py results                 # RESULTS.md: docs/RESULTS.template.md with every number filled
    python benchmarks/study.py save                    # finished runs into benchmarks/study_runs/ (run does it)
    make reproduce                                     # all of it

Each run is `python -m alpeft_jax.main --config=configs/study.py:<args> --workdir=workdirs/study/<part>/<group>/s<seed>`
(finished runs are skipped; a run killed half-way resumes from its checkpoint: `alpeft_jax.sweep.run_cells` runs
them). Runs go seed by seed, so an interrupted study still has the same seeds for every group. The tables are
`alpeft_jax.report.summary_table` (as `python -m alpeft_jax.report --summary`) over the finished runs,
`report.stop_table` for the stopping rules (from the stop signals every run records).

The run directories are scratch; what the tables need (each finished run's config name, seed, rounds and per-round
rows) is kept in `benchmarks/study_runs/<part>.jsonl.gz`, one line per run, which `run` updates as runs finish and
`tables` and `results` read together with the run directories (a run directory wins over its record). A section of
RESULTS.md or docs/study_tables.md whose runs are neither there nor recorded keeps its current text, so part of the
study can be rerun (e.g. `--groups tcm`) without losing the rest. `--groups tcm` runs only
TCM's comparison (tcm and the single strategies it is measured against, on the probe, LoRA and the probe's
20-round budget, part linear20). `--config-extra` appends config arguments to every run (e.g. `runlocal` for a
seconds-long smoke run under another `--root`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alpeft_jax import report, sweep  # noqa: E402

WORKDIR = os.path.join("workdirs", "study")
RECORDS = os.path.join(ROOT, "benchmarks", "study_runs")
UNCERTAINTY = ["random", "entropy", "margin", "least_confidence"]
DIVERSITY = ["coreset", "badge", "featdist", "typiclust", "probcover"]

# part -> {group directory: config-file arguments}; group names follow configs/study.py's run names.
PARTS: dict[str, dict[str, str]] = {
    "linear": {
        **{(s if s == "random" else f"{s}+pcb"): f"mode=linear,strategy={s}" for s in [*UNCERTAINTY, *DIVERSITY]},
        "tcm+pcb": "mode=linear,strategy=tcm",
        "entropy": "mode=linear,strategy=entropy,pcb=false",
        "entropy+calib+pcb": "mode=linear,strategy=entropy,calib",
        "margin+calib+pcb": "mode=linear,strategy=margin,calib",
        "badge+calib+pcb": "mode=linear,strategy=badge,calib",
        "raw-head:random": "mode=linear,strategy=random,head_scale=0,wd=0.01",
    },
    "lora": {
        "random": "mode=lora,strategy=random",
        "entropy+pcb": "mode=lora,strategy=entropy",
        "entropy+calib+pcb": "mode=lora,strategy=entropy,calib",
        "badge+pcb": "mode=lora,strategy=badge",
        "badge+calib+pcb": "mode=lora,strategy=badge,calib",
        "margin+pcb": "mode=lora,strategy=margin",
        "margin+calib+pcb": "mode=lora,strategy=margin,calib",
        "bald+pcb": "mode=lora,strategy=bald",
        "typiclust+pcb": "mode=lora,strategy=typiclust",
        "probcover+pcb": "mode=lora,strategy=probcover",
        "tcm+pcb": "mode=lora,strategy=tcm",
    },
    # A larger budget (20 rounds, 200 labels) so the hand-off has room: TCM against its parts and random.
    "linear20": {
        (s if s == "random" else f"{s}+pcb"): f"mode=linear,strategy={s},rounds=20"
        for s in ("random", "margin", "typiclust", "probcover", "tcm")
    },
    # Choosing the linear probe's head and weight decay (random sampling, 3 seeds): the table behind the default.
    # raw: a plain linear head on raw features; cosN: L2-normalised features x N; wd: AdamW's decoupled decay.
    "probe": {
        "raw-wd0.01": "mode=linear,strategy=random,head_scale=0,wd=0.01",
        "cos4-wd0.01": "mode=linear,strategy=random,head_scale=4,wd=0.01",
        "cos8-wd0.01": "mode=linear,strategy=random,head_scale=8,wd=0.01",
        "cos16-wd0.01": "mode=linear,strategy=random,head_scale=16,wd=0.01",
        "cos32-wd0.01": "mode=linear,strategy=random,head_scale=32,wd=0.01",
        "cos8-wd0.01-ep50": "mode=linear,strategy=random,head_scale=8,wd=0.01,epochs=50",
        "cos8-wd0.5": "mode=linear,strategy=random,head_scale=8,wd=0.5",
        "cos16-wd1": "mode=linear,strategy=random,head_scale=16,wd=1.0",
        "cos16-wd3": "mode=linear,strategy=random,head_scale=16,wd=3.0",
        "cos16-wd10": "mode=linear,strategy=random,head_scale=16,wd=10.0",
    },
}
PART_SEEDS = {"probe": 3}  # seeds 1..n only
PART_ROUNDS = {"linear20": 20}  # al.rounds where not ROUNDS
# The groups run first (`--groups core`): what the reading of RESULTS.md rests on; then the rest (`--groups extra`).
CORE = {
    "linear": [
        "random",
        "entropy+pcb",
        "margin+pcb",
        "least_confidence+pcb",
        "coreset+pcb",
        "featdist+pcb",
        "badge+pcb",
        "entropy",
        "entropy+calib+pcb",
        "raw-head:random",
    ],
    "lora": ["random", "entropy+pcb", "entropy+calib+pcb"],
    "probe": list(PARTS["probe"]),
    "linear20": [],
}
# TCM's comparison (`--groups tcm`): tcm and the single strategies the issue measures it against.
TCM = ["random", "margin+pcb", "typiclust+pcb", "probcover+pcb", "tcm+pcb"]
ROUNDS = 10


def finished(workdir: str, rounds: int = ROUNDS) -> bool:
    """Whether a run directory holds all its rounds' results (the al.rounds of its config.json where it has one)."""
    return sweep.finished(workdir, sweep.rounds_of(workdir) or rounds)


def select_groups(part: str, which: str) -> list[str]:
    """The groups of a part named by `which`: core | extra | all | a comma-separated list of group names."""
    if which == "all":
        return list(PARTS[part])
    if which == "core":
        return CORE[part]
    if which == "extra":
        return [g for g in PARTS[part] if g not in CORE[part]]
    if which == "tcm":
        return [g for g in TCM if g in PARTS[part]]
    return [g for g in which.split(",") if g in PARTS[part]]


def plan(
    parts: Sequence[str], seeds: Sequence[int], root: str = WORKDIR, groups: str = "all", extra: str = ""
) -> list[tuple[str, list[str]]]:
    """(workdir, command) of every run, seed-major (`extra`: config arguments added to each)."""
    out = []
    for seed in seeds:
        for part in parts:
            if seed > PART_SEEDS.get(part, seed):
                continue
            for group in select_groups(part, groups):
                args = PARTS[part][group] + (f",{extra}" if extra else "")
                workdir = os.path.join(root, part, group, f"s{seed}")
                cmd = [
                    sys.executable,
                    "-m",
                    "alpeft_jax.main",
                    f"--config=configs/study.py:{args},seed={seed}",
                    f"--workdir={workdir}",
                ]
                out.append((workdir, cmd))
    return out


def cells(
    parts: Sequence[str], seeds: Sequence[int], root: str = WORKDIR, groups: str = "all", extra: str = ""
) -> list[sweep.Cell]:
    """The study's runs as cells of `alpeft_jax.sweep`: logs beside each run (run.log); a part's runs share its
    feature cache, so its first run warms the cache before the others start."""
    return [
        sweep.Cell(os.path.relpath(w, root), w, tuple(c), os.path.join(w, "run.log"), warm_key=w.split(os.sep)[-3])
        for w, c in plan(parts, seeds, root, groups, extra)
    ]


def run_all(
    parts: Sequence[str],
    seeds: Sequence[int],
    jobs: int,
    root: str = WORKDIR,
    groups: str = "all",
    extra: str = "",
    records: str | None = None,
) -> int:
    """Run every unfinished run, `jobs` at a time (`alpeft_jax.sweep.run_cells`), then record the finished ones in
    `records` (None: not recorded); returns the number that failed."""
    outcomes, stopped = sweep.run_cells(cells(parts, seeds, root, groups, extra), [{}] * jobs, cwd=ROOT)
    if records and not extra:  # a run with extra config arguments is not the study's
        save(parts, seeds, root, records)
    if stopped is not None:
        print("stopped; rerun the same command to resume", file=sys.stderr)
        return 128 + stopped
    return sum(o.status in ("failed", "unfinished") for o in outcomes)


def _record_path(records: str, part: str) -> str:
    return os.path.join(records, f"{part}.jsonl.gz")


def read_records(part: str, records: str | None) -> dict[str, dict[int, dict]]:
    """The recorded runs of a part: group -> seed -> {"name", "seed", "rounds", "rows"} (empty without a record)."""
    import gzip
    import json

    path = None if records is None else _record_path(records, part)
    if path is None or not os.path.exists(path):
        return {}
    out: dict[str, dict[int, dict]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out.setdefault(rec["group"], {})[int(rec["seed"])] = rec
    return out


def save(parts: Sequence[str], seeds: Sequence[int], root: str = WORKDIR, records: str = RECORDS) -> int:
    """Record every finished run of `parts` under `root` in records/<part>.jsonl.gz (kept: the other records);
    returns the number of runs recorded now."""
    import gzip
    import json

    count = 0
    for part in parts:
        recs = read_records(part, records)
        for group in PARTS[part]:
            for seed in seeds:
                d = os.path.join(root, part, group, f"s{seed}")
                rounds = sweep.rounds_of(d) or PART_ROUNDS.get(part, ROUNDS)
                if sweep.finished(d, rounds):
                    name, rows = report.load_run(d)
                    recs.setdefault(group, {})[seed] = {
                        "group": group,
                        "seed": seed,
                        "name": name,
                        "rounds": rounds,
                        "rows": rows,
                    }
                    count += 1
        if not recs:
            continue
        os.makedirs(records, exist_ok=True)
        lines = [json.dumps(recs[g][s], sort_keys=True) + "\n" for g in sorted(recs) for s in sorted(recs[g])]
        tmp = _record_path(records, part) + ".tmp"
        with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime 0: the same runs give the same bytes
            f.write("".join(lines).encode())
        os.replace(tmp, _record_path(records, part))
    return count


def load_part(
    part: str, seeds: Sequence[int], root: str = WORKDIR, records: str | None = None
) -> dict[str, dict[int, list[dict]]]:
    """Finished runs of a part: group (its directory name) -> seed -> per-round rows, from the run directories
    under `root` and, for runs not there, from the records (`save`)."""
    recorded = read_records(part, records)
    out: dict[str, dict[int, list[dict]]] = {}
    for group in PARTS[part]:
        for seed in seeds:
            d = os.path.join(root, part, group, f"s{seed}")
            rec = recorded.get(group, {}).get(seed)
            if finished(d, PART_ROUNDS.get(part, ROUNDS)):
                out.setdefault(group, {})[seed] = report.load_run(d)[1]
            elif rec is not None and len(rec["rows"]) >= rec["rounds"]:
                out.setdefault(group, {})[seed] = rec["rows"]
    return out


COST = ("final ECE", "AUC ECE", "final NLL", *report.COST_COLUMNS[1:])  # report --summary's, with the finals
PROBE = ("final accuracy", "AUC accuracy", "final ECE", "AUC ECE", "final NLL")


def load_all(seeds: Sequence[int], root: str = WORKDIR, records: str | None = None) -> tuple[dict, dict]:
    """Every part's finished runs, and the groups LoRA and the probe both ran (named part:group)."""
    parts = {part: load_part(part, seeds, root, records) for part in PARTS}
    both = {
        f"{p}:{g}": runs
        for p in ("linear", "lora")
        for g, runs in parts[p].items()
        if g in CORE["lora"] and g in parts["linear"] and g in parts["lora"]
    }
    return parts, both


def _acc_table(by_seed: dict, against: Sequence[str]) -> str:
    return report.summary_table(by_seed, against=[a for a in against if a in by_seed])


def _part_tables(by_seed: dict[str, dict[int, list[dict]]], against: Sequence[str]) -> list[str]:
    return [
        "Accuracy (%): mean ± std over seeds; Δ: the difference paired by seed, mean ± standard error.",
        "",
        _acc_table(by_seed, against),
        "",
        "Calibration and cost (per selecting round; calibration active: share of update steps with a non-zero "
        "calibration loss; train misclassified: share of the labelled batch the model gets wrong while "
        "training).",
        "",
        report.summary_table(by_seed, columns=COST),
        "",
    ]


class Missing(LookupError):
    """A table or number whose runs are neither in the run directories nor in the records."""


def split_sections(text: str) -> list[tuple[str, str]]:
    """(heading line, its text up to the next heading) of a markdown text; the text before the first: heading ""."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines(keepends=True):
        if line.startswith("#"):
            out.append((line.rstrip("\n"), []))
        out[-1][1].append(line)
    return [(h, "".join(lines)) for h, lines in out if lines or h]


def merge_sections(
    new: Sequence[tuple[str, str | None]], old_text: str, fallback: Callable[[str], str] = lambda h: "\n(not run)\n\n"
) -> tuple[str, list[str]]:
    """The new sections (heading, text under it) in order, each None one (its runs missing) replaced by the old
    text's section of the same heading, or else by fallback(heading); returns the text and the headings kept."""
    old = dict(split_sections(old_text))
    parts, kept = [], []
    for heading, body in new:
        if body is None and heading in old:
            parts.append(old[heading])
            kept.append(heading)
        else:
            parts.append((f"{heading}\n" if heading else "") + (body if body is not None else fallback(heading)))
    return "".join(parts), kept


def _complete(by_seed: dict, groups: Iterable[str]) -> bool:
    return all(g in by_seed for g in groups)


def tables(
    seeds: Sequence[int], out_dir: str = "docs", root: str = WORKDIR, records: str | None = None
) -> tuple[str, list[str]]:
    """Markdown of every table of the study (also written to out_dir/study_tables.md) and the plots; a section
    whose groups are not all there keeps its text in the existing file. Returns the text and the kept headings."""
    sections: list[tuple[str, str | None]] = []
    parts, both = load_all(seeds, root, records)
    titles = {
        "linear": "Linear probe (cosine head)",
        "lora": "LoRA on the last block + cosine head",
        "linear20": "Linear probe, 20 rounds (200 labels)",
    }
    os.makedirs(out_dir, exist_ok=True)
    probe = parts.pop("probe")
    sections.append(
        (
            "## Choosing the linear probe's head (random sampling, seeds 1-3)",
            _lines("", report.summary_table(probe, columns=PROBE), "") if _complete(probe, PARTS["probe"]) else None,
        )
    )
    for part, by_seed in parts.items():
        if not _complete(by_seed, PARTS[part]):
            sections.append((f"## {titles[part]}", None))
            continue
        groups = {k: list(report.complete_runs(v).values()) for k, v in by_seed.items()}
        body = [
            "",
            *_part_tables(by_seed, ["random", "entropy+pcb"]),
            *[f"{what} by round:\n\n{report.markdown_table(groups, key, *scale)}\n" for what, key, scale in BY_ROUND],
        ]
        sections.append((f"## {titles[part]}", _lines(*body)))
        report.plot_curves(
            {k: v for k, v in groups.items() if not k.startswith("raw-head")},
            os.path.join(out_dir, f"study_{part}.png"),
        )
        if "raw-head:random" in groups:
            report.plot_curves(
                {k: groups[k] for k in ("random", "raw-head:random") if k in groups},
                os.path.join(out_dir, "study_linear_heads.png"),
            )
    for part, by_seed in parts.items():
        done = _complete(by_seed, tcm_groups(part))
        sections.append(
            (
                f"## TCM against single strategies: {titles[part]}",
                _lines("", tcm_table(by_seed), "", TCM_CURVE_NOTE, "", tcm_curve_table(by_seed), "") if done else None,
            )
        )
        stops = stop_rows(by_seed)
        sections.append(
            (
                f"## Where each stopping rule would have stopped: {titles[part]}",
                _lines("", STOP_NOTE, "", report.stop_table(stops), "", report.stop_sweep_table(stops), "")
                if stops
                else None,
            )
        )
    lora = CORE["lora"]
    sections.append(
        (
            "## LoRA against the linear probe (the same pool, seeds and initial labels)",
            _lines("", *_part_tables(both, ["linear:random", "linear:entropy+pcb"]))
            if _complete(both, [f"{p}:{g}" for p in ("linear", "lora") for g in lora])
            else None,
        )
    )
    path = os.path.join(out_dir, "study_tables.md")
    old = open(path).read() if os.path.exists(path) else ""
    text, kept = merge_sections([("", TABLES_HEAD + "\n\n"), *sections], old)
    with open(path, "w") as f:
        f.write(text)
    return text, kept


TABLES_HEAD = "<!-- written by `python benchmarks/study.py tables`; do not edit -->"
BY_ROUND = (("Accuracy", "accuracy", ()), ("ECE", "ece", ()), ("NLL", "nll", (1.0,)))


def _lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


TCM_CURVE_NOTE = (
    "Along the curve: tcm minus each single strategy at every round, paired by seed (accuracy points, mean ± "
    "standard error; bold: at least twice its standard error)."
)
STOP_NOTE = (
    "Per rule, over the seeds (runs with stop signals; al.stop=none, so every run labels to its last round): how "
    "many it stops before the last round, the round it stops at (never: the last round), the labels that saves and "
    "the accuracy given up there against labelling to the end (points, mean ± standard error)."
)


def tcm_table(by_seed: dict[str, dict[int, list[dict]]]) -> str:
    """TCM and the single strategies it is measured against: accuracy, and Δ to each of them paired by seed."""
    groups = {g: by_seed[g] for g in TCM if g in by_seed}
    against = [g for g in groups if g != "tcm+pcb"]
    return report.summary_table(groups, columns=("final accuracy", "AUC accuracy"), against=against)


def tcm_groups(part: str) -> list[str]:
    """The groups of TCM's comparison that a part runs."""
    return [g for g in TCM if g in PARTS[part]]


def tcm_curve_table(by_seed: dict[str, dict[int, list[dict]]]) -> str:
    """TCM minus each single strategy at every round (labels so far), paired by seed."""
    groups = {g: by_seed[g] for g in TCM if g in by_seed}
    return report.paired_curve_table(groups, "tcm+pcb", [g for g in groups if g != "tcm+pcb"])


def stop_rows(by_seed: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, list[dict]]]:
    """The groups whose runs carry stop signals (runs made before the signals existed have none)."""
    return {g: runs for g, runs in by_seed.items() if any(r and "stop_rules" in r[-1] for r in runs.values())}


def _fmt_diff(a: dict, b: dict, key: str, seeds: int = 10) -> str:
    stat, scale, _ = report.SUMMARY_STATS["final accuracy" if key == "final" else "AUC accuracy"]
    mean, se, n = report.paired_difference(report.complete_runs(a), report.complete_runs(b), stat)
    return f"{scale * mean:+.1f} ± {scale * se:.1f}" + (f" ({n} seeds)" if n < seeds else "")


def fill_template(
    text: str, seeds: Sequence[int], root: str = WORKDIR, records: str | None = None, old: str = ""
) -> tuple[str, list[str]]:
    """RESULTS.md from its template: every {{...}} is a number or a table computed from the finished runs; a
    section (a heading and its text) with a value whose runs are missing keeps its text in `old` (the current
    RESULTS.md). Returns the text and the headings kept from `old`.

    {{d|part|A|B|final or AUC}}: A - B paired by seed; {{d|both|partA|A|partB|B|...}} across parts;
    {{active|part|group}}, {{miss|part|group}}: calibration-active and misclassified shares; {{sel|part|group}},
    {{score|part|group}}: selection and scoring seconds per round; {{classes|part|group}}: classes labelled at the
    end; {{rarest|part|group}}: labels of the least-labelled class at the end; {{probe}}, {{linear_acc}},
    {{linear_cost}}, {{lora_acc}}, {{lora_cost}}, {{both_acc}}, {{tcm_<part>}}, {{tcm_curve_<part>}},
    {{stop_<part>}}, {{stop_sweep_<part>}} (part linear, lora or linear20): the tables of `tables`, each only with
    all its groups there; {{sweep|part|rule|threshold}}: one row of the stop sweep, in words.
    """
    import re

    parts, both = load_all(seeds, root, records)

    def need(by_seed: dict, groups: Iterable[str]) -> dict:
        groups = list(groups)
        if not _complete(by_seed, groups):
            raise Missing(", ".join(g for g in groups if g not in by_seed))
        return by_seed

    def tcm_of(p: str) -> str:
        return tcm_table(need(parts[p], tcm_groups(p)))

    def tcm_curve_of(p: str) -> str:
        return tcm_curve_table(need(parts[p], tcm_groups(p)))

    def stop_of(p: str) -> str:
        return report.stop_table(need(stop_rows(parts[p]), tcm_groups(p)))

    def stop_sweep_of(p: str) -> str:
        return report.stop_sweep_table(need(stop_rows(parts[p]), tcm_groups(p)))

    both_groups = [f"{p}:{g}" for p in ("linear", "lora") for g in CORE["lora"]]
    tables_: dict[str, Callable[[], str]] = {
        "probe": lambda: report.summary_table(need(parts["probe"], PARTS["probe"]), columns=PROBE),
        "linear_acc": lambda: _acc_table(need(parts["linear"], PARTS["linear"]), ["random", "entropy+pcb"]),
        "linear_cost": lambda: report.summary_table(need(parts["linear"], PARTS["linear"]), columns=COST),
        "lora_acc": lambda: _acc_table(need(parts["lora"], PARTS["lora"]), ["random", "entropy+pcb"]),
        "lora_cost": lambda: report.summary_table(need(parts["lora"], PARTS["lora"]), columns=COST),
        "both_acc": lambda: _acc_table(need(both, both_groups), ["linear:random", "linear:entropy+pcb"]),
        **{f"tcm_{p}": partial(tcm_of, p) for p in ("linear", "lora", "linear20")},
        **{f"tcm_curve_{p}": partial(tcm_curve_of, p) for p in ("linear", "lora", "linear20")},
        **{f"stop_{p}": partial(stop_of, p) for p in ("linear", "lora", "linear20")},
        **{f"stop_sweep_{p}": partial(stop_sweep_of, p) for p in ("linear", "lora", "linear20")},
    }

    def one(m: re.Match) -> str:
        f = m.group(1).split("|")
        if len(f) == 1:
            return tables_[f[0]]()
        if f[0] == "sweep":  # {{sweep|part|rule|threshold}}: one stopping rule's outcome over the part's tcm runs
            runs = [r for g in need(stop_rows(parts[f[1]]), tcm_groups(f[1])).values() for r in g.values()]
            st = report.stop_sweep_stats(runs, f[2], float(f[3]))
            return (
                f"{st['early']:.0f} of {len(runs)} runs stop early, {st['saved']:.0f} labels saved on average, "
                f"{st['lost']:+.1f} ± {st['lost_se']:.1f} points given up (worst {st['worst']:+.1f})"
            )
        named = [(f[2], f[3]), (f[4], f[5])] if f[1] == "both" else [(f[1], g) for g in f[2 : 4 if f[0] == "d" else 3]]
        for p, g in named:
            need(parts[p], [g])
        if f[0] == "d" and f[1] == "both":
            return _fmt_diff(parts[f[2]][f[3]], parts[f[4]][f[5]], f[6], len(seeds))
        if f[0] == "d":
            return _fmt_diff(parts[f[1]][f[2]], parts[f[1]][f[3]], f[4], len(seeds))
        col = {
            "active": "calibration active",
            "miss": "train misclassified",
            "sel": "selection s/round",
            "score": "scoring s/round",
            "classes": "classes labelled",
            "rarest": "rarest class",
        }[f[0]]
        value = report.group_stat(parts[f[1]][f[2]], col)[0]
        return f"{value:.1f}" + (" %" if report.SUMMARY_STATS[col][1] == 100.0 else "")

    def lenient(m: re.Match) -> str:
        try:
            return one(m)
        except Missing:
            return "(not run)"

    def fill(section: str, strict: bool = True) -> str | None:
        try:
            return re.sub(r"\{\{([^}]+)\}\}", one if strict else lenient, section)
        except Missing:
            return None

    sections = dict(split_sections(text))
    under = lambda h, body: body[len(h) + 1 :] if h else body  # noqa: E731  the text below the heading line
    new = [(h, None if (body := fill(section)) is None else under(h, body)) for h, section in sections.items()]
    return merge_sections(new, old, lambda h: under(h, fill(sections[h], strict=False) or ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `run` the study's runs, or print and write its `tables`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("run", "tables", "plan", "results", "save"))
    p.add_argument("--template", default=os.path.join("docs", "RESULTS.template.md"))
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--part", default="linear,lora,probe,linear20", help="comma-separated: " + ", ".join(PARTS))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--groups", default="all", help="core | extra | tcm | all | comma-separated group names")
    p.add_argument("--config-extra", default="", help="config arguments added to every run, e.g. runlocal")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--root", default=WORKDIR)
    p.add_argument("--records", default=RECORDS, help="the recorded runs' directory ('': none)")
    args = p.parse_args(argv)
    parts = [x for x in args.part.split(",") if x]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        print(f"error: unknown --part {','.join(unknown)}; use {','.join(PARTS)}", file=sys.stderr)
        return 2
    seeds = list(range(1, args.seeds + 1))
    records = args.records or None
    if args.what == "save" and not args.records:
        print("error: save needs --records DIR", file=sys.stderr)
        return 2
    if args.what == "plan":
        for w, c in plan(parts, seeds, args.root, args.groups, args.config_extra):
            print(("done " if finished(w) else "todo ") + " ".join(c[1:]))
        return 0
    if args.what == "run":
        failed = run_all(parts, seeds, args.jobs, args.root, args.groups, args.config_extra, records)
        return failed if failed >= 128 else (1 if failed else 0)
    if args.what == "save":
        print(f"recorded {save(parts, seeds, args.root, args.records)} finished runs in {args.records}")
        return 0
    if args.what == "results":
        with open(args.template) as f:
            template = f.read()
        old = open(args.out).read() if os.path.exists(args.out) else ""
        text, kept = fill_template(template, seeds, args.root, records, old)
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}" + (f"; kept as they were (runs missing): {'; '.join(kept)}" if kept else ""))
        return 0
    text, kept = tables(seeds, root=args.root, records=records)
    print(text)
    if kept:
        print(f"kept as they were in docs/study_tables.md (runs missing): {'; '.join(kept)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
