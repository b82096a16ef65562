"""README "Your own images", followed literally: its code blocks are the commands run here, unchanged, in a folder
holding a synthetic `my_images/` (scikit-learn digits 0-2 as PNGs at several depths, no class folders), and the
outcomes the section states are asserted: the round-by-round stops, the user's class order, the cv lines with no
test figure, the annotator's `?` and 0-based indices, and the finished line; then the Label Studio command against a
real server (tests/_label_studio_server.py), a task skipped in the editor excluded. A test appends only what
shrinks the run (`--config.data.image_size=32`, fewer epochs and rounds) after the README's own arguments."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image
from sklearn.datasets import load_digits

from alpeft_jax import main as main_lib
from alpeft_jax import preflight
from alpeft_jax.workdir import read_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHRINK = ["--config.data.image_size=32", "--config.train.epochs=20", "--config.al.rounds=3"]


def _section():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("\n## Your own images\n") :]
    return section[: section.index("\n## ", 5)]


def _blocks():
    """The section's code blocks: [the class file, the file-oracle run, the Label Studio run]."""
    blocks = re.findall(r"```\n(.*?)```", _section(), re.S)
    assert len(blocks) == 3, "the section's walk-through: a class file, the run, the run with Label Studio"
    return blocks


def _command(block):
    """The one `python -m alpeft_jax.main` command of a block (continuation lines joined) as argv."""
    lines = block.replace("\\\n", " ").splitlines()
    (line,) = [x for x in lines if x.startswith("python -m alpeft_jax.main")]
    return shlex.split(line)


def _stated(prefix):
    """The section's inline `...` fragments starting with prefix, as regexes: `...` any text, a number any number."""
    out = []
    prose = re.sub(r"```.*?```", " ", _section(), flags=re.S)
    for fragment in re.findall(r"`([^`]+)`", " ".join(prose.split())):
        if fragment.startswith(prefix):
            pattern = re.escape(fragment).replace(r"\.\.\.", ".*")
            out.append(re.sub(r"\d+", r"\\d+", pattern))
    assert out, f"the section states no `{prefix}...` line"
    return out


def _images(folder, n=120):
    """n digits of classes 0-2 as PNGs at several depths under folder; {path relative to folder's parent: digit}."""
    d = load_digits()
    rows = np.flatnonzero(d.target < 3)[:n]
    truth = {}
    for k, i in enumerate(rows):
        rel = os.path.join("my_images", ("", "batch_a", os.path.join("batch_b", "deeper"))[k % 3], f"img{i:04d}.png")
        os.makedirs(os.path.dirname(folder / rel), exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / rel)
        truth[rel] = int(d.target[i])
    return truth


def _setup(tmp_path):
    """tmp_path as the user's folder: configs/ of this checkout, my_images/, and classes.txt from the README's block."""
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    truth = _images(tmp_path)
    r = subprocess.run(["bash", "-euc", _blocks()[0]], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    names = read_classes(tmp_path / "classes.txt")
    assert len(names) == 3 and names != sorted(names)  # the README's example is in a non-alphabetical order
    return truth, names


def _config(argv):
    """The config `python -m alpeft_jax.main` builds from argv (its file with its arguments, then the overrides)."""
    assert argv[:3] == ["python", "-m", "alpeft_jax.main"]
    cli = ["alpeft_jax.main", *argv[3:]]
    assert main_lib.command_line_problems(cli) == []
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=cli)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(cli)
    return fv["config"].value, fv["workdir"].value


def test_readme_commands_pass_preflight(tmp_path, monkeypatch):
    """Every command of the section parses and passes the pre-flight checks on a 120-image folder; the Label
    Studio one lacks only the token (one line, naming the variable the section exports)."""
    _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    _, run_block, ls_block = _blocks()
    c, wd = _config(_command(run_block))
    assert (c.data.name, c.data.dir, c.data.classes, c.oracle) == ("folder", "my_images", "classes.txt", "file")
    assert (c.backbone, c.adapt.mode, c.data.test) == ("efficientnet-lite0", "linear", "")
    assert preflight.check(c, wd) == []
    assert not os.path.exists(wd)  # nothing written
    c, wd = _config(_command(ls_block))
    assert c.oracle == "label_studio" and c.data.classes == "classes.txt"
    assert "export LABEL_STUDIO_API_KEY=" in ls_block and c.label_studio.token_env == "LABEL_STUDIO_API_KEY"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    (line,) = preflight.check(c, wd)
    assert line.startswith("label_studio: $LABEL_STUDIO_API_KEY is not set")


def _run(argv, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )  # argv[0] is the README's `python`: this interpreter
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr + r.stdout  # the log, then what the command prints


@pytest.mark.slow  # four starts of the CLI (three stops for labels): about a minute and a half on 2 loaded cores
def test_readme_walk_through_with_the_file_oracle(tmp_path):
    truth, names = _setup(tmp_path)
    argv = _command(_blocks()[1]) + SHRINK
    wd = tmp_path / "runs" / "mine"
    answered = []  # (id, class index) in the order given
    outputs = []
    for r in range(3):
        out = _run(argv, tmp_path)
        outputs.append(out)
        assert f"round {r}: 10 examples to label in {wd}/round_{r}/to_label.csv;" in out
        assert read_classes(wd / "classes.txt") == names  # the user's order, from the start
        # The annotator, as the section says: fill each row's label cell of to_label.csv with a class name from
        # DIR/classes.txt (or its 0-based line number), `?` where they can't tell, and save it as labels.csv.
        with open(wd / f"round_{r}" / "to_label.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [x["predicted"] != "" for x in rows] == [r > 0] * 10  # the model's guess from round 1 on
        for k, x in enumerate(rows):
            label = truth[x["path"]]
            if r == 1 and k == 0:
                x["label"], label = "?", -1
            elif r == 2 and k == 0:
                x["label"] = str(label)  # an index
            else:
                x["label"] = names[label]
            answered.append((int(x["id"]), label))
        with open(wd / f"round_{r}" / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    out = _run(argv, tmp_path)
    outputs.append(out)
    lines = [line.split("] ", 1)[-1].replace(str(tmp_path), "TMP") for o in outputs for line in o.splitlines()]

    # The finished line, as stated, and the model it names.
    finished = out.rstrip().splitlines()[-1]
    model = f"run finished: 3 rounds, 29 labels (1 excluded as can't tell); final model {wd}/ckpt/2; use it: "
    assert finished.startswith(model) and os.path.isdir(wd / "ckpt" / "2")
    assert f"python -m alpeft_jax.predict --workdir={wd} " in finished and "python -m alpeft_jax.export" in finished
    for pattern in _stated("run finished:"):
        assert re.fullmatch(pattern, finished.replace(" (1 excluded as can't tell)", ""))
    for pattern in _stated("round 0: 10 examples to label in"):  # each stop says so, the last start does not
        assert [any(re.fullmatch(pattern, line) for line in o.splitlines()) for o in outputs] == [True] * 3 + [False]
    # The recorded labels are the annotator's, the `?` excluded; classes.txt kept the user's order.
    with open(wd / "al_state.json") as f:
        state = json.load(f)
    with open(wd / "results.jsonl") as f:
        results = [json.loads(line) for line in f]
    assert state["labels"] == [lab for _, lab in answered if lab >= 0]
    assert [x["selected_ids"] for x in results] == [[i for i, _ in answered[k : k + 10]] for k in (0, 10, 20)]
    assert len(state["excluded"]) == 1 and read_classes(wd / "classes.txt") == names
    assert [x["n_labeled"] for x in results] == [10, 19, 29]
    assert [x["n_excluded"] for x in results] == [0, 1, 1]
    # No test set: said at every start; each round a 5-fold cv estimate, and no accuracy without "cv".
    assert sum(line.startswith("no test set:") for line in lines) == 4
    for r, n in enumerate([10, 19, 29]):
        assert any(line.startswith(f"round {r}: {n} labels, 5-fold cv accuracy ") for line in lines)
    assert all(x["evaluation"] == "cv" and x["cv_folds"] == 5 for x in results)
    acc = [line for line in lines if "accuracy" in line]
    assert acc and all("cv accuracy" in line and "test" not in line for line in acc)
    for pattern in _stated("round 1: 20 labels, 5-fold cv accuracy"):
        assert any(re.fullmatch(pattern, re.sub(r" \(train .*\)$", "", line)) for line in lines)


@pytest.fixture
def label_studio(tmp_path_factory):
    pytest.importorskip("label_studio_sdk", reason="the Label Studio oracle needs the 'label' extra")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import _label_studio_server as ls_server
    finally:
        sys.path.pop(0)
    server = ls_server.start(tmp_path_factory.mktemp("label_studio"))
    yield server
    server.stop()


def _api(server, method, path, body=None):
    raw = server.request(method, path, None if body is None else json.dumps(body).encode())
    return json.loads(raw) if raw else None


@pytest.mark.slow  # a Label Studio server and three starts of the CLI
def test_readme_walk_through_with_label_studio(tmp_path, label_studio):
    """The section's Label Studio command as written, against a real server (its URL and a personal access token
    in place of the README's placeholders); the annotator skips one task ("can't tell": excluded by default)."""
    truth, names = _setup(tmp_path)
    block = _blocks()[2]
    assert "export LABEL_STUDIO_API_KEY=" in block
    argv = [a.replace("http://127.0.0.1:8080", label_studio.url) for a in _command(block)]
    argv += SHRINK[:-1] + ["--config.al.rounds=2"]
    os.environ["LABEL_STUDIO_API_KEY"] = label_studio.personal_access_token()
    try:
        wd = tmp_path / "runs" / "mine_ls"
        paths = sorted(truth)  # a folder's pool ids: its images' sorted relative paths
        out = _run(argv, tmp_path)
        assert "round 0: 0 of 10 Label Studio tasks annotated" in out and "rerun the same command" in out
        assert read_classes(wd / "classes.txt") == names
        with open(wd / "label_studio.json") as f:
            pid = json.load(f)["project"]
        config = _api(label_studio, "GET", f"/api/projects/{pid}/")["label_config"]
        assert re.findall(r'<Choice value="([^"]+)"', config) == names  # the choices in the user's order
        given = []  # (example id, class index or -1) as the annotator answered
        for r in range(2):
            tasks = _api(label_studio, "GET", f"/api/tasks/?project={pid}&fields=all&page_size=1000")
            tasks = [t for t in (tasks["tasks"] if isinstance(tasks, dict) else tasks) if not t["annotations"]]
            assert len(tasks) == 10 and [bool(t["predictions"]) for t in tasks] == [r > 0] * 10
            for k, t in enumerate(sorted(tasks, key=lambda t: t["id"])):
                ident = int(t["data"]["alpeft_id"])
                skip = r == 0 and k == 0  # "Skip" in the editor: a cancelled, empty annotation
                choice = [] if skip else [{"from_name": "label", "to_name": "image", "type": "choices",
                                           "value": {"choices": [names[truth[paths[ident]]]]}}]  # fmt: skip
                body = {"result": choice, "was_cancelled": skip, "lead_time": 1.0}
                _api(label_studio, "POST", f"/api/tasks/{t['id']}/annotations/", body)
                given.append((ident, -1 if skip else truth[paths[ident]]))
            out = _run(argv, tmp_path)
        assert (
            out.rstrip()
            .splitlines()[-1]
            .startswith(
                f"run finished: 2 rounds, 19 labels (1 excluded as can't tell); final model {wd}/ckpt/1; use it: "
            )
        )
    finally:
        del os.environ["LABEL_STUDIO_API_KEY"]
    with open(wd / "al_state.json") as f:
        state = json.load(f)
    with open(wd / "results.jsonl") as f:
        results = [json.loads(line) for line in f]
    # the recorded labels are the annotator's (a whole folder's pool rows are its ids), the skipped one excluded
    assert dict(zip(state["labeled_rows"], state["labels"])) == {i: lab for i, lab in given if lab >= 0}
    assert state["excluded"] == [i for i, lab in given if lab < 0]
    assert [x["n_excluded"] for x in results] == [1, 1] and [x["n_labeled"] for x in results] == [9, 19]
    assert all(x["evaluation"] == "cv" for x in results)
