"""The benchmark scripts still run end to end (tiny sizes), so a timed run on borrowed hardware cannot die on them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 300, env: dict | None = None) -> str:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _rows(text: str) -> dict[str, list[str]]:
    """Selection table rows by strategy name: the cells of `ours` (time, first, peak GB)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s+\d+\s+\d+\s+\d+ \|\s+(\S+)\s+(\S+)\s+(\S+) \|", line)
        if m:
            rows[m.group(1)] = [m.group(2), m.group(3), m.group(4)]
    return rows


def test_selection_benchmark_runs_every_strategy_on_a_small_pool():
    text = _run(
        "benchmarks/selection.py",
        "--n",
        "3000",
        "--d",
        "32",
        "--k",
        "10",
        "--budget",
        "10",
        "--no-peer",
        "--single-call",
        "--on-device",
        "--timeout",
        "200",
    )
    rows = _rows(text)
    assert set(rows) == {"entropy", "margin", "coreset", "badge", "typiclust", "probcover", "tcm"}, text
    for name, cells in rows.items():
        assert all(float(c) > 0 for c in cells), (name, cells)


def test_selection_benchmark_times_a_second_call_and_the_peer():
    pytest.importorskip("skactiveml")
    text = _run(
        "benchmarks/selection.py",
        "--n",
        "2000",
        "--d",
        "16",
        "--k",
        "10",
        "--budget",
        "5",
        "--strategies",
        "coreset",
        "--timeout",
        "200",
    )
    line = next(ln for ln in text.splitlines() if ln.startswith("coreset"))
    assert re.search(r"\d+\.\dx", line), line  # a speed-up against scikit-activeml, measured in the same run


def test_sharded_selection_benchmark_times_both_paths_with_the_same_ids():
    text = _run(
        "benchmarks/sharded_selection.py",
        "--n",
        "2000",
        "--d",
        "16",
        "--budget",
        "10",
        "--strategies",
        "entropy",
        "badge",
        "--timeout",
        "250",
    )
    for name in ("entropy", "badge"):
        line = next(ln for ln in text.splitlines() if ln.startswith(name))
        m = re.search(r"\|\s+([\d.]+)\s+([\d.]+) \|\s+([\d.]+)\s+\|\s+([\d.]+)x \| (gather|sharded)\s+True", line)
        assert m, line  # both timings, their ratio, the faster path, and the same ids both ways
        assert float(m.group(1)) > 0 and float(m.group(3)) > 0


def test_gpu_check_runs_each_step_under_its_limit(tmp_path):
    # a stand-in `python` that records its arguments: checks the script's own plumbing, not the benchmarks
    shim = tmp_path / "bin"
    shim.mkdir()
    for name, body in {"python": 'echo "ran $*"', "nvidia-smi": "echo gpu"}.items():
        f = shim / name
        f.write_text(f"#!/bin/bash\n{body}\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "OUT": str(out)}
    subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    steps = sorted(p.name for p in out.glob("*.txt"))
    assert steps == [
        "encode_b16.txt",
        "encode_rest.txt",
        "float16.txt",
        "gpu.txt",
        "scaling.txt",
        "select_1m.txt",
        "select_1m_clusters.txt",
    ]
    limits = 0
    for name in [s for s in steps if s != "gpu.txt"]:
        text = (out / name).read_text()
        assert ("ran benchmarks/" in text or "ran -m pytest" in text) and ": rc 0," in text, text
        limits += int(re.search(r"limit (\d+) s", text).group(1))
    assert limits <= 580  # the whole check fits one 600 s call of the device tool


@pytest.mark.slow
def test_encode_benchmark_runs_a_transformer_case():
    pytest.importorskip("transformers")
    text = _run(
        "benchmarks/encode_throughput.py",
        "--cases",
        "clip-vit-b32@224",
        "--batch",
        "1",
        "--iters",
        "1",
        "--device-report",
        "--no-torch-compile",
        timeout=600,
    )
    rows = [ln for ln in text.splitlines() if ln.startswith("clip-vit-b32@224")]
    assert [r.split()[1] for r in rows] == ["f32", "bf16"], text


@pytest.mark.slow
def test_scaling_benchmark_runs_on_one_and_two_fake_devices():
    text = _run(
        "benchmarks/scaling.py",
        "--devices",
        "1",
        "2",
        "--batch",
        "8",
        "--pool",
        "32",
        "--chunk",
        "16",
        "--steps",
        "1",
        timeout=600,
    )
    rows = [ln for ln in text.splitlines() if re.match(r"\| [12] \|", ln)]
    assert len(rows) == 2 and rows[0].count("1.00x") == 2, text  # each count ran, the first is the 1x reference
