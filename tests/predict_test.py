"""`python -m alpeft_jax.predict` on a finished demo-like run (EfficientNet-Lite0, LoRA on its last blocks, a
linear head, scikit-learn digits): on the run's test split its accuracy is the run's last reported accuracy, its
CSV rows are `load_model`'s probabilities, and files, folders, CSVs and unreadable images are handled."""

import csv
import io
import json
import os

import numpy as np
import pytest
from _tiny_config import tiny_config
from PIL import Image
from sklearn.datasets import load_digits

from alpeft_jax import export, load_model, loop, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_tiny = tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo_like")
    loop.run(_tiny("rounds=2,epochs=2,strategy=entropy"), str(workdir))
    return workdir


def _results(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _csv_rows(text):
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def test_predict_on_the_runs_test_split_reports_the_runs_accuracy(run_dir, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert predict.main([f"--workdir={run_dir}", "run:test", f"--out={out}"]) == 0
    rows = _csv_rows(out.read_text())
    last = _results(run_dir)[-1]
    assert len(rows) == 60 and all(r["label"] for r in rows)
    accuracy = np.mean([r["prediction"] == r["label"] for r in rows])
    assert accuracy == pytest.approx(last["accuracy"], abs=1e-9)  # the same 60 images, the same verdicts
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"accuracy {last['accuracy']:.4f}" in closing and f"ECE {last['ece']:.4f}" in closing
    # entropy and margin are those of the listed probabilities
    for r in rows[:5]:
        p = np.asarray([float(x.rpartition(":")[2]) for x in r["top_k"].split(";")])
        assert float(r["probability"]) == p[0] and float(r["margin"]) == pytest.approx(p[0] - p[1], abs=2e-6)


def _write_images(root, n=6):
    digits = load_digits()
    names = []
    for i in range(n):
        img = (digits.images[i] * 255 / 16).astype(np.uint8)
        cls = str(digits.target[i])
        os.makedirs(root / cls, exist_ok=True)
        path = root / cls / f"img{i}.png"
        Image.fromarray(img).resize((24, 24)).save(path)
        names.append((str(path), cls))
    return names


def test_files_folders_csv_and_unreadable_images(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    files = _write_images(folder)
    (folder / "3" / "broken.png").write_bytes(b"not an image")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n" + "".join(f"{os.path.relpath(p, tmp_path)},{c}\n" for p, c in files[:3]))
    single = files[4][0]
    assert predict.main([f"--workdir={run_dir}", str(folder), str(manifest), single, "--top_k=3"]) == 0
    captured = capsys.readouterr()
    rows = _csv_rows(captured.out)
    skipped = [line for line in captured.err.replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    assert len(rows) == len(files) + 3 + 1  # the folder's readable images, the CSV's three, the single file
    by_folder = rows[: len(files)]
    assert [r["label"] for r in by_folder] == [c for _, c in sorted(files, key=lambda f: f[0])]  # <class>/ labels
    assert rows[-1]["label"] == "" and all(len(r["top_k"].split(";")) == 3 for r in rows)
    # the rows are load_model's probabilities, read from the workdir and from a native export alike
    model = load_model(run_dir)
    paths = [r["path"] for r in rows]
    probs = model.predict(paths).probs
    np.testing.assert_allclose([float(r["probability"]) for r in rows], probs.max(1), atol=2e-6)
    native = tmp_path / "native"
    assert export.main([f"--workdir={run_dir}", "--format=native", f"--out={native}"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(load_model(native).logits(paths), model.logits(paths))
    assert predict.main([f"--model={native}", single]) == 0
    again = _csv_rows(capsys.readouterr().out)
    assert again[0]["probability"] == rows[-1]["probability"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["no/such/thing.jpg"], "no/such/thing.jpg: no such file or folder, and not a data spec"),
        ([], "no INPUT"),
        (["--round=7", "run:test"], "--round=7: "),
    ],
)
def test_bad_input_is_one_error_line(run_dir, tmp_path, capsys, args, says):
    out = tmp_path / "pred.csv"
    assert predict.main([f"--workdir={run_dir}", f"--out={out}", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], lines
    assert not out.exists()
