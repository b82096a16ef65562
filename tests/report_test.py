"""Reports over many runs: seed-paired differences, area under the curve, the study runner's plan and tables."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics

import numpy as np
import pytest

from alpeft_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study():
    spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "benchmarks", "study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_run(
    path,
    name: str,
    seed: int,
    acc: list[float],
    ece: float = 0.1,
    active: float | None = None,
    labels: list[int] | None = None,
) -> str:
    os.makedirs(path, exist_ok=True)
    counts = np.bincount(labels or [], minlength=10)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"name": name, "seed": seed, "al": {"strategy": "x"}, "train": {"calibration": "none"}}, f)
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        for r, a in enumerate(acc):
            row = {
                "round": r,
                "n_labeled": 10 * (r + 1),
                "accuracy": a,
                "ece": ece,
                "nll": 1.0 - a,
                "seconds_scoring": 2.0,
                "seconds_selection": 0.5 + seed,
                "train_misclassified_share": 0.25,
                "classes_covered": len(set(labels or [])) if r == len(acc) - 1 else 0,
                "rarest_class_labels": int(counts.min()) if r == len(acc) - 1 else 0,
            }
            if active is not None:
                row["calibration_active_share"] = active
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_paired_differences_and_auc_against_a_hand_computation(tmp_path):
    rng = np.random.default_rng(0)
    curves = {(g, s): list(np.round(rng.uniform(0.4, 0.9, 4), 4)) for g in ("a", "b") for s in (1, 2, 3, 4)}
    dirs = [
        _write_run(tmp_path / g / str(s), g, s, c, active=0.5 if g == "a" else None) for (g, s), c in curves.items()
    ]
    dirs.append(_write_run(tmp_path / "b" / "5", "b", 5, [0.5, 0.6, 0.7, 0.8]))  # seed 5: b only, not paired
    groups = report.group_runs_by_seed(dirs)
    assert set(groups) == {"a", "b"} and sorted(groups["b"]) == [1, 2, 3, 4, 5]

    # AUC: mean height of the piecewise-linear curve over 10..40 labels
    c = curves[("a", 1)]
    assert report.area_under_curve(groups["a"][1]) == pytest.approx(
        ((c[0] + c[1]) / 2 + (c[1] + c[2]) / 2 + (c[2] + c[3]) / 2) / 3
    )

    diffs = [curves[("a", s)][-1] - curves[("b", s)][-1] for s in (1, 2, 3, 4)]
    mean, se, n = report.paired_difference(groups["a"], groups["b"], lambda rows: rows[-1]["accuracy"])
    assert n == 4 and mean == pytest.approx(statistics.mean(diffs))
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(4))

    table = report.summary_table(groups, against=["b"])
    row_a = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert f"{100 * statistics.mean(diffs):+.2f} ± {100 * statistics.stdev(diffs) / 2:.2f}" in row_a
    finals_a = [100 * curves[("a", s)][-1] for s in (1, 2, 3, 4)]
    assert f"{statistics.mean(finals_a):.2f} ± {statistics.pstdev(finals_a):.2f}" in row_a
    cost = report.summary_table(groups, columns=("selection s/round", "calibration active", "train misclassified"))
    assert "| a | 4 | 3.000 ± 1.118 | 50.00 ± 0.00 | 25.00 ± 0.00 |" in cost  # seeds 1-4: 1.5 .. 4.5 s
    assert "| b | 5 | 3.500 ± 1.414 | – | 25.00 ± 0.00 |" in cost  # no calibration loss: no share


def test_bad_report_input_is_one_line(tmp_path, capsys):
    a = _write_run(tmp_path / "a1", "a", 1, [0.5, 0.6])
    b = _write_run(tmp_path / "a1again", "a", 1, [0.5, 0.7])
    assert report.main([a, b, "--summary"]) == 2
    assert "a second run of 'a' with seed 1" in capsys.readouterr().err
    assert report.main([a, "--summary", "--against", "nosuch"]) == 2
    assert "--against nosuch names no group; the groups are: a" in capsys.readouterr().err
    assert report.main([str(tmp_path / "empty"), "--summary"]) == 2
    assert "has no results.jsonl" in capsys.readouterr().err


def test_study_plan_is_seed_major_and_skips_finished_runs(tmp_path):
    study = _study()
    runs = study.plan(["linear", "lora"], [1, 2], root=str(tmp_path))
    per_seed = len(study.PARTS["linear"]) + len(study.PARTS["lora"])
    assert len(runs) == 2 * per_seed
    assert all("seed=1" in cmd[3] for _, cmd in runs[:per_seed]) and all("seed=2" in c[3] for _, c in runs[per_seed:])
    # every run of the grid is a valid configs/study.py argument string
    spec = importlib.util.spec_from_file_location("study_cfg", os.path.join(ROOT, "configs", "study.py"))
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    for workdir, cmd in runs:
        c = cfg.get_config(cmd[3].split(":", 1)[1])
        group = workdir.split(os.sep)[-2]
        assert c.name.split(":", 1)[1] == group.split(":")[-1], (c.name, group)
    assert len(study.plan(["probe"], [1, 2, 3, 4, 5], root=str(tmp_path))) == 3 * len(study.PARTS["probe"])
    core = study.plan(["lora"], [1], root=str(tmp_path), groups="core")
    assert [w.split(os.sep)[-2] for w, _ in core] == study.CORE["lora"]
    done = runs[0][0]
    _write_run(done, "x", 1, [0.1] * study.ROUNDS)
    half = runs[1][0]
    _write_run(half, "x", 1, [0.1] * 3)
    assert study.finished(done) and not study.finished(half)
    # the runs as cells of alpeft_jax.sweep's runner: a log beside each run, a part's runs sharing its cache
    cells = study.cells(["linear", "lora"], [1], root=str(tmp_path))
    assert [c.argv for c in cells] == [tuple(cmd) for _, cmd in study.plan(["linear", "lora"], [1], str(tmp_path))]
    assert {c.warm_key for c in cells} == {"linear", "lora"} and cells[0].log == os.path.join(runs[0][0], "run.log")
    # TCM's comparison: its groups on the probe, LoRA and the 20-round probe; extra config arguments reach each run
    tcm = study.plan(["linear", "lora", "linear20"], [1], root=str(tmp_path), groups="tcm", extra="runlocal")
    assert [w.split(os.sep)[-3:-1] for w, _ in tcm] == [
        [p, g] for p in ("linear", "lora", "linear20") for g in study.TCM
    ]
    for _, cmd in tcm:
        c = cfg.get_config(cmd[3].split(":", 1)[1])
        assert cmd[3].endswith(",runlocal,seed=1") and c.al.rounds == 2  # runlocal: a seconds-long run
    assert cfg.get_config(tcm[-1][1][3].split(":", 1)[1].replace(",runlocal", "")).al.rounds == 20
    finished20 = _write_run(tmp_path / "r20", "x", 1, [0.1] * 10)
    with open(os.path.join(finished20, "config.json"), "w") as f:
        json.dump({"name": "x", "seed": 1, "al": {"strategy": "tcm", "rounds": 20}}, f)
    assert not study.finished(finished20)  # its own al.rounds, not the study's 10


def test_tcm_and_stop_tables_of_the_template(tmp_path):
    study = _study()
    curves = {
        "random": [0.5, 0.6, 0.62, 0.63],
        "margin+pcb": [0.5, 0.62, 0.66, 0.7],
        "typiclust+pcb": [0.5, 0.64, 0.66, 0.67],
        "probcover+pcb": [0.5, 0.63, 0.65, 0.68],
        "tcm+pcb": [0.5, 0.65, 0.7, 0.71],
    }
    for group, acc in curves.items():
        for seed in (1, 2):
            d = _write_run(
                tmp_path / "linear20" / group / f"s{seed}", f"linear:{group}", seed, [a + seed / 100 for a in acc]
            )
            with open(os.path.join(d, "config.json"), "w") as f:  # runs of 4 rounds
                json.dump({"name": f"linear:{group}", "seed": seed, "al": {"strategy": "x", "rounds": 4}}, f)
            with open(os.path.join(d, "results.jsonl")) as f:
                rows = [json.loads(line) for line in f]
            for r in rows:  # kappa fires at round 2 for seed 1 only; gain never
                r["stop_rules"] = ["kappa"] if (seed == 1 and r["round"] >= 2) else []
                r["stop_gain"] = 0.001 if (group == "tcm+pcb" and r["round"] >= 2) else 0.5
            with open(os.path.join(d, "results.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    text, _ = study.fill_template("{{tcm_linear20}}\n\n{{stop_linear20}}", [1, 2], root=str(tmp_path))
    # gain below 1 %: only tcm's two runs, at round 2 of 4 (10 labels saved; 1 point given up by each)
    words, _ = study.fill_template("{{sweep|linear20|gain|0.01}}", [1, 2], root=str(tmp_path))
    assert words == "2 of 10 runs stop early, 2 labels saved on average, +0.2 ± 0.1 points given up (worst +1.0)"
    # tcm - margin paired by seed: AUC over 10..40 labels of the curves (the seeds' offsets cancel)
    auc = lambda y: (y[0] / 2 + y[1] + y[2] + y[3] / 2) / 3  # noqa: E731
    d = 100 * (auc(curves["tcm+pcb"]) - auc(curves["margin+pcb"]))
    line = next(ln for ln in text.splitlines() if ln.startswith("| tcm+pcb |"))
    assert f"{d:+.2f} ± 0.00" in line
    # kappa: seed 1 stops at round 2 (10 labels saved, 0.01 / 0.04 / 0.01 accuracy given up), seed 2 never
    given_up = [100 * (curves["tcm+pcb"][3] - curves["tcm+pcb"][2]), 0.0]
    se = statistics.stdev(given_up) / math.sqrt(2)
    want = f"| tcm+pcb | kappa | 2 | 1 of 2 | 2.5 ± 0.5 | 5.0 ± 5.0 | {statistics.mean(given_up):+.2f} ± {se:.2f} |"
    assert want in text
    assert "| tcm+pcb | gain | 2 | 0 of 2 | 3.0 ± 0.0 | 0.0 ± 0.0 | +0.00 ± 0.00 |" in text


def test_results_template_numbers_come_from_the_runs(tmp_path):
    study = _study()
    finals = {("random", 1): 0.70, ("random", 2): 0.72, ("entropy+pcb", 1): 0.75, ("entropy+pcb", 2): 0.74}
    # seed 1 labels every class but 9 (rarest: 0 labels, 9 classes); seed 2 all ten, class 3 once (rarest: 1)
    labels = {1: [c for c in range(9) for _ in range(2)], 2: [c for c in range(10) for _ in range(1 if c == 3 else 2)]}
    for (group, seed), acc in finals.items():
        _write_run(
            tmp_path / "linear" / group / f"s{seed}",
            f"linear:{group}",
            seed,
            [0.5] * (study.ROUNDS - 1) + [acc],
            active=0.25,
            labels=labels[seed],
        )
    text, _ = study.fill_template(
        "Δ {{d|linear|entropy+pcb|random|final}}; active {{active|linear|random}}; "
        "sel {{sel|linear|random}}; score {{score|linear|random}}; "
        "classes {{classes|linear|random}}; rarest {{rarest|linear|random}}; {{linear_acc}}",
        [1, 2],
        root=str(tmp_path),
    )
    diffs = [0.75 - 0.70, 0.74 - 0.72]
    assert f"Δ {100 * statistics.mean(diffs):+.1f} ± {100 * statistics.stdev(diffs) / math.sqrt(2):.1f};" in text
    # the part's table needs every group of the part: two of them are not a table of the study
    assert "active 25.0 %;" in text and text.endswith("(not run)") and "{{" not in text
    assert "sel 2.0; score 2.0;" in text  # seeds 1 and 2 select in 1.5 and 2.5 s per round
    assert "classes 9.5; rarest 0.5;" in text


def test_recorded_runs_fill_the_template_and_sections_without_runs_keep_their_text(tmp_path):
    study = _study()
    root, records = tmp_path / "runs", str(tmp_path / "records")
    for group in ("random", "entropy+pcb"):
        for seed in (1, 2):
            final = 0.6 + seed / 100 + (0.05 if group == "entropy+pcb" else 0.0)
            _write_run(root / "linear" / group / f"s{seed}", f"linear:{group}", seed, [0.5] * 9 + [final])
    _write_run(root / "linear" / "margin+pcb" / "s1", "linear:margin+pcb", 1, [0.5] * 5)  # unfinished: not recorded
    assert study.save(["linear"], [1, 2], str(root), records) == 4
    by_seed = study.load_part("linear", [1, 2], str(root), records)
    import shutil

    shutil.rmtree(root)  # the run directories are scratch: the records alone give the same runs
    assert study.load_part("linear", [1, 2], str(root), records) == by_seed
    assert sorted(by_seed) == ["entropy+pcb", "random"] and sorted(by_seed["random"]) == [1, 2]
    assert study.load_part("linear", [1, 2], str(root)) == {}  # without the records: nothing

    template = (
        "# Title\n\nintro\n\n## A\n\nΔ {{d|linear|entropy+pcb|random|final}}\n\n"
        "## B\n\n{{d|linear|margin+pcb|random|AUC}} and {{d|linear|entropy+pcb|random|AUC}}\n\n## C\n\nnew text\n"
    )
    old = "# Title\n\nold intro\n\n## A\n\nold A\n\n## B\n\nold B, measured before\n\n## Gone\n\nold\n"
    text, kept = study.fill_template(template, [1, 2], str(root), records, old)
    assert kept == ["## B"]  # margin has no finished run: B keeps what it said; A, C and the intro are rewritten
    assert "## A\n\nΔ +5.0 ± 0.0\n\n## B\n\nold B, measured before\n\n## C\n\nnew text\n" in text
    assert text.startswith("# Title\n\nintro\n") and "## Gone" not in text
    # with no old text for B, B's values that have runs are filled and the others say so
    text, kept = study.fill_template(template, [1, 2], str(root), records)
    assert (
        kept == [] and "## B\n\n(not run) and +0.3 ± 0.0\n"
    )  # AUC: 5 points at the last of 10 rounds = 5 / 18 in text


def test_paired_curve_table_is_the_per_round_paired_difference():
    rng = np.random.default_rng(3)
    acc = {g: {s: rng.uniform(0.4, 0.8, 4) for s in (1, 2, 3)} for g in ("tcm", "a", "b")}
    acc["b"][4] = rng.uniform(0.4, 0.8, 4)  # a seed tcm did not run: not paired
    acc["a"] = {s: v - 0.1 - 0.001 * s for s, v in acc["tcm"].items()}  # tcm is 10 points ahead, tiny spread: bold

    def runs(g: str) -> dict:
        return {s: [{"n_labeled": 10 * (i + 1), "accuracy": float(v[i])} for i in range(4)] for s, v in acc[g].items()}

    text = report.paired_curve_table({g: runs(g) for g in acc}, "tcm", ["a", "b"])
    lines = text.splitlines()
    assert lines[0] == "| labels | Δ vs a | Δ vs b |" and len(lines) == 6
    for i, line in enumerate(lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == str(10 * (i + 1))
        for g, cell in zip(("a", "b"), cells[1:]):
            d = [100 * (acc["tcm"][s][i] - acc[g][s][i]) for s in (1, 2, 3)]
            want = f"{statistics.mean(d):+.2f} ± {statistics.stdev(d) / math.sqrt(3):.2f}"
            bold = abs(statistics.mean(d)) >= 2 * statistics.stdev(d) / math.sqrt(3)
            assert cell == (f"**{want}**" if bold else want)
        assert cells[1].startswith("**+10.")


def test_stop_sweep_table_reads_each_threshold_off_the_signals():
    def run(kappa_means: list, gains: list, acc: list) -> list[dict]:
        return [
            {"round": i, "n_labeled": 10 * (i + 1), "accuracy": a, "stop_kappa_mean": k, "stop_gain": g,
             "stop_rules": []}
            for i, (k, g, a) in enumerate(zip(kappa_means, gains, acc))
        ]  # fmt: skip

    a = run([None, None, 0.91, 0.96, 0.98], [None, 0.02, 0.008, 0.004, 0.001], [0.5, 0.6, 0.65, 0.7, 0.72])
    b = run([None, None, 0.85, 0.92, 0.95], [None, 0.03, 0.02, 0.012, 0.006], [0.4, 0.5, 0.6, 0.62, 0.7])
    text = report.stop_sweep_table({"x": {1: a}, "y": {1: b}}, {"kappa": (0.9, 0.97), "gain": (0.005,)})
    rows = {tuple(c.strip() for c in ln.strip("|").split("|"))[:2]: ln for ln in text.splitlines()[2:]}
    # kappa >= 0.9: a stops at round 2 (20 labels saved, 7 points given up), b at round 3 (10 saved, 8 points)
    lost = [100 * (0.72 - 0.65), 100 * (0.7 - 0.62)]
    se = statistics.stdev(lost) / math.sqrt(2)
    want = f"| kappa | mean kappa >= 0.9 | 2 | 2 of 2 | 15.0 | {statistics.mean(lost):+.2f} ± {se:.2f} | +8.00 |"
    assert rows[("kappa", "mean kappa >= 0.9")] == want
    # kappa >= 0.97: a at its last round (nothing saved), b never: nothing given up by either
    assert rows[("kappa", "mean kappa >= 0.97")].startswith("| kappa | mean kappa >= 0.97 | 2 | 0 of 2 | 0.0 | +0.00")
    # gain < 0.5 points: a at round 3 (10 saved, 2 points), b never
    assert rows[("gain", "gain < 0.5 points")].startswith(
        "| gain | gain < 0.5 points | 2 | 1 of 2 | 5.0 | +1.00 ± 1.00"
    )
