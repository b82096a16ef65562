"""The sweep: strategies x seeds of a config as resumable cells, device groups, bad input, and its summary.

Fast tests check the command line's mapping onto the configs' own arguments, every bad input (one line, nothing
written), the cell runner with stand-in cells (a real driver process killed with SIGKILL and SIGTERM, then rerun),
and the summary against sums done here from each cell's results.jsonl. The slow test runs the real thing on the
tiny config: the sweep is killed mid-cell, rerun, and its summary matches the cells' results.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from alpeft_jax import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def _main(capsys, *argv):
    rc = sweep.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------------------------
# Strategies and seeds onto the configs' arguments


def _cell_configs(config, arms, seeds, args=""):
    p = sweep.plan(config, args, arms, seeds, "/tmp/never-written")
    return {c.name: sweep.cell_config(c) for c in p.cells}, p


def test_coop_paper_table_cells_are_the_documented_arms():
    configs, p = _cell_configs("configs/coop.py", ["random", "entropy", "badge", "coreset", "ours"], [1, 2, 3])
    assert [c.name for c in p.cells[:5]] == ["random/s1", "entropy/s1", "badge/s1", "coreset/s1", "ours/s1"]
    assert len(p.cells) == 15 and p.cells[-1].workdir == "/tmp/never-written/ours/s3"
    for name, c in configs.items():
        arm, seed = name.split("/")
        assert c.seed == int(seed[1:]) and c.name == arm and c.adapt.mode == "prompt" and c.data.name == "dtd"
        if arm == "ours":  # configs/coop.py's docstring: entropy + the loss, weight 1, annealed, balanced
            assert c.al.strategy == "entropy" and c.train.calibration == "cpeal"
            assert c.train.calibration_weight == 1.0 and c.train.calibration_anneal
            assert c.train.calibration_weighting == "balanced"
        else:  # the baselines run without the loss, as the authors ran them
            assert c.al.strategy == arm and c.train.calibration == "none"


def test_configs_with_strategy_and_calib_arguments_use_them():
    configs, p = _cell_configs("configs/demo.py", ["random", "ours"], [4], args="runlocal")
    assert configs["random/s4"].al.strategy == "random" and configs["random/s4"].train.calibration == "none"
    assert configs["ours/s4"].al.strategy == "entropy" and configs["ours/s4"].train.calibration == "cpeal"
    assert configs["ours/s4"].seed == 4 and "seed=4" in p.cells[1].argv[3]  # the file's own seed argument
    configs, _ = _cell_configs("configs/lora.py", ["badge"], [2], args="dataset=eurosat,backbone=vit_b32")
    c = configs["badge/s2"]
    assert (c.al.strategy, c.seed, c.data.name, c.train.calibration) == ("badge", 2, "eurosat/rgb", "none")


def _readme_sweeps():
    """The sweep commands of the README's "Reproducing the papers": its code block and each table row's command
    (each `a|b` alternative taken), as argument lists."""
    import re
    import shlex

    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("\n## Reproducing the papers\n") :]
    section = section[: section.index("\n## ", 5)]
    (block,) = [b for b in re.findall(r"```\n(.*?)```", section, re.S) if "alpeft_jax.sweep" in b]
    commands = [shlex.split(block.replace("\\\n", " "))[3:]]
    for row in re.findall(r"^\| [^|]+ \| [^`|]*`(--config=configs/[^`]+)`", section.replace("\\|", "\0"), re.M):
        alternatives = re.findall(r"[^=,\s]+(?:\0[^=,\s]+)+", row)
        for i in range(max((len(a.split("\0")) for a in alternatives), default=1)):
            cmd = row
            for a in alternatives:
                options = a.split("\0")
                cmd = cmd.replace(a, options[min(i, len(options) - 1)])
            commands.append([*shlex.split(cmd), "--seeds=1,2,3", "--workdir=DIR"])
    return commands


def test_readme_paper_table_commands_are_valid_sweeps():
    """Every sweep the README shows parses, maps its strategies and gives cells whose settings pass the schema."""
    from alpeft_jax import preflight, schema

    commands = _readme_sweeps()
    assert len(commands) >= 6 and any("--config=configs/peal.py" in c for cmd in commands for c in cmd)
    for argv in commands:
        argv = [a.replace("dataset=D", "dataset=eurosat").replace("backbone=B", "backbone=rn50") for a in argv]
        _, p, _, against = sweep.parse_command_line([*argv, "--devices=none"])
        assert against == [a for a in ("random", "entropy") if a in p.arms]
        for arm, cell in zip(p.arms, p.cells[-len(p.arms) :]):
            c = sweep.cell_config(cell)
            family = "dinov2" if "dinov2" in c.backbone else "clip"
            assert schema.validate(c, strategies=preflight.strategy_facts(), family=family) == [], (argv, arm)
            assert c.name == arm and c.seed == 3 and c.al.strategy == ("entropy" if arm == "ours" else arm)
            assert (c.train.calibration == "cpeal") == (arm == "ours")


def test_seeds_parse():
    assert sweep.parse_seeds("1,2,3") == [1, 2, 3] and sweep.parse_seeds("1-3,7") == [1, 2, 3, 7]
    for bad in ("1,x", "1.5", "", "3-1", "1,1"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_seeds(bad)


def test_device_groups():
    assert sweep.device_slots("0,1,2,3", 2, None) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert sweep.device_slots("3,5", None, None) == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert sweep.device_slots("none", None, 3) == [{}, {}, {}]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,7"}) == ["2", "7"]
    assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] == sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategies=random,entrpy"], "unknown strategy 'entrpy' (did you mean entropy?)"),
        (["--strategies=random", "--args=rounds=2,epoch=1"], "unknown argument 'epoch' (did you mean 'epochs'?)"),
        (["--strategies=random", "--seeds=1,two"], "--seeds=1,two: 'two' is not an integer"),
        (["--strategies=random", "--devices=0,1,2", "--devices_per_cell=2"], "does not divide the 3 GPUs"),
        (["--strategies=random", "--devices=none", "--devices_per_cell=2"], "needs GPUs and this host shows none"),
        (["--strategies=random", "--devices=0,1", "--jobs=2"], "--jobs is for hosts without GPUs"),
        (["--strategies=random,ours"], "has no `ours` (or `calib`) argument"),
        (["--strategies=random", "--args=seed=3"], "--args sets seed; the sweep sets it per cell"),
        (["--strategies=random", "--config.name=x"], "the sweep sets config.name per cell"),
        (["--strategies=random", "--config.train.lrr=0.1"], "no such config key; did you mean --config.train.lr?"),
        (["--strategies=random", "--config.oracle=file"], "oracle=file: a sweep runs without a person"),
        (["--strategies=random,entropy", "--against=badge"], "--against badge: not among --strategies"),
        (["--strategies=random", "--bogus=1"], "unrecognized arguments: --bogus=1"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    workdir = tmp_path / "sweep"
    rc, out, err = _main(capsys, f"--config={TINY}", f"--workdir={workdir}", *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not workdir.exists()


def test_a_cell_started_with_other_arguments_is_refused_by_name(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    cell = workdir / "random" / "s1"
    cell.mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps(dict(sweep.cell_config(_plan_cell(workdir)).to_dict(), seed=9)))
    (cell / "al_state.json").write_text(json.dumps({"round": 1}))
    rc, _, err = _main(capsys, f"--config={TINY}", f"--workdir={workdir}", "--strategies=random,entropy", "--seeds=1")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: random/s1: ") and "seed: 9 -> 1" in err, err


def _plan_cell(workdir):
    return sweep.plan(TINY, "", ["random"], [1], str(workdir)).cells[0]


def test_dry_run_prints_the_plan_with_device_groups(tmp_path, capsys):
    rc, out, err = _main(
        capsys,
        f"--config={TINY}",
        "--args=rounds=2",
        "--strategies=random,entropy",
        "--seeds=1-2",
        f"--workdir={tmp_path / 's'}",
        "--devices=0,1,2,3",
        "--devices_per_cell=2",
        "--config.train.lr=0.02",
        "--dry_run",
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("new    random/s1  CUDA_VISIBLE_DEVICES=0,1 -m alpeft_jax.main")
    assert "CUDA_VISIBLE_DEVICES=2,3" in lines[1] and "--config.train.lr=0.02" in lines[3]
    assert f"--config={TINY}:rounds=2,strategy=entropy" in lines[1] and "--config.seed=2" in lines[3]
    assert lines[-1].startswith("2 cell(s) at a time") and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------------------
# The cell runner with stand-in cells: a real driver process, killed and rerun

FAKE_CELL = r"""
import json, os, sys, time
wd, rounds, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs(wd, exist_ok=True)
res = os.path.join(wd, "results.jsonl")
done = len(open(res).read().splitlines()) if os.path.exists(res) else 0
with open(os.path.join(wd, "starts.jsonl"), "a") as f:
    f.write(json.dumps(dict(pid=os.getpid(), gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), t=time.time(), done=done)))
    f.write("\n")
if not os.path.exists(os.path.join(wd, "config.json")):
    json.dump({"al": {"rounds": rounds}}, open(os.path.join(wd, "config.json"), "w"))
for r in range(done, rounds):
    time.sleep(delay)
    with open(res, "a") as f:
        f.write(json.dumps({"round": r, "t": time.time()}) + "\n")
"""

DRIVER = r"""
import json, sys
from alpeft_jax import sweep
spec = json.loads(sys.argv[1])
cells = [sweep.Cell(c["name"], c["workdir"], tuple(c["argv"]), c["log"], c.get("key", "")) for c in spec["cells"]]
outcomes, stopped = sweep.run_cells(cells, spec["slots"], poll_seconds=0.02)
print(json.dumps({o.cell.name: o.status for o in outcomes}), flush=True)
sys.exit(128 + stopped if stopped else 0)
"""


def _fake_cells(tmp_path, specs):
    script = tmp_path / "fake_cell.py"
    script.write_text(FAKE_CELL)
    cells = []
    for name, rounds, delay, key in specs:
        wd = str(tmp_path / "runs" / name)
        argv = [sys.executable, str(script), wd, str(rounds), str(delay)]
        cells.append(dict(name=name, workdir=wd, argv=argv, log=str(tmp_path / "logs" / f"{name}.log"), key=key))
    return cells


def _driver(cells, slots):
    env = dict(os.environ, PYTHONPATH=ROOT)
    spec = json.dumps(dict(cells=cells, slots=slots))
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, spec], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _starts(cell):
    path = os.path.join(cell["workdir"], "starts.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _rows(cell):
    path = os.path.join(cell["workdir"], "results.jsonl")
    return open(path).read().count("\n") if os.path.exists(path) else 0


def _wait(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_runner_takes_its_cells_down_and_a_rerun_resumes(tmp_path, sig):
    long, a, b = _fake_cells(tmp_path, [("long", 4, 0.6, ""), ("a", 2, 0.05, ""), ("b", 2, 0.05, "")])
    slots = [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    driver = _driver([long, a, b], slots)
    _wait(lambda: _rows(long) >= 1 and _rows(b) == 2)
    pid = _starts(long)[0]["pid"]
    driver.send_signal(sig)
    out, _ = driver.communicate(timeout=30)
    assert driver.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), out
    _wait(lambda: not _alive(pid), timeout=10)  # the cell does not outlive its sweep
    half = _rows(long)
    assert 1 <= half < 4
    # one cell per device group: the long one on GPU 0, a and then b on GPU 1
    assert [_starts(c)[0]["gpus"] for c in (long, a, b)] == ["0", "1", "1"]

    rerun = _driver([long, a, b], slots)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, out
    assert json.loads(out.splitlines()[-1]) == {"long": "ok", "a": "skipped", "b": "skipped"}
    assert len(_starts(a)) == len(_starts(b)) == 1  # finished cells are not rerun
    again = _starts(long)
    assert len(again) == 2 and again[1]["done"] == half and _rows(long) == 4  # the half-done one resumed
    with open(long["log"]) as f:
        assert f.read().count("sweep starts long: ") == 2


def test_cells_sharing_a_cache_wait_for_the_first_and_failures_are_reported(tmp_path):
    first, second, third, other = _fake_cells(
        tmp_path, [("k1", 1, 0.3, "cache"), ("k2", 1, 0.01, "cache"), ("k3", 1, 0.01, "cache"), ("o", 1, 0.01, "")]
    )
    broken = dict(other, name="broken", argv=[sys.executable, "-c", "import sys; print('no data here'); sys.exit(2)"])
    broken["log"] = other["log"] + ".broken"
    driver = _driver([first, second, third, other, broken], [{}, {}, {}])
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 0, out
    statuses = json.loads(out.splitlines()[-1])
    assert statuses == {"k1": "ok", "k2": "ok", "k3": "ok", "o": "ok", "broken": "failed"}
    end_of_first = json.loads(open(os.path.join(first["workdir"], "results.jsonl")).readline())["t"]
    assert _starts(second)[0]["t"] >= end_of_first and _starts(third)[0]["t"] >= end_of_first
    assert _starts(other)[0]["t"] < end_of_first  # no cache to wait for
    assert "failed" in out and "(exit 2): " in out and "no data here" in out


# ------------------------------------------------------------------------------------------------------------
# The summary against sums done here


def _write_cell(root, arm, seed, accs, rounds=None):
    d = os.path.join(root, arm, f"s{seed}")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        cfg = {"name": arm, "seed": seed, "al": {"strategy": arm, "rounds": rounds or len(accs)}}
        json.dump(dict(cfg, train={"calibration": "none"}), f)
    with open(os.path.join(d, "results.jsonl"), "w") as f:
        for r, acc in enumerate(accs):
            f.write(json.dumps(dict(round=r, n_labeled=10 * (r + 1), accuracy=acc, ece=0.05, nll=1.0)) + "\n")
    return d


def _auc(c, x):
    return sum((c[i] + c[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(len(c) - 1)) / (x[-1] - x[0])


def _check_row(text, arm, curves, labels, ref="random"):
    """The summary's row of `arm`: final and AUC accuracy (mean, std over seeds) and the paired differences to
    `ref` (mean, standard error), summed here from the curves, to the table's two decimals."""
    row = next(line for line in text.splitlines() if line.startswith(f"| {arm} | {len(curves[arm])} |"))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    finals = [100 * c[-1] for c in curves[arm].values()]
    aucs = [100 * _auc(c, labels) for c in curves[arm].values()]
    expected = [(statistics.mean(finals), statistics.pstdev(finals)), (statistics.mean(aucs), statistics.pstdev(aucs))]
    got = [tuple(float(v) for v in cell.split(" ± ")) for cell in cells[:2]]
    if arm != ref:
        seeds = sorted(set(curves[arm]) & set(curves[ref]))
        for stat in (lambda c: c[-1], lambda c: _auc(c, labels)):
            d = [100 * (stat(curves[arm][s]) - stat(curves[ref][s])) for s in seeds]
            expected.append((statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d))))
        got += [tuple(float(v) for v in cell.split(" ± ")) for cell in cells[4:6]]
    assert len(got) == len(expected), row
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=0.0051), row  # the table rounds to two decimals


def test_summary_equals_the_report_of_the_cells(tmp_path):
    rng = np.random.default_rng(3)
    arms, seeds = ["random", "entropy", "badge"], [1, 2, 3]
    curves = {a: {s: [float(x) for x in np.round(rng.uniform(0.3, 0.9, 3), 4)] for s in seeds} for a in arms}
    root = str(tmp_path / "sweep")
    for a in arms:
        for s in seeds:
            _write_cell(root, a, s, curves[a][s])
    _write_cell(root, "badge", 4, [0.5], rounds=3)  # a cell killed after its first round: not in the summary
    p = sweep.plan(TINY, "", arms, [*seeds, 4], root)
    text = sweep.summary(p, ["random"], command="python -m alpeft_jax.sweep ...")
    assert text is not None and "9 of 12 cells finished." in text
    with open(os.path.join(root, "summary.md")) as f:
        assert f.read() == text
    assert os.path.getsize(os.path.join(root, "curves.png")) > 1000
    for arm in arms:
        _check_row(text, arm, curves, [10, 20, 30])
    # and it is the report's own --summary over the finished cells' directories
    dirs = [os.path.join(root, a, f"s{s}") for a in arms for s in seeds]
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpeft_jax.report",
            *dirs,
            "--summary",
            "--against=random",
            "--out",
            str(tmp_path / "c.png"),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr
    assert report.summary_text(report.group_runs_by_seed(dirs), ["random"]) in printed.stdout
    assert text.split("\n", 3)[3].rstrip("\n") in printed.stdout


# ------------------------------------------------------------------------------------------------------------
# The real sweep on the tiny config, killed and resumed


def _results(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow  # four real runs of the tiny config, one of them twice: a few minutes on 2 cores
def test_tiny_sweep_is_killed_resumes_and_its_summary_matches_the_cells(tmp_path):
    root = tmp_path / "sweep"
    cache = tmp_path / "cache"
    argv = [
        sys.executable,
        "-m",
        "alpeft_jax.sweep",
        f"--config={TINY}",
        f"--args=rounds=3,epochs=2,ckpt=2,cache={cache}",
        "--strategies=random,entropy",
        "--seeds=1,2",
        f"--workdir={root}",
        "--devices=none",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, second = root / "random" / "s1", root / "entropy" / "s1"

    def mid_second():
        return sweep.finished(str(first)) and (second / "results.jsonl").exists() and not sweep.finished(str(second))

    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not mid_second():
        time.sleep(0.05)
    assert mid_second(), "the sweep did not stop inside its second cell"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_rows = _results(second)
    first_mtime = os.path.getmtime(first / "results.jsonl")
    time.sleep(1.0)  # the cell dies with its sweep; nothing writes after this
    assert _results(second) == killed_rows and 1 <= len(killed_rows) < 3

    rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "start random/s1" not in rerun.stdout  # finished: skipped, untouched
    assert os.path.getmtime(first / "results.jsonl") == first_mtime
    with open(root / "logs" / "entropy_s1.log") as f:
        runs = f.read().split("=== ")[1:]
    assert len(runs) == 2 and "round 0 epoch" not in runs[1] and "round 2 epoch" in runs[1]  # resumed, not redone
    assert _results(second)[: len(killed_rows)] == killed_rows

    # the summary: final accuracy per strategy and random-paired differences, from the results rows here
    text = (root / "summary.md").read_text()
    assert "All 4 cells finished." in text
    curves = {
        a: {s: [r["accuracy"] for r in _results(root / a / f"s{s}")] for s in (1, 2)} for a in ("random", "entropy")
    }
    labels = [r["n_labeled"] for r in _results(first)]
    for arm in ("random", "entropy"):
        _check_row(text, arm, curves, labels)
