"""The driver end to end: resume after a stop inside a round (in-process, and after SIGKILL), the CSV labelling
round-trip, config checks, reports, the CLI."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _tiny_config import tiny_config
from sklearn.datasets import load_digits

from alpeft_jax import checkpoint, loop, report
from alpeft_jax.oracles import LabelFileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


_tiny = tiny_config


def _cli(workdir, arg="", *extra, **popen):
    cmd = [
        sys.executable,
        "-m",
        "alpeft_jax.main",
        f"--config={TINY}" + (f":{arg}" if arg else ""),
        f"--workdir={workdir}",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _results(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _comparable(rows):
    keys = ("round", "n_labeled", "accuracy", "nll", "ece", "brier", "selected_ids")
    return [{k: r[k] for k in keys} for r in rows]


def _state(workdir):
    path = os.path.join(workdir, "al_state.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:  # never torn (atomic writes), but be safe while polling
        return None


@pytest.mark.slow  # the default run stops in-process mid-round (the test below) and resumes
def test_sigkill_mid_round_then_resume_equals_uninterrupted(tmp_path):
    cache = str(tmp_path / "cache")
    arg = f"rounds=3,epochs=6,ckpt=1,cache={cache}"
    ref = _cli(tmp_path / "ref", arg)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out
    expected = _results(tmp_path / "ref")
    assert len(expected) == 3

    run = tmp_path / "killed"
    proc = _cli(run, arg)
    deadline = time.time() + 600
    killed_state = None
    while time.time() < deadline and proc.poll() is None:
        st = _state(run)
        progress = run / "progress"
        if (
            st
            and st["round"] >= 1
            and st["phase"] == "train"
            and progress.exists()
            and any(p.name.isdigit() for p in progress.iterdir())
        ):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_state = _state(run)
            break
        time.sleep(0.05)
    assert killed_state is not None, "the run finished before it could be killed mid-round"
    assert proc.returncode == -signal.SIGKILL
    # No label is lost: the labels recorded before the kill are a prefix of the final ones.
    resumed = _cli(run, arg)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming training" in out
    final = _state(run)
    n = len(killed_state["labels"])
    assert final["labels"][:n] == killed_state["labels"]
    assert final["labeled_rows"][:n] == killed_state["labeled_rows"]
    assert _comparable(_results(run)) == _comparable(expected)


WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _digits_csv(root, n_train=150, n_test=60):
    """Digits as a CSV manifest labelled with words ("train.csv", "test.csv"); the digit of each train row.

    Digits' own class names are their indices, so a label file could not tell a name from an index; the words'
    sorted class list ("eight" is class 0, "zero" class 9) makes a mixup of the two fail.
    """
    from PIL import Image

    d = load_digits()
    root.mkdir()
    for split, idx in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        lines = ["path,label"]
        for i in idx:
            Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).save(root / f"{i}.png")
            lines.append(f"{i}.png,{WORDS[d.target[i]]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return d.target[:n_train]


def _host_tree(tree):
    """A checkpointed pytree as {path: numpy array} (PRNG keys as their key data)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=checkpoint.jnp_is_key)[0]
    return {
        jax.tree_util.keystr(k): np.asarray(jax.random.key_data(v) if checkpoint.jnp_is_key(v) else v)
        for k, v in leaves
    }


def _assert_same_tree(got, expected, what):
    assert got.keys() == expected.keys(), what
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{what} {k}")


def test_stop_inside_a_round_resumes_from_the_in_round_checkpoint(tmp_path, tmp_path_factory, monkeypatch):
    # Round 1 trains 15 labels in batches of 4: 3 steps an epoch, 2 epochs, a checkpoint after every step. Right after
    # the checkpoint of epoch 1, batch 1 (step 4 of 6) is committed, the workdir is copied: the copy is exactly what a
    # kill at that moment leaves (every write before it is synchronous and atomic; nothing is in flight). The run
    # goes on uninterrupted as the reference, and a new Run (a new process would hold nothing more) resumes the copy.
    cache = str(tmp_path_factory.getbasetemp() / "shared_cache")  # the frozen prefix, shared with the tests below
    ref_wd, wd = tmp_path / "ref", tmp_path / "stopped"

    def config():
        c = _tiny(f"rounds=2,epochs=2,ckpt=1,cache={cache}")
        c.train.batch_size = 4
        return c

    stop_at = {"round": 1, "epoch": 1, "batch": 1}
    log = []  # ("save" | "restore", store folder, step, meta, tree on the host), in call order
    save, restore = checkpoint.TreeStore.save, checkpoint.TreeStore.restore

    def recording_save(store, step, tree, meta=None):
        save(store, step, tree, meta)
        log.append(("save", store.directory.name, step, json.loads(json.dumps(meta or {})), _host_tree(tree)))
        if store.directory.name == "progress" and {k: (meta or {}).get(k) for k in stop_at} == stop_at:
            shutil.copytree(ref_wd, wd)

    def recording_restore(store, step, like):
        tree, meta = restore(store, step, like)
        log.append(("restore", store.directory.name, step, dict(meta), _host_tree(tree)))
        return tree, meta

    monkeypatch.setattr(checkpoint.TreeStore, "save", recording_save)
    monkeypatch.setattr(checkpoint.TreeStore, "restore", recording_restore)

    expected = loop.run(config(), str(ref_wd))
    reference, log[:] = list(log), []
    assert wd.exists(), "the run never committed the in-round checkpoint to stop after"
    stopped_at = next(
        e
        for e in reference
        if e[:2] == ("save", "progress") and e[3]["round"] == 1 and (e[3]["epoch"], e[3]["batch"]) == (1, 1)
    )
    at_stop = _state(wd)
    assert (at_stop["round"], at_stop["phase"], len(at_stop["results"])) == (1, "train", 1)
    assert sorted(int(p.name) for p in (wd / "progress").iterdir() if p.name.isdigit()) == [stopped_at[2]]

    results = loop.run(config(), str(wd))
    # The resume restored the in-round checkpoint (the very arrays saved there) ...
    progress_restores = [e for e in log if e[:2] == ("restore", "progress")]
    assert [(e[2], e[3]) for e in progress_restores] == [(stopped_at[2], stopped_at[3])]
    _assert_same_tree(progress_restores[0][4], stopped_at[4], "restored")
    # ... and trained on from there: the last 2 steps of round 1, not its 6 from the start.
    where = lambda entries: [
        (e[3]["round"], e[3]["epoch"], e[3]["batch"]) for e in entries if e[:2] == ("save", "progress")
    ]
    assert where(reference)[-6:] == [(1, e, b) for e in range(2) for b in (1, 2, 3)]
    assert where(log) == [(1, 1, 2), (1, 1, 3)]

    # The same labels, selections, test metrics and end-of-round state (trainables, optimiser, rng) as the reference.
    ref_state, final_state = _state(ref_wd), _state(wd)
    assert final_state["labeled_rows"] == ref_state["labeled_rows"] and final_state["labels"] == ref_state["labels"]
    assert _comparable(results) == _comparable(expected) and len(results) == 2
    ends = {e[2]: e[4] for e in reference if e[:2] == ("save", "ckpt")}
    resumed_ends = {e[2]: e[4] for e in log if e[:2] == ("save", "ckpt")}
    assert sorted(ends) == [0, 1] and sorted(resumed_ends) == [1]
    _assert_same_tree(resumed_ends[1], ends[1], "round 1")


def test_file_oracle_round_trip_and_bad_label_files(tmp_path):
    wd = str(tmp_path / "run")
    digit = _digits_csv(tmp_path / "data")  # ids are the manifest's row numbers
    classes = sorted(WORDS)  # a CSV manifest's classes: its labels, sorted
    cls = np.asarray([classes.index(WORDS[k]) for k in digit])  # the class index of each id
    cfg = _tiny("oracle=file,rounds=2,epochs=2")
    cfg.data.name, cfg.data.dir = "csv", str(tmp_path / "data")
    assert loop.run(cfg, wd) == []  # stops cleanly, waiting for labels
    todo = os.path.join(wd, "round_0", "to_label.csv")
    with open(todo) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and all(r["label"] == "" and os.path.exists(r["path"]) for r in rows)
    truth = {int(r["id"]): int(cls[int(r["id"])]) for r in rows}  # the annotator knows the truth
    assert list(truth.values()) != digit[list(truth)].tolist()  # class indices here are not the digits
    state_before = open(os.path.join(wd, "al_state.json")).read()
    labels_path = os.path.join(wd, "round_0", "labels.csv")

    def write(lines):
        with open(labels_path, "w") as f:
            f.write("id,label\n" + "".join(f"{i},{lab}\n" for i, lab in lines))

    items = list(truth.items())
    bad_cases = {
        "unknown class": [(items[0][0], "eleven")] + items[1:],
        "requested ids have no row": items[1:],
        "appears twice": items + [items[0]],
        "was not requested": items + [(999999, 1)],
        "empty label": [(items[0][0], "")] + items[1:],
    }
    for message, lines in bad_cases.items():
        write(lines)
        with pytest.raises(LabelFileError, match=message):
            loop.run(cfg, wd)
        assert open(os.path.join(wd, "al_state.json")).read() == state_before  # nothing changed
    # Class names (any case) work as well as indices, and each means its own class.
    write([(i, classes[lab].upper() if k % 2 else str(lab)) for k, (i, lab) in enumerate(items)])
    assert len(loop.run(cfg, wd)) == 1  # round 0 trained; round 1 waits for its labels
    st = _state(wd)
    assert st["round"] == 1 and st["phase"] == "label" and st["labels"] == [lab for _, lab in items]
    assert len(_results(wd)) == 1
    todo1 = os.path.join(wd, "round_1", "to_label.csv")
    with open(todo1) as f:
        ids1 = [int(r["id"]) for r in csv.DictReader(f)]
    assert len(ids1) == 5 and not set(ids1) & set(truth)
    other = tmp_path / "filled.csv"
    other.write_text("id,label\n" + "".join(f"{i},{WORDS[digit[i]]}\n" for i in ids1))
    results = loop.run(cfg, wd, labels_file=str(other))
    assert [r["n_labeled"] for r in results] == [10, 15]
    assert _state(wd)["labels"][10:] == cls[ids1].tolist()
    for r, ids in enumerate((list(truth), list(truth) + ids1)):  # the labels so far, counted per class
        counts = np.bincount(cls[ids], minlength=10)
        assert results[r]["classes_covered"] == (counts > 0).sum()
        assert results[r]["rarest_class_labels"] == counts.min()


def test_changed_config_is_refused_naming_the_fields(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(ValueError, match="al.strategy='entropyy' is not one of badge, bald, coreset"):
        loop.run(_tiny("rounds=1,epochs=1,strategy=entropyy"), wd)
    loop.run(_tiny("rounds=1,epochs=1"), wd)  # nothing was recorded yet, so the corrected config starts it
    changed = _tiny("rounds=1,epochs=2")
    with pytest.raises(loop.ConfigMismatchError, match=r"train\.epochs: 1 -> 2"):
        loop.run(changed, wd)
    more = _tiny("rounds=2,epochs=1")
    assert len(loop.run(more, wd, allow_config_change=True)) == 2


def test_report_aggregates_runs(tmp_path):
    for name, seed_rows in {"a": [(0.5, 0.6), (0.7, 0.8)], "b": [(0.4, 0.5)]}.items():
        for s, accs in enumerate(seed_rows):
            d = tmp_path / f"{name}{s}"
            d.mkdir()
            (d / "config.json").write_text(
                json.dumps({"name": name, "al": {"strategy": "x"}, "train": {"calibration": "none"}})
            )
            (d / "results.jsonl").write_text(
                "".join(
                    json.dumps(
                        {"round": i, "n_labeled": 10 * (i + 1), "accuracy": a, "ece": 0.1, "nll": 1.0, "brier": 0.5}
                    )
                    + "\n"
                    for i, a in enumerate(accs)
                )
            )
    groups = report.group_runs([str(tmp_path / d) for d in ("a0", "a1", "b0")])
    table = report.markdown_table(groups)
    # a: mean of 0.5/0.7 = 60.00 ± 10.00 at 10 labels; 70.00 ± 10.00 at 20
    assert "| a | 2 | 60.00 ± 10.00 | 70.00 ± 10.00 |" in table
    assert "| b | 1 | 40.00 ± 0.00 | 50.00 ± 0.00 |" in table
    out = report.plot_curves(groups, str(tmp_path / "curves.png"))
    assert os.path.getsize(out) > 1000
    assert report.main([str(tmp_path / "a0"), str(tmp_path / "nope")]) == 2


def test_cli_rejects_misspelt_key_and_bad_labels_file(tmp_path):
    proc = _cli(tmp_path / "x", "", "--config.train.epochz=3")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "epochz" in out
    proc = _cli(tmp_path / "y", "oracle=file,rounds=1", "--labels=/nonexistent/labels.csv")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "does not exist" in out


@pytest.mark.slow
def test_demo_runlocal_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "alpeft_jax.main", "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _results(tmp_path)
    assert [r["n_labeled"] for r in rows] == [10, 20]
    assert os.path.exists(tmp_path / "curves.png")


@pytest.mark.parametrize(
    "strategy",
    ["badge", "bald", "learning_loss"]
    + [  # the rest: strategy tests cover them
        pytest.param(s, marks=pytest.mark.slow) for s in ("coreset", "featdist", "typiclust", "probcover", "margin")
    ],
)
def test_every_strategy_runs_in_the_driver(tmp_path_factory, strategy):
    cache = str(tmp_path_factory.getbasetemp() / "shared_cache")  # the frozen prefix is computed once for all
    wd = str(tmp_path_factory.mktemp(strategy))
    results = loop.run(_tiny(f"rounds=2,epochs=1,strategy={strategy},cache={cache}"), wd)
    assert [r["n_labeled"] for r in results] == [10, 15]
    assert results[1]["strategy"] == strategy and len(set(results[1]["selected_ids"])) == 5
    assert not set(results[0]["selected_ids"]) & set(results[1]["selected_ids"])


@pytest.mark.slow  # three rounds of the tiny run (about 50 s of CPU); the pieces have fast tests of their own
def test_cant_tell_examples_are_excluded_never_asked_again_and_a_skipped_round_finishes(tmp_path, caplog):
    import logging as std_logging

    from absl import logging as absl_logging

    wd = str(tmp_path / "run")
    digit = _digits_csv(tmp_path / "data")
    classes = sorted(WORDS)
    cfg = _tiny("oracle=file,rounds=3,epochs=1")
    cfg.data.name, cfg.data.dir = "csv", str(tmp_path / "data")

    def todo(r):
        with open(os.path.join(wd, f"round_{r}", "to_label.csv")) as f:
            return [int(row["id"]) for row in csv.DictReader(f)]

    def answer(r, lines):
        with open(os.path.join(wd, f"round_{r}", "labels.csv"), "w") as f:
            f.write("id,label\n" + "".join(f"{i},{lab}\n" for i, lab in lines))

    assert loop.run(cfg, wd) == []
    ids0 = todo(0)
    answer(0, [(i, "skip" if k % 2 else "?") for k, i in enumerate(ids0)])  # the annotator can tell none
    results = loop.run(cfg, wd)  # round 0 finishes with an untrained model; round 1 waits
    assert len(results) == 1 and results[0]["n_labeled"] == 0 and results[0]["n_excluded"] == 10
    assert 0.0 <= results[0]["accuracy"] <= 1.0
    st = _state(wd)
    assert st["excluded"] == ids0 and st["labeled_rows"] == [] and st["round"] == 1
    ids1 = todo(1)
    assert len(ids1) == 5 and not set(ids1) & set(ids0)  # excluded rows are never asked again
    answer(1, [(i, "skip" if k < 2 else WORDS[digit[i]]) for k, i in enumerate(ids1)])
    absl_logging.set_verbosity(absl_logging.INFO)  # the default: no per-epoch lines
    with caplog.at_level(std_logging.INFO, logger="absl"):
        results = loop.run(cfg, wd)
    assert "round 1: 2 of 5 examples excluded" in caplog.text and " epoch 0: loss" not in caplog.text
    assert [r["n_labeled"] for r in results] == [0, 3] and [r["n_excluded"] for r in results] == [10, 12]
    st = _state(wd)
    assert st["labeled_rows"] == ids1[2:] and st["labels"] == [classes.index(WORDS[digit[i]]) for i in ids1[2:]]
    assert st["excluded"] == ids0 + ids1[:2]
    ids2 = todo(2)
    assert not set(ids2) & (set(ids0) | set(ids1))
    answer(2, [(i, WORDS[digit[i]]) for i in ids2])
    caplog.clear()
    with caplog.at_level(std_logging.DEBUG, logger="absl"):  # --verbosity=1: the per-epoch lines too
        run = loop.Run(cfg, wd)
        results = run.run()
    assert "round 2 epoch 0: loss" in caplog.text
    assert [r["n_labeled"] for r in results] == [0, 3, 8]
    assert run.finished.startswith(
        f"run finished: 3 rounds, 8 labels (12 excluded as can't tell); final model {wd}/ckpt/2; use it: "
    )
    assert os.path.isdir(os.path.join(wd, "ckpt", "2"))


@pytest.mark.slow  # two driver runs (~30 s of CPU); the scaling itself is tested fast in tests/train_test.py
def test_loss_scale_carries_across_rounds_and_skipped_steps_are_counted(tmp_path, monkeypatch, caplog):
    # float16's dynamic loss scaling in the driver, on the fast float32 tiny run: gradients are taken to overflow
    # whenever the scale exceeds 2^20 (so the first step at 2^21 is skipped and halves the scale). Round 0 has
    # one update step: it is skipped (a warning: the round did not train). Round 1 starts from the halved scale,
    # carried through round 0's checkpoint into a new Run, and trains. (Real overflows: tests/train_test.py.)
    import dataclasses

    import jax.numpy as jnp

    from alpeft_jax import train

    step = train._loss_scale_step
    overflow = lambda old, new, grads, scaling, interval: step(
        old, new, jax.tree.map(lambda g: jnp.where(scaling["scale"] > 2.0**20, jnp.inf, g), grads), scaling, interval
    )
    monkeypatch.setattr(train, "_loss_scale_step", overflow)
    config_of = loop.train_config
    monkeypatch.setattr(loop, "train_config", lambda c: dataclasses.replace(config_of(c), loss_scale="dynamic"))
    starts, ends = [], []
    fit = train.Trainer.fit

    def recording(self, state, *a, **k):
        starts.append(float(state["loss_scale"]["scale"]))
        state, history = fit(self, state, *a, **k)
        ends.append(float(state["loss_scale"]["scale"]))
        return state, history

    monkeypatch.setattr(train.Trainer, "fit", recording)
    c = _tiny("rounds=1,epochs=1")
    c.adapt.mode = "linear"
    c.data.max_pool, c.data.max_test = 40, 10
    c.train.loss_scale_init = 2.0**21
    wd = str(tmp_path / "wd")
    with caplog.at_level("WARNING"):
        first = loop.run(c, wd)
    assert first[0]["skipped_steps"] == 1 and starts == [2.0**21] and ends == [2.0**20]
    assert any("1 of 1 training steps were skipped" in r.getMessage() for r in caplog.records)
    c.al.rounds = 2
    results = loop.run(c, wd, allow_config_change=True)  # a new Run: the scale comes from round 0's checkpoint
    assert starts == [2.0**21, 2.0**20] and results[1]["skipped_steps"] == 0
    assert results[0] == first[0]
