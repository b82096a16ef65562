"""The Label Studio oracle's labelling rules, settings and image fields, without a server (milliseconds).

The tasks and annotations below are written by hand in the shape Label Studio returns them. Where the shape comes
from: `GET /api/tasks?fields=all`, which `label_studio_sdk` 2.1's `tasks.list` pages through (its `LseTask.annotations`
is `List[Dict[str, Any]]`, so annotations stay plain JSON: times are ISO strings, "...Z" in UTC with microseconds),
and the same listing through `api.Server.tasks` from the label-studio 1.23.2 server of tests/_label_studio_server.py
after annotating as oracles_label_studio_test.py does (POST /api/tasks/<id>/annotations/, a skip being
`was_cancelled: true` with an empty result): the field names and types below are those it printed. Each expected
outcome is worked out by hand from the rule stated in the oracle's documentation, not taken from the code.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from alpeft_jax.config import base
from alpeft_jax.oracles import LabelFileError, PoolView
from alpeft_jax.oracles.label_studio import images, rules, settings

NAMES = ["cat", "dog", "bird"]
CAT, DOG, BIRD = 0, 1, 2
LINK = "http://ls:8080/projects/7/data"
PARSE = PoolView(None, np.arange(0), NAMES).parse_label  # class names, case-insensitive, or indices


def ann(aid, choices, updated, *, cancelled=False, user=1, lead=2.0, from_name="label", task=9):
    """An annotation as the server lists it inside a task (the fields a 1.23 server sends)."""
    result = (
        []
        if choices is None
        else [{"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    )
    return {
        "id": aid,
        "created_username": f" annotator@example.com, {user}",
        "created_ago": "0\u00a0minutes",
        "completed_by": user,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": updated,
        "updated_at": updated,
        "draft_created_at": None,
        "lead_time": lead,
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task,
        "project": 7,
        "updated_by": user,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def task(tid, *annotations, ident=100, run="k1", round_index=0):
    """A task of this run as the server lists it (annotations included with fields=all)."""
    return {
        "id": tid,
        "data": {
            "image": "data:image/png;base64,AA",
            "alpeft_id": ident,
            "alpeft_round": round_index,
            "alpeft_run": run,
        },
        "annotations": list(annotations),
        "predictions": [],
        "is_labeled": any(not a["was_cancelled"] for a in annotations),
        "total_annotations": sum(not a["was_cancelled"] for a in annotations),
        "cancelled_annotations": sum(bool(a["was_cancelled"]) for a in annotations),
        "project": 7,
    }


def t(second):
    return f"2026-12-02T10:00:{second:02d}.{second * 1000:06d}Z"


def decide(tasks, multiple, ident=100):
    return rules.decide(tasks, choices_name="label", multiple=multiple, parse_label=PARSE, ident=ident, link=LINK)


def label(tasks, multiple):
    return decide(tasks, multiple)[0]


# -- which annotation counts ------------------------------------------------------------------------------------


def test_one_annotation_is_the_label_under_both_rules():
    for multiple in ("latest", "majority"):
        a = ann(1, ["dog"], t(1))
        assert decide([task(9, a)], multiple) == (DOG, [a], False)


def test_class_names_match_case_insensitively():
    assert label([task(9, ann(1, ["Bird"], t(1)))], "latest") == BIRD


def test_latest_is_the_most_recently_updated_not_the_highest_id_or_the_last_listed():
    # ids 3, 1, 2 updated at 1s, 3s, 2s: the latest update is annotation 1 (cat)
    anns = [ann(3, ["dog"], t(1)), ann(1, ["cat"], t(3)), ann(2, ["bird"], t(2))]
    label_, counted, skipped = decide([task(9, *anns)], "latest")
    assert (label_, [a["id"] for a in counted], skipped) == (CAT, [1], False)


def test_latest_reads_created_at_when_there_is_no_updated_at_and_ids_break_equal_times():
    a, b = ann(5, ["bird"], t(4)), ann(6, ["dog"], t(2))
    a["updated_at"] = None  # created at 4s, b updated at 2s: a is the latest
    assert label([task(9, a, b)], "latest") == BIRD
    same = [ann(8, ["dog"], t(5)), ann(7, ["cat"], t(5))]  # the same time: the higher id (8, dog) is the later
    assert label([task(9, *same)], "latest") == DOG


def test_majority_is_the_most_frequent_class_and_counts_every_vote():
    anns = [ann(1, ["cat"], t(1)), ann(2, ["cat"], t(2)), ann(3, ["dog"], t(3))]  # cat 2, dog 1
    label_, counted, skipped = decide([task(9, *anns)], "majority")
    assert label_ == CAT and sorted(a["id"] for a in counted) == [1, 2, 3] and not skipped
    assert label([task(9, *anns)], "latest") == DOG  # the same annotations, the other rule


def test_majority_tie_goes_to_the_tied_class_annotated_last():
    # dog at 1s, bird at 2s, dog at 3s, bird at 4s, cat at 5s: dog 2, bird 2, cat 1; of the tied, bird is last (4s)
    anns = [
        ann(1, ["dog"], t(1)),
        ann(2, ["bird"], t(2)),
        ann(3, ["dog"], t(3)),
        ann(4, ["bird"], t(4)),
        ann(5, ["cat"], t(5)),
    ]
    assert label([task(9, *anns)], "majority") == BIRD
    # listed in another order, with ids against the times: the times decide (dog now last, at 6s)
    anns = [ann(9, ["dog"], t(6)), ann(2, ["bird"], t(2)), ann(8, ["dog"], t(1)), ann(1, ["bird"], t(4))]
    assert label([task(9, *anns)], "majority") == DOG


def test_several_tasks_of_one_example_are_pooled():
    first = task(9, ann(1, ["bird"], t(1)))
    second = task(12, ann(2, ["bird"], t(2)), ann(3, ["cat"], t(3)))
    assert label([first, second], "latest") == CAT  # 3s, in the second task
    assert label([first, second], "majority") == BIRD  # bird 2, cat 1


# -- skipped, empty and not yet annotated -----------------------------------------------------------------------


def test_a_cancelled_annotation_is_a_skip_not_a_vote():
    skip = ann(1, None, t(1), cancelled=True)  # "Skip" in the editor: was_cancelled with an empty result
    assert decide([task(9, skip)], "latest") == (None, [], True)
    chose_then_skipped = ann(2, ["dog"], t(2), cancelled=True)  # a cancelled annotation never counts
    assert decide([task(9, chose_then_skipped)], "majority") == (None, [], True)


def test_an_annotation_without_a_class_is_a_skip():
    assert decide([task(9, ann(1, None, t(1)))], "latest") == (None, [], True)
    other_control = ann(2, ["yes"], t(2), from_name="quality")  # a choice in another <Choices> is not a class
    assert decide([task(9, other_control)], "latest") == (None, [], True)


def test_a_vote_beside_a_skip_labels_the_task():
    skip, vote = ann(1, None, t(1), cancelled=True), ann(2, ["dog"], t(2))
    assert decide([task(9, skip, vote)], "latest") == (DOG, [vote], False)
    # majority: the skip is no vote, so dog (1) beats nothing; a later skip does not undo it either
    assert decide([task(9, vote, ann(3, None, t(3), cancelled=True))], "majority") == (DOG, [vote], False)


def test_not_annotated_yet():
    assert decide([task(9)], "latest") == (None, [], False)
    assert decide([], "majority") == (None, [], False)  # no task of this example (deleted, or not imported)
    bare = task(9)
    del bare["annotations"]  # a listing without annotations
    assert decide([bare], "latest") == (None, [], False)


# -- bad annotations --------------------------------------------------------------------------------------------


def test_an_unknown_class_names_the_task_example_annotation_and_link():
    tasks = [task(9, ann(1, ["dog"], t(1)), ann(4, ["eel"], t(2)))]
    with pytest.raises(
        LabelFileError,
        match=r"^Label Studio task 9 \(example id 100\), annotation 4 "
        r"\(http://ls:8080/projects/7/data\?task=9\): unknown class 'eel'",
    ):
        decide(tasks, "latest")
    # even when the rule would not pick it: an older unknown class is still an error
    with pytest.raises(LabelFileError, match="unknown class 'eel'"):
        decide([task(9, ann(4, ["eel"], t(1)), ann(5, ["dog"], t(2)))], "latest")


def test_several_classes_in_one_annotation_is_an_error():
    with pytest.raises(LabelFileError, match=r"task 9 .* annotation 5 .*: chose 2 classes \['dog', 'cat'\]; keep one"):
        decide([task(9, ann(5, ["dog", "cat"], t(1)))], "majority")


def test_chosen_reads_only_the_classes_choices():
    a = ann(1, ["dog"], t(1))
    a["result"].append({"from_name": "quality", "to_name": "image", "type": "choices", "value": {"choices": ["ok"]}})
    a["result"].append({"to_name": "image", "type": "choices", "value": {"choices": ["cat"]}})  # no from_name: ours
    assert rules.chosen(a, "label") == ["dog", "cat"]
    assert rules.chosen(a, "quality") == ["ok", "cat"]
    assert rules.chosen({"id": 1, "result": None}, "label") == []


# -- this run's tasks, deleted tasks ----------------------------------------------------------------------------


def test_by_example_keeps_this_runs_tasks_and_groups_them_by_example():
    mine = [task(1, ident=100), task(2, ident=101), task(3, ident=100)]  # example 100 imported twice
    others = [task(4, ident=100, run="other run"), {"id": 5, "data": {"image": "x"}, "annotations": []}]
    got = rules.by_example(others[:1] + mine + others[1:], "k1")
    assert {i: [x["id"] for x in ts] for i, ts in got.items()} == {100: [1, 3], 101: [2]}


def test_deleted_are_the_recorded_tasks_no_longer_listed():
    found = {100: [task(1)], 102: [task(3, ident=102)]}
    recorded = {"100": 1, "101": 2, "102": 3}  # 103 was never imported
    assert rules.deleted([100, 101, 102, 103], found, recorded) == [101]


def test_round_query_filters_on_the_run_and_the_round():
    q = json.loads(rules.round_query("k1", 3))
    assert q == {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:data.alpeft_run", "operator": "equal", "type": "String", "value": "k1"},
                {"filter": "filter:tasks:data.alpeft_round", "operator": "equal", "type": "Number", "value": 3},
            ],
        }
    }


def test_new_task_carries_our_ids_and_the_models_guess_as_a_prediction():
    names = {"image": "img", "choices": "cls", "key": "picture"}
    assert rules.new_task(names, "http://x/1.png", 104, 2, "k1") == {
        "data": {"picture": "http://x/1.png", "alpeft_id": 104, "alpeft_round": 2, "alpeft_run": "k1"}
    }
    with_guess = rules.new_task(names, "u", 104, 2, "k1", ("bird", np.float32(0.75), "run-round2"))
    assert with_guess["predictions"] == [
        {
            "model_version": "run-round2",
            "score": 0.75,
            "result": [{"from_name": "cls", "to_name": "img", "type": "choices", "value": {"choices": ["bird"]}}],
        }
    ]
    assert type(with_guess["predictions"][0]["score"]) is float  # JSON-able


# -- the labelling config ---------------------------------------------------------------------------------------


def test_label_config_is_read_back_and_every_class_must_be_a_choice():
    assert rules.read_label_config(rules.label_config(NAMES), NAMES, "p") == {
        "image": "image",
        "choices": "label",
        "key": "image",
        "classes": NAMES,
    }
    own = (
        '<View><Text name="t" value="$caption"/><Choices name="topic" toName="t"><Choice value="cat"/></Choices>'
        '<Image name="img" value="$picture"/><Choices name="cls" toName="img"><Choice value="bird"/>'
        '<Choice value="dog"/><Choice value="cat"/><Choice value="other"/></Choices></View>'
    )
    # the Choices over a Text are passed over; the ones over the Image are the classes, extra choices allowed
    assert rules.read_label_config(own, NAMES, "p") == {
        "image": "img",
        "choices": "cls",
        "key": "picture",
        "classes": ["bird", "dog", "cat", "other"],
    }
    with pytest.raises(LabelFileError, match=r"^p: its choices lack the classes \['bird'\]"):
        rules.read_label_config(rules.label_config(["cat", "dog"]), NAMES, "p")
    with pytest.raises(LabelFileError, match="^p: cannot parse"):
        rules.read_label_config("<View><Image", NAMES, "p")
    fixed = '<View><Image name="i" value="http://x/a.png"/><Choices name="c" toName="i"/></View>'  # not a task field
    with pytest.raises(LabelFileError, match=r"needs an <Image value=\"\$...\"/>"):
        rules.read_label_config(fixed, NAMES, "p")


# -- the round's facts ------------------------------------------------------------------------------------------


def test_facts_of_a_round():
    counted = [
        ann(1, ["cat"], t(1), user=1, lead=1.5),
        ann(2, ["dog"], t(2), user=2, lead=4.0),
        ann(3, ["bird"], t(3), user=1, lead=None),
    ]
    predicted = {"100": [0, 0.9], "101": [2, 0.6]}  # 102 was asked without a prediction (round 0 style)
    names = {1: "a@x", 2: "b@x"}
    got = rules.facts([100, 101, 102], np.array([0, 1, 2]), counted, predicted, lambda u: names[u])
    assert got == {
        "annotators": ["a@x", "b@x"],
        "annotations": 3,
        "lead_time_total_s": 5.5,
        "lead_time_mean_s": 2.75,  # over the two annotations that report a lead time
        "predictions_sent": 2,
        "predictions_accepted": 1,
    }  # 100: cat predicted, cat; 101: bird vs dog
    none = rules.facts([100], [0], [ann(1, ["cat"], t(1), lead=None)], {}, str)
    assert none["lead_time_total_s"] == 0 and none["lead_time_mean_s"] is None and none["predictions_sent"] == 0


# -- local storages ---------------------------------------------------------------------------------------------


def test_storages_to_add():
    root = "/srv/files"
    rels = ["alpeft_jax/k1/100.png", "alpeft_jax/k1/101.png", "my data/bird/2.png", "my data/cat/0.png"]
    # one storage per top-level folder, over the common folder of its images
    assert rules.storages_to_add(rels, root, []) == ["/srv/files/alpeft_jax/k1", "/srv/files/my data"]
    # a storage over the folder or a parent of it covers it; "" paths (storages of other kinds) cover nothing
    assert rules.storages_to_add(rels, root, ["/srv/files/alpeft_jax", "", "/srv/files/my data/"]) == []
    # a storage over one subfolder does not cover its sibling: the common folder is registered
    assert rules.storages_to_add(rels, root, ["/srv/files/my data/bird"]) == [
        "/srv/files/alpeft_jax/k1",
        "/srv/files/my data",
    ]
    assert rules.storages_to_add(rels[:1], root, ["/srv/files/alpeft_jax/k"]) == ["/srv/files/alpeft_jax/k1"]


# -- settings ---------------------------------------------------------------------------------------------------


def test_settings_read_every_config_value_and_take_the_configs_defaults():
    section = base().label_studio.to_dict()
    assert {f.name for f in dataclasses.fields(settings.Settings)} == set(section)  # every value read, no other
    s = settings.resolve({"url": "http://h:1/"})
    for name, value in section.items():
        if name != "url":
            assert getattr(s, name) == value, name
    assert s.url == "http://h:1"  # without the trailing slash


def test_settings_normalise_and_none_means_the_default():
    s = settings.resolve(
        {
            "url": "https://h",
            "project": 0,
            "poll_seconds": 0.001,
            "thumbnail": None,
            "images": "local",
            "local_root": "~/ls-files",
            "multiple": None,
        }
    )
    assert s.project == "" and s.poll_seconds == 0.05 and s.multiple == base().label_studio.multiple
    assert s.thumbnail == base().label_studio.thumbnail
    assert s.local_root == os.path.join(os.path.expanduser("~"), "ls-files")
    assert settings.resolve({"url": "http://h", "project": " 12 "}).project == "12"
    with pytest.raises(ValueError, match="image_url_prefix"):
        settings.resolve({"url": "http://h", "images": "url"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.url = "x"


# -- image fields -----------------------------------------------------------------------------------------------


def _png(uri):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_inline_images_are_lossless_pngs_shrunk_to_the_thumbnail():
    img = np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8)
    uri = images.inline_png(img, 64)
    assert uri.startswith("data:image/png;base64,") and np.array_equal(_png(uri), img)
    assert _png(images.inline_png(img, 10)).shape == (10, 5, 3)  # longest side 10, aspect kept


def test_url_and_local_image_fields(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(os.path.join(root, "data", "cat"))
    file = os.path.join(root, "data", "cat", "a b.png")
    img = np.full((4, 4, 3), 9, np.uint8)
    Image.fromarray(img).save(file)
    s = settings.resolve({"url": "http://h", "images": "url", "image_url_prefix": "http://files/"})
    assert images.task_image({"image": img, "path": "/data/x.png"}, 1, s, "k") == "http://files/data/x.png"
    assert np.array_equal(_png(images.task_image({"image": img, "path": None}, 1, s, "k")), img)  # no file: inline
    s = settings.resolve({"url": "http://h", "images": "local", "local_root": root})
    field = images.task_image({"image": img, "path": file}, 1, s, "k")
    assert field == "/data/local-files/?d=data/cat/a%20b.png" and images.local_path(field) == "data/cat/a b.png"
    field = images.task_image({"image": img, "path": None}, 7, s, "k")  # written under alpeft_jax/<run key>/
    assert images.local_path(field) == "alpeft_jax/k/7.png"
    assert np.array_equal(np.asarray(Image.open(os.path.join(root, "alpeft_jax", "k", "7.png"))), img)
    Image.fromarray(img).save(os.path.join(root, "top.png"))
    for outside in (str(tmp_path / "elsewhere.png"), os.path.join(root, "top.png")):  # not in a folder under root
        with pytest.raises(LabelFileError, match="not in a folder under label_studio.local_root"):
            images.local_file({"image": img, "path": outside}, 1, root, "k")


def test_round_labels_exclude_or_ask_for_skipped_examples():
    skipped = [False, True, False]
    assert rules.round_labels([2, -1, 0], skipped, "exclude") == [2, -1, 0]  # skipped: can't tell
    assert rules.round_labels([2, -1, 0], skipped, "ask") is None  # skipped: waits for a class
    assert rules.round_labels([2, -1, -1], skipped, "exclude") is None  # not annotated yet: waits either way
    assert rules.round_labels([2, 1, 0], skipped, "ask") == [2, 1, 0]  # a vote beside a skip labels it
    assert rules.round_labels([], [], "ask") == []
    assert settings.resolve({"url": "http://h:1"}).skipped == "exclude"  # the default
    with pytest.raises(ValueError, match="skipped must be exclude or ask"):
        settings.resolve({"url": "http://h:1", "skipped": "drop"})
