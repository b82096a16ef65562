"""colab/: every notebook runs top to bottom on CPU (nbclient) with its tiny offline settings.

ALPEFT_NOTEBOOK_TINY=1 selects them (scikit-learn digits for the quickstart; a tiny random CLIP in the Hugging
Face format and TFDS's mock DTD for the CLIP notebook). The checks: no cell fails, the device list is printed,
the run's INFO lines and progress reach the notebook, and the report table shown matches the runs' own
results.jsonl.
"""

import json
import os
import re
import tempfile

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")


def _execute(name, workdir, monkeypatch, until=None):
    """Run the notebook with its tiny settings; `until`: stop before the first code cell containing it."""
    monkeypatch.setenv("ALPEFT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("ALPEFT_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # Compiled programs persist across test sessions on this machine (the notebooks honour this variable).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "alpeft_notebooks_jax_cache"))
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    if until:
        nb.cells = nb.cells[: next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and until in c.source)]
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": COLAB}})
    client.execute()
    return nb


def _text(cell, stream=None):
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream" and stream in (None, o["name"]):
            out.append(o["text"])
        elif o["output_type"] in ("execute_result", "display_data") and stream is None:
            out.append(o["data"].get("text/markdown", "") + o["data"].get("text/plain", ""))
    return "".join(out)


def _cell(nb, needle):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    return cell


def _expected_rows(workdirs, label):
    """The table row of one method, computed here from results.jsonl (mean ± std over its seeds)."""
    runs = []
    for d in workdirs:
        with open(os.path.join(d, "results.jsonl")) as f:
            runs.append([json.loads(line)["accuracy"] for line in f])
    n = min(len(r) for r in runs)
    cells = []
    for i in range(n):
        vals = [100 * r[i] for r in runs]
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        cells.append(f"{mean:.2f} ± {std:.2f}")
    return f"| {label} | {len(runs)} | " + " | ".join(cells) + " |"


def _check_common(nb, runs):
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "loop.run(" in sources and "report." in sources
    assert "Trainer" not in sources and "strategies" not in sources  # the library's loop, not a copy
    assert re.search(r"runtime: (cpu|gpu|tpu)", _text(_cell(nb, "detect_accelerator()")))
    assert "CpuDevice" in _text(_cell(nb, "print(jax.devices())"))

    log = _text(_cell(nb, "loop.run("))
    # INFO lines arrive
    assert "round 0: 10 labels, test accuracy" in log and "round 1: 15 labels, test accuracy" in log
    assert "Finished saving checkpoint" not in log  # the libraries' INFO chatter stays out
    shown = _text(_cell(nb, "report.group_runs("))
    for prefix in ("entropy_s", "random_s"):
        dirs = [os.path.join(runs, d) for d in sorted(os.listdir(runs)) if d.startswith(prefix)]
        assert dirs, os.listdir(runs)
        with open(os.path.join(dirs[0], "config.json")) as f:
            label = json.load(f)["name"]
        assert _expected_rows(dirs, label) in shown
    outputs = _cell(nb, "report.group_runs(")["outputs"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the curves, inline


def test_quickstart_runs_offline_top_to_bottom(tmp_path, monkeypatch):
    nb = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    _check_common(nb, str(tmp_path))
    assert "https://colab.research.google.com/assets/colab-badge.svg" in nb.cells[0].source
    # it ends with predictions of the first run's model on a few test images, in the run's classes
    shown = [line for line in _text(_cell(nb, "load_model(")).splitlines() if line.startswith("test image")]
    assert len(shown) == 8 and all(re.fullmatch(r"test image \d+: predicted \d \(\d+%\), true \d", s) for s in shown)


def test_clip_notebook_prepares_its_runs(tmp_path, monkeypatch):
    """Every cell before the runs (code, devices, data, backbone, logging, config), in the default test run."""
    nb = _execute("clip_al_tpu.ipynb", tmp_path, monkeypatch, until="loop.run(")
    shown = _text(nb.cells[-1])  # the config of the C-PEAL run, as the cell displays it
    for line in ("dtype: bfloat16", "strategy: entropy", "calibration: cpeal", "mode: lora", "name: dtd"):
        assert line in shown, shown
    assert os.path.exists(tmp_path / "tiny_clip" / "config.json")


@pytest.mark.slow
def test_clip_notebook_runs_offline_top_to_bottom(tmp_path, monkeypatch):
    nb = _execute("clip_al_tpu.ipynb", tmp_path, monkeypatch)
    with open(os.path.join(tmp_path, "runs", "entropy_s1", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["dtype"] == "bfloat16" and cfg["data"]["name"] == "dtd" and cfg["adapt"]["mode"] == "lora"
    assert cfg["train"]["calibration"] == "cpeal" and cfg["backbone"].endswith("tiny_clip")
    with open(os.path.join(tmp_path, "runs", "random_s1", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["al"]["strategy"] == "random" and cfg["train"]["calibration"] == "none"
    _check_common(nb, os.path.join(tmp_path, "runs"))
