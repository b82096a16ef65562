"""A user's own images: a class list in the user's order, a flat folder of unlabelled PNGs, a pool CSV with some
labels, a labelled test set or none (then a k-fold cv estimate per round, checked against a NumPy reimplementation
of its folds and pooling), and the pre-flight lines for the mistakes on that path."""

import csv
import json
import logging
import os

import jax
import numpy as np
import pytest
from _tiny_config import tiny_config
from PIL import Image
from sklearn.datasets import load_digits

from alpeft_jax import crossval, loop, preflight, report
from alpeft_jax.data import runsets, sources
from alpeft_jax.inputs import epoch_rows
from alpeft_jax.workdir import read_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]  # not alphabetical


_tiny = tiny_config


def _digit_pngs(root, rows, nested=True):
    """Digits `rows` as PNGs at several depths under root (no class folders); {absolute path: digit}."""
    d = load_digits()
    truth = {}
    for k, i in enumerate(rows):
        sub = ("", "batch_a", os.path.join("batch_b", "deeper"))[k % 3 if nested else 0]
        path = os.path.join(root, sub, f"img{i:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(path)
        truth[path] = int(d.target[i])
    return truth


def _results(wd):
    with open(os.path.join(wd, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _state(wd):
    with open(os.path.join(wd, "al_state.json")) as f:
        return json.load(f)


def _answer(wd, r, truth):
    """The annotator: fills round r's to_label.csv with each image's true class name; returns {id: class index}."""
    with open(os.path.join(wd, f"round_{r}", "to_label.csv")) as f:
        rows = list(csv.DictReader(f))
    given = {int(x["id"]): WORDS[truth[x["path"]]] for x in rows}
    with open(os.path.join(wd, f"round_{r}", "labels.csv"), "w") as f:
        f.write("id,label\n" + "".join(f"{i},{name}\n" for i, name in given.items()))
    return {i: WORDS.index(name) for i, name in given.items()}


@pytest.mark.slow  # four driver starts (three stops for labels); the default run has the one-start case below
def test_flat_folder_with_a_class_file_runs_three_rounds_with_cv_and_no_test_figure(tmp_path, caplog):
    truth = _digit_pngs(str(tmp_path / "pool"), range(90))
    class_file = tmp_path / "classes.txt"
    class_file.write_text("\n".join(WORDS) + "\n")
    cfg = _tiny("oracle=file,rounds=3,epochs=2")
    cfg.data.name, cfg.data.dir, cfg.data.classes = "folder", str(tmp_path / "pool"), str(class_file)
    assert preflight.check(cfg, str(tmp_path / "wd")) == []
    wd = str(tmp_path / "wd")
    answered = []  # (pool row order) the script's answers, round by round
    caplog.set_level(logging.INFO)
    for r in range(3):
        assert len(loop.run(cfg, wd)) == r  # stops for round r's labels
        if r == 0:
            assert read_classes(os.path.join(wd, "classes.txt")) == WORDS  # written before any label
        answers = _answer(wd, r, truth)
        answered += list(answers.items())
    results = loop.run(cfg, wd)
    assert len(results) == 3 and [r["n_labeled"] for r in results] == [10, 15, 20]
    # The recorded labels are the script's answers; the pool ids are the sorted paths at any depth.
    paths = sorted(truth, key=lambda p: os.path.relpath(p, tmp_path / "pool"))
    st = _state(wd)
    assert st["labels"] == [lab for _, lab in answered]
    assert [r["selected_ids"] for r in results] == [
        [i for i, _ in answered[:10]],
        [i for i, _ in answered[10:15]],
        [i for i, _ in answered[15:]],
    ]
    assert st["labels"] == [WORDS.index(WORDS[truth[paths[i]]]) for i, _ in answered]
    assert read_classes(os.path.join(wd, "classes.txt")) == WORDS
    # No test set: a cv estimate per round, said so at the start, and no line claims a test figure.
    assert all(r["evaluation"] == "cv" and r["cv_folds"] == 5 for r in results)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == r["n_labeled"] for r in results)
    lines = [rec.getMessage() for rec in caplog.records]
    assert sum("no test set:" in line for line in lines) == 4  # once per start (three stops, one finish)
    acc_lines = [line for line in lines if "accuracy" in line]
    assert len(acc_lines) == 3 and all("5-fold cv accuracy" in line and "test" not in line for line in acc_lines)
    table = report.markdown_table(report.group_runs([wd]))
    assert table.startswith("cv accuracy (%)") and "test" not in table
    assert "cv" in report.summary_table(report.group_runs_by_seed([wd])).splitlines()[0]

    _check_cv(loop.Run(cfg, wd), cfg, st, results[2], 2)


def _check_cv(run, cfg, st, result, r):
    """The cv estimate of round r, recomputed independently: NumPy folds (a stratified deal), one model per fold
    trained on the other folds with the run's trainer, NumPy accuracy over the pooled held-out predictions; and
    computed again (as a resume would) it gives the recorded numbers."""
    rows, labels = np.asarray(st["labeled_rows"]), np.asarray(st["labels"])
    k = min(5, len(rows))
    rng = np.random.default_rng(crossval.fold_seed(cfg.seed, r))
    fold = np.empty(len(rows), int)
    position = 0
    for c in sorted(set(labels.tolist())):
        for i in rng.permutation(np.flatnonzero(labels == c)):
            fold[i] = position % k
            position += 1
    np.testing.assert_array_equal(crossval.fold_assignment(labels, k, crossval.fold_seed(cfg.seed, r)), fold)
    assert max(np.bincount(fold)) - min(np.bincount(fold)) <= 1
    train_in, eval_in = run.inputs.get("pool", for_training=True), run.inputs.get("pool")
    known = np.full(len(train_in), -1)
    known[rows] = labels
    predicted = np.full(len(rows), -1)
    for f in range(k):
        s = crossval.fold_seed(cfg.seed, r, f)
        state = run.trainer.init(jax.random.key(s))
        fit_rows = rows[fold != f]
        state, _ = run.trainer.fit(
            state, lambda e, fr=fit_rows, s=s: train_in.batches(epoch_rows(fr, 8, s, e, True), 8, labels=known)
        )
        held = np.flatnonzero(fold == f)
        logits = np.concatenate(
            [lg[b["_mask"]] for lg, _, b in run.trainer.predict(state["trainable"], eval_in.batches(rows[held], 100))]
        )
        predicted[held] = logits.argmax(-1)
    assert result["accuracy"] == pytest.approx(float(np.mean(predicted == labels)), abs=1e-6)
    assert result["cv_folds"] == k and result["n"] == len(rows)
    again = crossval.cross_validate(
        run.trainer,
        train_in,
        eval_in,
        rows,
        labels,
        folds=5,
        seed=cfg.seed,
        round_index=r,
        augment=False,
        eval_batch_size=100,
    )
    metrics = ("accuracy", "nll", "ece", "brier")
    assert {m: again[m] for m in metrics} == pytest.approx({m: result[m] for m in metrics}, abs=1e-6)


def test_pool_csv_with_given_labels_fills_round_zero_and_reports_a_cv_estimate(tmp_path, caplog):
    """One driver start: 10 of 60 CSV rows come labelled, al.initial=10, so round 0 asks nothing, trains on them and
    reports a 5-fold cv estimate (no test set: one CSV), checked against the independent computation."""
    data = tmp_path / "data"
    truth = _digit_pngs(str(data / "imgs"), range(60), nested=False)
    names = sorted(truth)
    filled = [k for k in range(0, 60, 6)]
    lines = ["path,label"] + [
        f"{os.path.relpath(p, data)},{WORDS[truth[p]] if k in filled else ''}" for k, p in enumerate(names)
    ]
    (data / "pool.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(WORDS) + "\n")
    cfg = _tiny("oracle=file,rounds=1,epochs=2")
    cfg.data.name, cfg.data.dir, cfg.data.classes = "csv", str(data / "pool.csv"), str(tmp_path / "classes.txt")
    wd = str(tmp_path / "wd")
    assert preflight.check(cfg, wd) == []
    caplog.set_level(logging.INFO)
    run = loop.Run(cfg, wd)
    assert read_classes(os.path.join(wd, "classes.txt")) == WORDS  # before round 0, in the file's order
    results = run.run()
    st = _state(wd)
    assert st["given"] == 10 and st["labeled_rows"] == filled
    assert st["labels"] == [truth[names[k]] for k in filled]  # WORDS order: a digit's word is its class
    assert results[0]["selected_ids"] == [] and results[0]["n_labeled"] == 10
    assert not os.path.exists(os.path.join(wd, "round_0"))  # nobody was asked
    assert results[0]["evaluation"] == "cv"
    messages = [rec.getMessage() for rec in caplog.records]
    assert sum(m.startswith("no test set:") for m in messages) == 1
    (acc,) = [m for m in messages if "accuracy" in m]
    assert "5-fold cv accuracy" in acc and "test" not in acc
    _check_cv(run, cfg, st, results[0], 0)


@pytest.mark.slow  # three driver starts
def test_pool_csv_with_ten_labels_and_a_labelled_test_folder(tmp_path, caplog):
    d = load_digits()
    data = tmp_path / "data"
    truth = _digit_pngs(str(data / "imgs"), range(80), nested=False)
    names = sorted(truth)
    filled = set(range(0, 80, 8))  # 10 rows come labelled
    lines = ["path,label"] + [
        f"{os.path.relpath(p, data)},{WORDS[truth[p]] if k in filled else ''}" for k, p in enumerate(names)
    ]
    (data / "pool.csv").write_text("\n".join(lines) + "\n")
    for i in range(100, 140):  # a labelled test folder: <class>/<image>
        path = tmp_path / "test" / WORDS[d.target[i]] / f"t{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(path)
    cfg = _tiny("oracle=file,rounds=2,epochs=2")
    cfg.data.name, cfg.data.dir, cfg.data.classes = "csv", str(data / "pool.csv"), ",".join(WORDS)
    cfg.data.test, cfg.al.initial = str(tmp_path / "test"), 15
    wd = str(tmp_path / "wd")
    assert preflight.check(cfg, wd) == []
    caplog.set_level(logging.INFO)
    assert loop.run(cfg, wd) == []
    st = _state(wd)  # the 10 given labels are recorded before round 0 asks anything
    assert st["given"] == 10 and st["labeled_rows"] == sorted(filled)
    assert st["labels"] == [truth[names[k]] for k in sorted(filled)]  # WORDS order = digit
    asked0 = _answer(wd, 0, truth)
    assert len(asked0) == 5 and not set(asked0) & filled  # 15 - 10 asked, none of the given
    assert len(loop.run(cfg, wd)) == 1
    asked1 = _answer(wd, 1, truth)
    assert len(asked1) == 5 and not set(asked1) & (filled | set(asked0))
    results = loop.run(cfg, wd)
    assert [r["n_labeled"] for r in results] == [15, 20]
    assert all(r["evaluation"] == "test" and r["n"] == 40 and "cv_folds" not in r for r in results)
    messages = [rec.getMessage() for rec in caplog.records]
    assert any(m.startswith("test set: data.test=") for m in messages)
    assert sum("test accuracy" in m for m in messages) == 2 and not any("cv" in m for m in messages)


def test_a_single_labelled_csv_has_no_test_set_unless_cut_into_disjoint_slices(tmp_path):
    truth = _digit_pngs(str(tmp_path / "imgs"), range(20), nested=False)
    lines = ["path,label"] + [f"{p},{WORDS[t]}" for p, t in sorted(truth.items())]
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    cfg = _tiny()
    cfg.data.name, cfg.data.dir = "csv", str(tmp_path / "all.csv")
    plan, note = runsets.test_set(cfg, None, sorted(WORDS))
    assert plan is None and note.startswith("no test set: the test split 'test' of csv is the pool's own images")
    cfg.data.train_split, cfg.data.test_split = "train[:80%]", "train[80%:]"
    plan, note = runsets.test_set(cfg, None, sorted(WORDS))
    assert plan is not None and plan.size == 4 and note.startswith("test set: the test split 'train[80%:]'")
    # a test split with an unlabelled row is refused, not counted as wrong
    blanked = [line.rsplit(",", 1)[0] + "," if k % 2 else line for k, line in enumerate(lines[1:])]
    (tmp_path / "all.csv").write_text("\n".join(lines[:1] + blanked) + "\n")
    cfg.data.train_split, cfg.data.test_split = "train[:50%]", "train[50%:]"
    with pytest.raises(ValueError, match=r"has \d+ unlabelled image\(s\) \(first: .*\.png\); a test set needs a label"):
        runsets.test_set(cfg, None, sorted(WORDS))


def test_data_test_is_the_test_set_read_with_the_class_list(tmp_path):
    for k, cls in enumerate(["two", "one", "two"]):
        _digit_pngs(str(tmp_path / "test" / cls), [k], nested=False)
    cfg = _tiny()
    cfg.data.name, cfg.data.dir, cfg.data.test = "folder", str(tmp_path / "pool"), str(tmp_path / "test")
    plan, note = runsets.test_set(cfg, WORDS, WORDS)
    assert (plan.name, plan.data_dir, plan.classes, plan.size) == ("folder", str(tmp_path / "test"), tuple(WORDS), 3)
    assert note == f"test set: data.test={tmp_path / 'test'} (3 labelled images)"
    src = sources.get_source(plan.name, plan.split, plan.data_dir, **plan.options())
    assert sorted(src.labels.tolist()) == [1, 2, 2]  # indices in the class list's order
    _digit_pngs(str(tmp_path / "test"), [9], nested=False)  # an image outside the class folders
    with pytest.raises(ValueError, match="has 1 unlabelled image"):
        runsets.test_set(cfg, WORDS, WORDS)


def test_folder_listing_with_a_class_list(tmp_path):
    _digit_pngs(str(tmp_path / "flat"), range(6))
    src = sources.get_source("folder", "train", str(tmp_path / "flat"), classes=["b", "a"])
    assert src.class_names == ["b", "a"] and len(src) == 6 and (src.labels == -1).all()
    assert [os.path.relpath(p, tmp_path / "flat") for p in src.paths] == sorted(
        os.path.relpath(p, tmp_path / "flat") for p in src.paths
    )
    # class folders in the given order, and images beside them unlabelled
    sorted_dir = tmp_path / "sorted"
    for cls in ("b", "a"):
        _digit_pngs(str(sorted_dir / cls), range(2), nested=False)
    _digit_pngs(str(sorted_dir), range(3, 4), nested=False)
    src = sources.get_source("folder", "train", str(sorted_dir), classes="b,a")
    assert src.labels.tolist() == [0, 0, 1, 1, -1]
    assert sources.inspect_source("folder", "train", str(sorted_dir), classes=["b", "a"]).class_names == ("b", "a")
    with pytest.raises(ValueError, match=r"folders \['a'\] under .* are not in the class list; add them to"):
        sources.get_source("folder", "train", str(sorted_dir), classes=["b", "c"])


def test_preflight_lines_for_the_class_list_and_flat_folders(tmp_path):
    wd = str(tmp_path / "wd")
    _digit_pngs(str(tmp_path / "flat"), range(40), nested=False)  # sub-folders without a class list are classes
    cfg = _tiny("oracle=file")
    cfg.data.name, cfg.data.dir, cfg.al.gamma = "folder", str(tmp_path / "flat"), 1.0
    (line,) = preflight.check(cfg, wd)
    assert "no class folders under" in line and "--config.data.classes=FILE" in line
    cfg.data.classes = str(tmp_path / "missing.txt")
    assert preflight.check(cfg, wd) == [
        f"data.classes: class file {tmp_path / 'missing.txt'} does not exist; pass a file with one class name per "
        "line, or the names inline: --config.data.classes=a,b,c"
    ]
    (tmp_path / "empty.txt").write_text("\n\n")
    cfg.data.classes = str(tmp_path / "empty.txt")
    assert preflight.check(cfg, wd) == [
        f"data.classes: class file {tmp_path / 'empty.txt'} is empty; write one class name per line"
    ]
    (tmp_path / "twice.txt").write_text("cat\ndog\ncat\n")
    cfg.data.classes = str(tmp_path / "twice.txt")
    assert preflight.check(cfg, wd) == [
        f"data.classes: class file {tmp_path / 'twice.txt'} names ['cat'] more than once; keep each class once"
    ]
    cfg.data.classes = "cat,dog"
    assert preflight.check(cfg, wd) == []
    # a CSV label outside the class list, and a CSV without labels or a class list
    (tmp_path / "pool.csv").write_text("path,label\nflat/img0000.png,cat\nflat/img0003.png,emu\n")
    cfg.data.name, cfg.data.dir = "csv", str(tmp_path / "pool.csv")
    (line,) = preflight.check(cfg, wd)
    assert "label(s) in" in line and "line 3: 'emu'" in line and "add them to --config.data.classes" in line
    (tmp_path / "pool.csv").write_text("path,label\nflat/img0000.png,\n")
    cfg.data.classes = ""
    assert any("has 0 class" in p and "--config.data.classes=FILE" in p for p in preflight.check(cfg, wd))
    # the schedule counts the given labels toward al.initial and asks only unlabelled images
    (tmp_path / "pool.csv").write_text(
        "path,label\n" + "".join(f"flat/img{i:04d}.png,{'cat' if i < 30 else ''}\n" for i in range(40))
    )
    cfg.data.classes, cfg.data.max_pool, cfg.al.initial, cfg.al.rounds = "cat,dog", 0, 35, 2
    cfg.al.budget = 5
    assert preflight.check(cfg, wd) == []  # 5 more + 5 = the 10 unlabelled images
    cfg.al.budget = 6
    assert preflight.check(cfg, wd) == [
        "al.budget=6: 5 more round-0 labels (al.initial=35 less the 30 the pool comes with) + al.budget x "
        "(al.rounds - 1) = 11 exceed the 10 unlabelled images of the pool ('train'); lower al.budget or al.rounds"
    ]
