"""Oracles without a server: simulated labels, the CSV file round-trip, the factory, and the Label Studio oracle's
settings, labelling config and annotation rules (its server tests are in oracles_label_studio_test.py)."""

import csv
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from alpeft_jax import oracles
from alpeft_jax.config import base
from alpeft_jax.data import ArraySource
from alpeft_jax.oracles import label_studio

NAMES = ["cat", "dog", "bird"]


def _pool(labels=(0, 1, 2, 1, 0, 2), names=NAMES):
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)
    src = ArraySource(images, np.asarray(labels), names, ids=np.arange(100, 100 + len(labels)))
    return oracles.PoolView(src, np.arange(len(labels)), names)


def test_simulated_reveals_dataset_labels_and_refuses_unlabelled():
    o = oracles.SimulatedOracle(_pool())
    assert o.request(0, np.array([2, 0])).tolist() == [2, 0]
    assert o.request(1, np.array([3]), np.array([[0.1, 0.1, 0.8]], np.float32)).tolist() == [1]
    assert o.info(1) == {}
    with pytest.raises(oracles.LabelFileError, match="oracle=file"):
        oracles.SimulatedOracle(_pool((0, -1, 2))).request(0, np.array([1]))


def test_file_oracle_writes_request_with_thumbnails_and_predictions_and_reads_names_or_indices(tmp_path):
    o = oracles.FileOracle(_pool(), str(tmp_path))
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], np.float32)
    with pytest.raises(oracles.PendingLabels, match="to_label.csv") as pending:
        o.request(3, np.array([4, 1]), probs)
    # the names and indices a label may be: DIR/classes.txt, the one class list of the run (no per-round copy)
    assert f"class names or indices from {tmp_path / 'classes.txt'} (0: its first line;" in str(pending.value)
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\nbird\n"
    assert sorted(os.listdir(tmp_path / "round_3")) == ["images", "to_label.csv"]
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n\n")  # the run's own file is never rewritten
    with pytest.raises(oracles.PendingLabels):
        o.request(5, np.array([4]))
    assert (tmp_path / "classes.txt").read_text() == "cat\ndog\nbird\n\n"
    with open(tmp_path / "round_3" / "to_label.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["label"], r["predicted"], r["confidence"]) for r in rows] == [
        ("104", "", "bird", "0.7000"),
        ("101", "", "cat", "0.6000"),
    ]
    assert all(os.path.exists(r["path"]) for r in rows)
    assert o.info(3) == {}
    (tmp_path / "round_3" / "labels.csv").write_text("id,label\n101,DOG\n104,0\n")
    assert o.request(3, np.array([4, 1]), probs).tolist() == [0, 1]
    assert o.info(3) == {"labels_file": str(tmp_path / "round_3" / "labels.csv")}
    with pytest.raises(oracles.PendingLabels):
        o.request(4, np.array([0]))  # round 0-style request without a model: empty prediction columns
    with open(tmp_path / "round_4" / "to_label.csv", newline="") as f:
        assert [(r["predicted"], r["confidence"]) for r in csv.DictReader(f)] == [("", "")]


def test_make_from_the_run_config_and_the_older_call(tmp_path):
    c = base()
    c.name = "myrun"
    assert isinstance(oracles.make(c, _pool(), tmp_path), oracles.SimulatedOracle)
    c.oracle = "file"
    f = oracles.make(c, _pool(), tmp_path, labels_file="x.csv", run_name="ignored")
    assert isinstance(f, oracles.FileOracle) and f.labels_file == "x.csv"
    c.oracle = "label_studio"
    c.label_studio.url = "http://127.0.0.1:9"
    c.label_studio.multiple = "majority"
    ls = oracles.make(c, _pool(), tmp_path)
    assert isinstance(ls, oracles.LabelStudioOracle) and ls.run_name == "myrun" and ls.multiple == "majority"
    assert oracles.make(c, _pool(), tmp_path, run_name="given").run_name == "given"
    # The older form: a kind and the oracle's own options.
    old = oracles.make("label_studio", _pool(), str(tmp_path), url="http://h:1", project=0, image_url_prefix="")
    assert old.url == "http://h:1" and old.project_setting == ""
    assert oracles.make("file", _pool(), str(tmp_path), labels_file="y.csv").labels_file == "y.csv"
    c.oracle = "human"
    with pytest.raises(ValueError, match="unknown oracle 'human'"):
        oracles.make(c, _pool(), tmp_path)


def test_label_studio_settings_match_the_config_and_bad_settings_are_named(tmp_path):
    assert base().label_studio.to_dict() == label_studio.DEFAULTS
    pool, wd = _pool(), str(tmp_path)
    with pytest.raises(ValueError, match="label_studio.url=http://HOST:PORT"):
        oracles.LabelStudioOracle(pool, wd)
    with pytest.raises(ValueError, match=r"unknown label_studio settings \['urll'\]"):
        oracles.LabelStudioOracle(pool, wd, urll="http://h:1")
    with pytest.raises(ValueError, match="images must be inline, local or url"):
        oracles.LabelStudioOracle(pool, wd, url="http://h:1", images="s3")
    with pytest.raises(ValueError, match="local_root=DIR"):
        oracles.LabelStudioOracle(pool, wd, url="http://h:1", images="local")
    with pytest.raises(ValueError, match="latest or majority"):
        oracles.LabelStudioOracle(pool, wd, url="http://h:1", multiple="first")
    with pytest.raises(ValueError, match=r"predictions must be \[2, 3\]"):
        oracles.LabelStudioOracle(pool, wd, url="http://h:1", token="t").request(0, np.array([0, 1]), np.ones((2, 4)))
    assert not os.path.exists(tmp_path / "round_0")


def test_label_studio_without_the_sdk_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)  # importing it raises ImportError
    o = oracles.LabelStudioOracle(_pool(), str(tmp_path), url="http://h:1", token="t")
    with pytest.raises(oracles.LabelFileError, match=r"pip install 'alpeft_jax\[label\]'"):
        o.client()


def test_label_config_escapes_class_names_and_is_accepted_back(tmp_path):
    names = ['a "quoted" one', "fish & chips", "<tag>", "l'été"]
    xml = label_studio.label_config(names)
    root = ET.fromstring(xml)
    assert [c.get("value") for c in root.iter("Choice")] == names
    o = oracles.LabelStudioOracle(_pool((0, 1, 2, 3), names), str(tmp_path), url="http://h:1")
    assert o._check_label_config(1, xml) == {"image": "image", "choices": "label", "key": "image", "classes": names}
    with pytest.raises(oracles.LabelFileError, match=r"lack the classes \['<tag>'\]"):
        o._check_label_config(1, label_studio.label_config([n for n in names if n != "<tag>"]))
    with pytest.raises(oracles.LabelFileError, match="needs an <Image"):
        o._check_label_config(1, "<View><Text name='t' value='$text'/></View>")


def _ann(aid, choice, when, cancelled=False, user=1, lead=1.0):
    result = (
        []
        if choice is None
        else [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": choice if isinstance(choice, list) else [choice]},
            }
        ]
    )
    return {
        "id": aid,
        "result": result,
        "was_cancelled": cancelled,
        "updated_at": when,
        "completed_by": user,
        "lead_time": lead,
    }


@pytest.mark.parametrize("rule", ["latest", "majority"])
def test_annotation_rules(tmp_path, rule):
    o = oracles.LabelStudioOracle(_pool(), str(tmp_path), url="http://h:1", multiple=rule)
    o._project = {"id": 1, "image": "image", "choices": "label", "key": "image", "classes": NAMES}
    task = lambda *anns: {"id": 9, "annotations": list(anns)}  # noqa: E731
    t1, t2, t3 = "2026-01-01T10:00:01Z", "2026-01-01T10:00:02Z", "2026-01-01T10:00:03Z"
    # updated_at orders the annotations, not their ids or their order in the list
    votes = task(_ann(3, "dog", t3), _ann(1, "cat", t1), _ann(2, "cat", t2))
    assert o._decide(100, [votes])[0] == {"latest": 1, "majority": 0}[rule]
    tie = task(_ann(1, "bird", t1), _ann(2, "dog", t2))  # majority: a tie goes to the class annotated last
    assert o._decide(100, [tie])[0] == 1
    # Two tasks of one example (imported twice by hand): their annotations are pooled.
    assert (
        o._decide(100, [task(_ann(1, "bird", t1)), task(_ann(2, "bird", t2), _ann(3, "cat", t3))])[0]
        == {"latest": 0, "majority": 2}[rule]
    )
    assert o._decide(100, [task(_ann(1, None, t1, cancelled=True))]) == (None, [], True)  # skipped
    assert o._decide(100, [task(_ann(1, None, t1))]) == (None, [], True)  # submitted with no class
    assert o._decide(100, [task()]) == (None, [], False)  # not annotated yet
    assert o._decide(100, [task(_ann(1, None, t1, cancelled=True), _ann(2, "dog", t2))])[0] == 1
    with pytest.raises(oracles.LabelFileError, match=r"task 9 \(example id 100\), annotation 4 .*unknown class 'eel'"):
        o._decide(100, [task(_ann(1, "dog", t1), _ann(4, "eel", t2))])
    with pytest.raises(oracles.LabelFileError, match=r"chose 2 classes \['dog', 'cat'\]; keep one"):
        o._decide(100, [task(_ann(5, ["dog", "cat"], t1))])


def test_file_oracle_skip_and_question_mark_exclude_an_example(tmp_path):
    o = oracles.FileOracle(_pool(), str(tmp_path))
    with pytest.raises(oracles.PendingLabels, match="skip or \\? where you can't tell"):
        o.request(0, np.array([0, 1, 2, 3]))
    (tmp_path / "round_0" / "labels.csv").write_text("id,label\n100,cat\n101, Skip \n102,?\n103,1\n")
    assert o.request(0, np.array([0, 1, 2, 3])).tolist() == [0, -1, -1, 1]
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / "labels.csv").write_text("id,label\n100,\n")
    with pytest.raises(oracles.LabelFileError, match="empty label; .* or skip if you can't tell"):
        o.request(1, np.array([0]))
    # A class called "skip" is that class, not a skip.
    own = oracles.FileOracle(_pool(names=["cat", "skip", "bird"]), str(tmp_path / "own"))
    (tmp_path / "own" / "round_0").mkdir(parents=True)
    (tmp_path / "own" / "round_0" / "labels.csv").write_text("id,label\n100,skip\n101,?\n")
    assert own.request(0, np.array([0, 1])).tolist() == [1, -1]


def test_label_studio_ctrl_c_while_waiting_stops_like_a_pending_round(tmp_path, monkeypatch):
    o = oracles.LabelStudioOracle(_pool(), str(tmp_path), url="http://h:1", token="t", wait_seconds=-1)
    monkeypatch.setattr(o, "project", lambda: {"id": 7})
    polls = []

    def poll(round_index, rows, ids, predictions, record):
        polls.append(round_index)
        labels = np.full(len(ids), -1, np.int64)
        labels[0] = 2  # one of two annotated so far
        return labels, [], []

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(o, "_poll", poll)
    monkeypatch.setattr(label_studio.oracle.time, "sleep", interrupted)
    with pytest.raises(oracles.PendingLabels, match=r"round 3: stopped while waiting .*\(1 of 2 .*rerun the same"):
        o.request(3, np.array([0, 1]))
    assert polls == [3]
    assert not os.path.exists(tmp_path / "round_3" / "label_studio.json")  # no labels recorded for the round
