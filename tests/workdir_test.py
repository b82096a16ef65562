"""The workdir's files: the AL record reads and writes al_state.json exactly as runs made before it wrote them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alpeft_jax import workdir as wd
from alpeft_jax.inputs import choose_kinds

# al_state.json as the driver wrote it at each phase boundary (a fresh run, after selecting, after labelling and
# after the round), before the record was a dataclass
FRESH = {"round": 0, "phase": "select", "labeled_rows": [], "labels": [], "selected": [], "results": []}
SELECTED = {**FRESH, "phase": "label", "selected": [4, 1], "t_score": 0.0, "t_select": 0.01, "predictions": None}
LABELLED = {**SELECTED, "phase": "train", "labeled_rows": [4, 1], "labels": [2, 0], "label_info": {}}
FINISHED = {
    **LABELLED,
    "round": 1,
    "phase": "select",
    "selected": [],
    "predictions": None,
    "label_info": {},
    "results": [{"round": 0, "n_labeled": 2, "accuracy": 0.5}],
}
SCORED = {
    **FINISHED,
    "round": 1,
    "phase": "label",
    "selected": [3],
    "t_score": 1.5,
    "t_select": 0.2,
    "predictions": [[0.25, 0.75, 0.0]],
    "label_info": {"source": "file"},
}


@pytest.mark.parametrize("state", [FRESH, SELECTED, LABELLED, FINISHED, SCORED])
def test_record_round_trips_every_phase(tmp_path, state):
    path = tmp_path / wd.STATE_FILE
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    before = path.read_text()
    w = wd.Workdir.open(tmp_path)
    record = w.read_record()
    assert record.round == state["round"] and record.phase == state["phase"]
    w.write_record(record)
    assert path.read_text() == before  # the same bytes: old workdirs resume, new files read as before


def test_fresh_record_and_known_labels(tmp_path):
    w = wd.Workdir.open(tmp_path / "new")
    record = w.read_record()
    assert record.to_json() == FRESH
    record = wd.RunRecord.from_json(FINISHED)
    np.testing.assert_array_equal(record.known(6), [-1, 0, -1, -1, 2, -1])  # rows 4, 1 labelled 2, 0
    with pytest.raises(ValueError, match="does not know"):
        wd.RunRecord.from_json({**FRESH, "surprise": 1})


def test_layout_names_and_paths(tmp_path):
    w = wd.Workdir.open(tmp_path / "run")
    names = {p.name for p in (w.state, w.config, w.results, w.curves, w.tensorboard, w.rounds, w.progress, w.cache())}
    assert names == {
        "al_state.json",
        "config.json",
        "results.jsonl",
        "curves.png",
        "tensorboard",
        "ckpt",
        "progress",
        "cache",
    }
    assert str(w.cache("gs://bucket/c")) == "gs://bucket/c" and w.cache(str(tmp_path / "c")) == tmp_path / "c"
    assert wd.as_path("gs://b/x").as_uri().startswith("gs://") and not wd.is_local("gs://b/x")
    assert wd.as_path("rel").is_absolute() and wd.is_local("rel")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        wd.Workdir.open(tmp_path / "file")


def test_config_change_is_refused_once_started(tmp_path):
    w = wd.Workdir.open(tmp_path)
    w.record_config({"a": 1, "b": {"c": 2}}, allow_change=False)
    w.record_config({"a": 5}, allow_change=False)  # nothing recorded yet: any config may start it
    w.write_record(wd.RunRecord())
    with pytest.raises(wd.ConfigMismatchError, match="a: 5 -> 6"):
        w.record_config({"a": 6}, allow_change=False)
    w.record_config({"a": 6}, allow_change=True)
    assert json.loads(w.config.read_text()) == {"a": 6}


@pytest.mark.parametrize(
    "model_kind, cache, augment, expected",
    [
        ("features", True, False, ("features", "features")),
        ("hidden", True, False, ("hidden", "hidden")),
        ("hidden", True, True, ("hidden", "images")),  # augmentation needs the images
        ("hidden", False, False, ("images", "images")),  # no cache: everything from images
        ("images", True, False, ("images", "images")),  # nothing to cache
    ],
)
def test_input_kinds(model_kind, cache, augment, expected):
    assert choose_kinds(model_kind, cache, augment) == expected


def test_excluded_rows_are_kept_and_old_records_load_without_them(tmp_path):
    old = wd.RunRecord.from_json(FINISHED)  # a file written before "can't tell" existed
    assert old.excluded == [] and "excluded" not in old.to_json()
    rec = wd.RunRecord.from_json({**FINISHED, "excluded": [3, 5]})
    assert rec.to_json()["excluded"] == [3, 5]
    np.testing.assert_array_equal(rec.known(6), [-1, 0, -1, -1, 2, -1])  # excluded rows have no label
    np.testing.assert_array_equal(rec.unavailable(6), [False, True, False, True, True, True])
    w = wd.Workdir.open(tmp_path)
    w.write_record(rec)
    assert w.read_record() == rec


def test_the_finished_line_names_rounds_labels_the_final_model_and_the_commands(tmp_path):
    rec = wd.RunRecord.from_json(FINISHED)
    use = (
        f"; use it: python -m alpeft_jax.predict --workdir={tmp_path} IMAGES... | "
        f"python -m alpeft_jax.export --workdir={tmp_path} --format=native|hf|peft --out=DIR"
    )
    assert wd.finished_line(tmp_path, rec) == f"run finished: 1 rounds, 2 labels; final model {tmp_path}/ckpt/0{use}"
    rec.excluded = [3]
    line = wd.finished_line("gs://b/run/", rec)
    assert line.startswith(
        "run finished: 1 rounds, 2 labels (1 excluded as can't tell); final model gs://b/run/ckpt/0; use it: "
    )
    assert "predict --workdir=gs://b/run IMAGES" in line and "export --workdir=gs://b/run --format" in line
