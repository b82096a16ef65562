"""The Label Studio oracle against a real Label Studio server (1.23.x, its own venv; see _label_studio_server.py).

One server serves the whole session (SQLite in a temporary folder, stopped by its pid at the end). The tests play
the annotator through the server's REST API, independently of the SDK the oracle uses. `make test` runs the
driver's stop-and-resume run against the simulated one; the oracle's own cases and the bad paths are `slow`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("label_studio_sdk", reason="the Label Studio oracle needs the 'label' extra")

import _label_studio_server as ls_server  # noqa: E402

from alpeft_jax import loop, oracles  # noqa: E402
from alpeft_jax.data import ArraySource, FileListSource  # noqa: E402
from alpeft_jax.oracles import label_studio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("label_studio")
    t0 = time.time()
    srv = ls_server.start(base)
    print(f"Label Studio {ls_server.VERSION} up at {srv.url} (pid {srv.pid}) in {time.time() - t0:.1f}s")
    yield srv
    srv.stop()
    assert srv.process.poll() is not None


# -- the annotator, through the REST API -----------------------------------------------------------------------


def api(server, method, path, body=None, token=None):
    raw = server.request(method, path, None if body is None else json.dumps(body).encode(), token=token)
    return json.loads(raw) if raw else None


def project_tasks(server, pid):
    out = api(server, "GET", f"/api/tasks/?project={pid}&fields=all&page_size=1000")
    return sorted(out["tasks"] if isinstance(out, dict) else out, key=lambda t: t["id"])


def annotate(server, task_id, choice=None, lead_time=2.0, cancelled=False, choices=None):
    result = (
        []
        if cancelled
        else [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": choices or [choice]}}]
    )
    return api(
        server,
        "POST",
        f"/api/tasks/{task_id}/annotations/",
        {"result": result, "lead_time": lead_time, "was_cancelled": cancelled},
    )


def answer_all(server, pid, truth):
    """Annotate every task of project `pid` that has no annotation with truth(example id); returns how many."""
    n = 0
    for t in project_tasks(server, pid):
        if not t["annotations"]:
            annotate(server, t["id"], truth(int(t["data"]["alpeft_id"])))
            n += 1
    return n


# -- pools and oracles ------------------------------------------------------------------------------------------


LABELS = np.array([0, 1, 2, 1, 0, 2])


def _pool(labels=LABELS, names=NAMES):
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 12, 10, 3), dtype=np.uint8)
    src = ArraySource(images, np.asarray(labels), names, ids=np.arange(100, 100 + len(labels)))
    return oracles.PoolView(src, np.arange(len(labels)), names)


def _oracle(server, workdir, pool=None, token=None, **settings):
    settings.setdefault("url", server.url)
    settings.setdefault("poll_seconds", 0.2)
    return oracles.LabelStudioOracle(pool or _pool(), workdir, run_name="t", token=token or server.token, **settings)


def _truth(ident):
    return NAMES[int(LABELS[ident - 100])]


def _record(workdir, r):
    with open(os.path.join(workdir, f"round_{r}", "label_studio.json")) as f:
        return json.load(f)


# -- the oracle alone -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_round_trip_with_predictions_then_never_asked_again(server, tmp_path):
    wd = str(tmp_path / "run")
    o = _oracle(server, wd)
    rows = np.array([5, 3, 0, 1])
    probs = np.full((4, 3), 0.1, np.float32)
    probs[np.arange(4), [2, 0, 0, 1]] = 0.8  # the model's guesses: bird, cat, cat, dog (truth: bird, dog, cat, dog)
    with pytest.raises(oracles.PendingLabels, match=r"0 of 4 Label Studio tasks"):
        o.request(1, rows, probs)
    pid = o.project()["id"]
    project = api(server, "GET", f"/api/projects/{pid}/")
    assert project["title"] == f"t ({o.run_key})"
    assert [c.get("value") for c in ET.fromstring(project["label_config"]).iter("Choice")] == NAMES
    tasks = project_tasks(server, pid)
    assert [t["data"]["alpeft_id"] for t in tasks] == [105, 103, 100, 101]
    assert all(t["data"]["alpeft_round"] == 1 and t["data"]["alpeft_run"] == o.run_key for t in tasks)
    png = Image.open(io.BytesIO(__import__("base64").b64decode(tasks[0]["data"]["image"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(png), _pool().example(5)["image"])  # small images go unshrunk, lossless
    for t, guess in zip(tasks, ["bird", "cat", "cat", "dog"]):
        (p,) = t["predictions"]
        assert p["model_version"] == "t-round1" and p["score"] == pytest.approx(0.8)
        assert p["result"][0]["value"]["choices"] == [guess]
    assert project["model_version"] == "t-round1"  # the annotator starts from this round's predictions
    annotate(server, tasks[0]["id"], "bird", lead_time=1.5)
    annotate(server, tasks[1]["id"], "dog", lead_time=4.0)
    with pytest.raises(oracles.PendingLabels, match=r"2 of 4"):
        o.request(1, rows, probs)
    assert len(project_tasks(server, pid)) == 4  # asking again imports nothing
    annotate(server, tasks[2]["id"], "Cat", lead_time=2.5)  # class names are matched case-insensitively
    annotate(server, tasks[3]["id"], "dog", lead_time=2.0)
    assert o.request(1, rows, probs).tolist() == [2, 1, 0, 1]
    info = o.info(1)
    assert info["annotators"] == [ls_server.USERNAME] and info["tasks"] == 4 and info["project"] == pid
    assert info["lead_time_total_s"] == pytest.approx(10.0) and info["lead_time_mean_s"] == pytest.approx(2.5)
    assert info["predictions_sent"] == 4 and info["predictions_accepted"] == 3  # all but the "cat" for a dog
    json.dumps(info)
    # Read labels are kept: a new process asks nobody, even with the server unreachable.
    gone = _oracle(server, wd, url=f"http://127.0.0.1:{ls_server.free_port()}")
    assert gone.request(1, rows, probs).tolist() == [2, 1, 0, 1] and gone.info(1) == info
    assert o.info(7) == {}


@pytest.mark.slow
def test_personal_access_token_is_exchanged_for_a_bearer_token(server, tmp_path):
    pat = server.personal_access_token()
    with pytest.raises(urllib.error.HTTPError, match="401"):
        server.request("GET", "/api/projects/", token=f"Token {pat}")  # not usable as a legacy token
    o = _oracle(server, str(tmp_path), token=pat)
    with pytest.raises(oracles.PendingLabels, match=r"0 of 2"):
        o.request(0, np.array([1, 2]))
    tasks = project_tasks(server, o.project()["id"])
    assert [t["data"]["alpeft_id"] for t in tasks] == [101, 102] and not tasks[0]["predictions"]  # round 0: no model
    for t in tasks:
        annotate(server, t["id"], _truth(t["data"]["alpeft_id"]))
    assert o.request(0, np.array([1, 2])).tolist() == [1, 2]
    assert o.info(0)["predictions_sent"] == 0


@pytest.mark.slow
def test_crash_before_the_record_skipped_and_deleted_tasks(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(label_studio.api, "IMPORT_BATCH", 2)  # three bulk imports, each recorded
    monkeypatch.setattr(label_studio.api, "PAGE_SIZE", 2)  # the listing pages through the project
    wd = str(tmp_path)
    rows = np.arange(6)
    o = _oracle(server, wd, skipped="ask")  # a skipped task must be labelled after all
    with pytest.raises(oracles.PendingLabels, match=r"0 of 6"):
        o.request(2, rows)
    pid = o.project()["id"]
    first = project_tasks(server, pid)
    assert len(first) == 6 and len(_record(wd, 2)["tasks"]) == 6
    # A crash between the import and the record: the tasks are found again by example id, none is imported twice.
    os.remove(os.path.join(wd, "round_2", "label_studio.json"))
    with pytest.raises(oracles.PendingLabels, match=r"0 of 6"):
        _oracle(server, wd).request(2, rows)
    assert [t["id"] for t in project_tasks(server, pid)] == [t["id"] for t in first]
    # Skipped (cancelled) and deleted tasks.
    annotate(server, first[0]["id"], cancelled=True)
    api(server, "DELETE", f"/api/tasks/{first[1]['id']}/")
    for t in first[2:]:
        annotate(server, t["id"], _truth(t["data"]["alpeft_id"]))
    with pytest.raises(oracles.PendingLabels, match=r"4 of 6 .* 1 skipped \(example ids \[100\]\)"):
        o.request(2, rows)
    assert "deleted in Label Studio" in caplog.text
    now = project_tasks(server, pid)
    assert len(now) == 6 and sorted(t["data"]["alpeft_id"] for t in now) == list(range(100, 106))
    again = next(t for t in now if t["data"]["alpeft_id"] == 101)
    assert again["id"] not in [t["id"] for t in first]
    # Only skipped tasks left: even a waiting oracle stops at once, naming them.
    t0 = time.time()
    annotate(server, again["id"], "dog")
    with pytest.raises(oracles.PendingLabels, match=r"skipped .*skipped=ask"):
        _oracle(server, wd, wait_seconds=60, skipped="ask").request(2, rows)
    assert time.time() - t0 < 30
    annotate(server, first[0]["id"], "cat")  # the skipped task labelled after all
    assert o.request(2, rows).tolist() == LABELS.tolist()


@pytest.mark.slow
def test_a_skipped_task_is_excluded_by_default(server, tmp_path):
    wd = str(tmp_path)
    rows = np.array([0, 1, 2])
    o = _oracle(server, wd, wait_seconds=60)  # skipped=exclude, the default
    with pytest.raises(oracles.PendingLabels):
        _oracle(server, wd).request(0, rows)
    tasks = project_tasks(server, o.project()["id"])
    annotate(server, tasks[0]["id"], cancelled=True)  # "Skip" in the editor: can't tell
    annotate(server, tasks[1]["id"], "dog")
    with pytest.raises(oracles.PendingLabels, match=r"1 of 3 .*1 skipped \(example ids \[100\]\) are excluded"):
        _oracle(server, wd).request(0, rows)  # one task still to annotate
    annotate(server, tasks[2]["id"], "bird")
    t0 = time.time()
    assert o.request(0, rows).tolist() == [-1, 1, 2]  # the waiting oracle returns at once: every task decided
    assert time.time() - t0 < 30
    assert o.info(0)["excluded"] == 1 and o.info(0)["tasks"] == 3
    annotate(server, tasks[0]["id"], "cat")  # labelled later: the round was read, nothing is asked again
    assert _oracle(server, wd).request(0, rows).tolist() == [-1, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("rule, expected", [("latest", [1, 2]), ("majority", [0, 2])])
def test_several_annotations_rule_and_bad_annotations(server, tmp_path, rule, expected):
    o = _oracle(server, str(tmp_path), multiple=rule)
    rows = np.array([0, 2])
    with pytest.raises(oracles.PendingLabels):
        o.request(0, rows)
    t0, t2 = project_tasks(server, o.project()["id"])
    for choice in ("cat", "cat", "dog"):  # latest: dog; majority: cat
        annotate(server, t0["id"], choice)
    for choice in ("dog", "bird"):  # a tie: the class annotated last
        annotate(server, t2["id"], choice)
    bad = annotate(server, t2["id"], "fish")
    with pytest.raises(oracles.LabelFileError, match=rf"task {t2['id']} .*unknown class 'fish'"):
        o.request(0, rows)
    assert "labels" not in _record(str(tmp_path), 0)  # nothing recorded
    api(server, "DELETE", f"/api/annotations/{bad['id']}/")
    two = annotate(server, t2["id"], choices=["cat", "dog"])
    with pytest.raises(oracles.LabelFileError, match="chose 2 classes"):
        o.request(0, rows)
    api(server, "DELETE", f"/api/annotations/{two['id']}/")
    assert o.request(0, rows).tolist() == expected
    assert o.info(0)["annotations"] == {"latest": 2, "majority": 5}[rule]  # the annotations that decided


@pytest.mark.slow
def test_server_down_wrong_token_and_projects(server, tmp_path, monkeypatch):
    rows = np.array([0, 1])
    down = f"http://127.0.0.1:{ls_server.free_port()}"
    with pytest.raises(oracles.LabelFileError, match=f"cannot reach Label Studio at {down}.*label_studio.url"):
        _oracle(server, str(tmp_path / "a"), url=down).request(0, rows)
    with pytest.raises(oracles.LabelFileError, match=rf"{server.url} refused the token in \$LABEL_STUDIO_API_KEY"):
        _oracle(server, str(tmp_path / "b"), token="0" * 40).request(0, rows)
    monkeypatch.delenv("MY_LS_TOKEN", raising=False)
    unset = oracles.LabelStudioOracle(_pool(), str(tmp_path / "c"), url=server.url, token_env="MY_LS_TOKEN")
    with pytest.raises(oracles.LabelFileError, match=r"set \$MY_LS_TOKEN"):
        unset.request(0, rows)
    monkeypatch.setenv("MY_LS_TOKEN", server.token)  # the token comes from the environment variable named
    with pytest.raises(oracles.PendingLabels):
        oracles.LabelStudioOracle(_pool(), str(tmp_path / "c"), url=server.url, token_env="MY_LS_TOKEN").request(
            0, rows
        )
    with pytest.raises(oracles.LabelFileError, match="has no project 99999"):
        _oracle(server, str(tmp_path / "d"), project="99999").request(0, rows)
    for d in "abd":  # the failures recorded nothing about the round
        assert not os.path.exists(tmp_path / d / "round_0")
    # An existing project: by title, and its labelling config must offer every class.
    cfg = label_studio.label_config(["cat", "dog"])
    p = api(server, "POST", "/api/projects/", {"title": "two classes", "label_config": cfg})
    with pytest.raises(oracles.LabelFileError, match=r"lack the classes \['bird'\]"):
        _oracle(server, str(tmp_path / "e"), project=str(p["id"])).request(0, rows)
    mine = api(
        server,
        "POST",
        "/api/projects/",
        {
            "title": "my own labels",
            "label_config": '<View><Image name="img" value="$picture"/>'
            '<Choices name="cls" toName="img"><Choice value="bird"/><Choice value="dog"/><Choice value="cat"/>'
            '<Choice value="other"/></Choices></View>',
        },
    )
    o = _oracle(server, str(tmp_path / "f"), project="my own labels")
    with pytest.raises(oracles.PendingLabels):
        o.request(0, rows, np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]], np.float32))
    (t,) = project_tasks(server, mine["id"])[:1]
    assert "picture" in t["data"] and t["predictions"][0]["result"][0]["from_name"] == "cls"
    for t in project_tasks(server, mine["id"]):
        api(
            server,
            "POST",
            f"/api/tasks/{t['id']}/annotations/",
            {
                "result": [
                    {
                        "from_name": "cls",
                        "to_name": "img",
                        "type": "choices",
                        "value": {"choices": [_truth(t["data"]["alpeft_id"])]},
                    }
                ]
            },
        )
    assert o.request(0, rows).tolist() == [0, 1]
    # Another run in the same project: its own tasks, whatever the other run's tasks of the same examples say.
    other = _oracle(server, str(tmp_path / "g"), project="my own labels")
    with pytest.raises(oracles.PendingLabels, match="0 of 2"):
        other.request(0, rows)
    assert len(project_tasks(server, mine["id"])) == 4 and other.run_key != o.run_key


def _file_pool(folder, names=NAMES):
    paths = []
    for k, label in enumerate(LABELS[:3]):
        path = os.path.join(folder, names[label], f"{k}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((6, 7, 3), 40 * k, np.uint8)).save(path)
        paths.append(path)
    src = FileListSource(paths, LABELS[:3], names)
    return oracles.PoolView(src, np.arange(3), names)


@pytest.mark.slow
def test_local_storage_images(server, tmp_path):
    root = str(server.files_root)
    o = _oracle(server, str(tmp_path), images="local", local_root=root)
    with pytest.raises(oracles.PendingLabels):
        o.request(0, np.array([4, 2]))
    pid = o.project()["id"]
    tasks = project_tasks(server, pid)
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d=alpeft_jax/{o.run_key}/104.png"
    served = server.request("GET", tasks[0]["data"]["image"])  # Label Studio serves it from its local storage
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))), _pool().example(4)["image"])
    storages = api(server, "GET", f"/api/storages/localfiles?project={pid}")
    assert len(storages) == 1
    with pytest.raises(oracles.PendingLabels):
        o.request(1, np.array([1]))
    assert len(api(server, "GET", f"/api/storages/localfiles?project={pid}")) == 1  # registered once
    # Image files of a folder dataset are served where they are, through a storage over their common folder.
    pool = _file_pool(os.path.join(root, "my data"))
    f = _oracle(server, str(tmp_path / "files"), pool=pool, images="local", local_root=root)
    with pytest.raises(oracles.PendingLabels):
        f.request(0, np.array([0, 2]))
    fid = f.project()["id"]
    assert [s["path"] for s in api(server, "GET", f"/api/storages/localfiles?project={fid}")] == [
        os.path.join(root, "my data")
    ]
    t0, t2 = project_tasks(server, fid)
    assert t2["data"]["image"] == "/data/local-files/?d=my%20data/bird/2.png"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(server.request("GET", t2["data"]["image"])))), np.full((6, 7, 3), 80, np.uint8)
    )
    outside = _oracle(
        server, str(tmp_path / "out"), pool=_file_pool(str(tmp_path / "elsewhere")), images="local", local_root=root
    )
    with pytest.raises(oracles.LabelFileError, match="not in a folder under label_studio.local_root"):
        outside.request(0, np.array([0]))
    wrong_root = _oracle(server, str(tmp_path / "x"), images="local", local_root=str(tmp_path / "not_the_root"))
    with pytest.raises(oracles.LabelFileError, match="must be a subdirectory of LOCAL_FILES_DOCUMENT_ROOT"):
        wrong_root.request(0, np.array([0]))


@pytest.mark.slow
def test_wait_mode_polls_until_the_annotator_is_done(server, tmp_path):
    wd = str(tmp_path)
    o = _oracle(server, wd, wait_seconds=120)
    stop = threading.Event()
    answered = []

    def annotator():  # answers once the run has made its project and imported the tasks
        while not stop.is_set() and sum(answered) < 3:
            if os.path.exists(os.path.join(wd, "round_0", "label_studio.json")):
                answered.append(answer_all(server, _ls_project(server, wd), _truth))
            time.sleep(0.3)

    th = threading.Thread(target=annotator, daemon=True)
    th.start()
    try:
        assert o.request(0, np.array([0, 1, 2])).tolist() == [0, 1, 2]
    finally:
        stop.set()
        th.join(10)
    assert sum(answered) == 3
    t0 = time.time()
    with pytest.raises(oracles.PendingLabels, match="0 of 1"):
        _oracle(server, wd, wait_seconds=1.0).request(1, np.array([3]))
    assert 0.9 < time.time() - t0 < 20


# -- the driver -------------------------------------------------------------------------------------------------


def _tiny(cache):
    sys.path.insert(0, os.path.dirname(TINY))
    try:
        import tiny
    finally:
        sys.path.pop(0)
    c = tiny.get_config("rounds=2,epochs=1")
    c.scoring.cache_dir = cache
    return c


def _digits_truth():
    from sklearn.datasets import load_digits

    target = load_digits().target
    return lambda ident: str(int(target[ident]))


def _comparable(rows):
    keys = ("round", "n_labeled", "accuracy", "nll", "ece", "brier", "selected_ids")
    return [{k: r[k] for k in keys} for r in rows]


def _state(wd):
    with open(os.path.join(wd, "al_state.json")) as f:
        st = json.load(f)
    return st["labeled_rows"], st["labels"]


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("ls_cache"))
    wd = str(tmp_path_factory.mktemp("simulated"))
    results = loop.run(_tiny(cache), wd)
    return cache, results, _state(wd)


def _ls_project(server, wd):
    with open(os.path.join(wd, "label_studio.json")) as f:
        return json.load(f)["project"]


def test_driver_stop_and_resume_equals_simulated(server, simulated_run, tmp_path, monkeypatch):
    cache, expected, expected_state = simulated_run
    c = _tiny(cache)
    c.oracle = "label_studio"
    c.label_studio.url = server.url
    wd = str(tmp_path / "ls")
    truth = _digits_truth()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)  # a wrong token: one clear error, the AL state kept
    with pytest.raises(oracles.LabelFileError, match=f"Label Studio at {server.url} refused the token"):
        loop.run(c, wd)
    with open(os.path.join(wd, "al_state.json")) as f:
        assert json.load(f)["phase"] == "label"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    assert loop.run(c, wd) == []  # round 0's tasks are out: the run stops cleanly
    pid = _ls_project(server, wd)
    assert answer_all(server, pid, truth) == 10
    assert len(loop.run(c, wd)) == 1  # round 0 trained; round 1's tasks are out
    assert answer_all(server, pid, truth) == 5
    results = loop.run(c, wd)
    assert _comparable(results) == _comparable(expected)
    assert _state(wd) == expected_state  # the same labelled set, in the same order
    assert len(project_tasks(server, pid)) == 15  # nothing imported twice
    r0, r1 = (r["labeling"] for r in results)  # the oracle's facts reach results.jsonl
    assert r0 == _record(wd, 0)["info"] and r1 == _record(wd, 1)["info"] and r1["project"] == pid
    assert r0["predictions_sent"] == 0 and r1["predictions_sent"] == 5  # round 1 carries the model's guesses
    assert r1["annotators"] == [ls_server.USERNAME] and r1["tasks"] == 5
    assert {t["predictions"][0]["model_version"] for t in project_tasks(server, pid) if t["predictions"]} == {
        f"{c.name}-round1"
    }


@pytest.mark.slow
def test_driver_waits_while_an_annotator_works(server, simulated_run, tmp_path, monkeypatch):
    cache, expected, expected_state = simulated_run
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    c = _tiny(cache)
    c.oracle = "label_studio"
    c.label_studio.url = server.url
    c.label_studio.wait_seconds = 600.0
    c.label_studio.poll_seconds = 0.5
    wd = str(tmp_path / "ls")
    stop = threading.Event()
    truth = _digits_truth()
    answered = []

    def annotator():
        while not stop.is_set():
            if os.path.exists(os.path.join(wd, "label_studio.json")):
                try:
                    answered.append(answer_all(server, _ls_project(server, wd), truth))
                except (KeyError, ValueError, urllib.error.URLError):
                    pass
            time.sleep(0.5)

    th = threading.Thread(target=annotator, daemon=True)
    th.start()
    try:
        results = loop.run(c, wd)  # one call: the run waits for each round's annotations
    finally:
        stop.set()
        th.join(10)
    assert sum(answered) == 15
    assert _comparable(results) == _comparable(expected)
    assert _state(wd) == expected_state


@pytest.mark.slow
def test_cli_killed_while_waiting_resumes_without_duplicates(server, simulated_run, tmp_path):
    cache, expected, expected_state = simulated_run
    wd = str(tmp_path / "ls")
    env = {**os.environ, "LABEL_STUDIO_API_KEY": server.token}
    cmd = [
        sys.executable,
        "-m",
        "alpeft_jax.main",
        f"--config={TINY}:rounds=2,epochs=1",
        f"--workdir={wd}",
        f"--config.scoring.cache_dir={cache}",
        "--config.oracle=label_studio",
        f"--config.label_studio.url={server.url}",
        "--config.label_studio.wait_seconds=600",
        "--config.label_studio.poll_seconds=0.5",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    pid = None
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(wd, "round_0", "label_studio.json")):
            pid = _ls_project(server, wd)
            if len(project_tasks(server, pid)) == 10:
                break
        time.sleep(0.5)
    assert pid is not None and proc.poll() is None, proc.communicate()[0] if proc.poll() is not None else ""
    time.sleep(1.0)  # it is polling now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    truth = _digits_truth()
    assert answer_all(server, pid, truth) == 10
    stop = threading.Event()

    def annotator():
        while not stop.is_set():
            answer_all(server, pid, truth)
            time.sleep(0.5)

    th = threading.Thread(target=annotator, daemon=True)
    th.start()
    try:
        resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        th.join(10)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(project_tasks(server, pid)) == 15  # the killed run's tasks were found again, not re-imported
    with open(os.path.join(wd, "results.jsonl")) as f:
        assert _comparable([json.loads(line) for line in f]) == _comparable(expected)
    assert _state(wd) == expected_state


@pytest.mark.slow
def test_preflight_checks_the_token_against_the_server(server, monkeypatch):
    from alpeft_jax import preflight

    c = _tiny("")
    c.oracle, c.label_studio.url, c.label_studio.token_env = "label_studio", server.url, "ALPEFT_TEST_LS_TOKEN"
    monkeypatch.setenv("ALPEFT_TEST_LS_TOKEN", "0" * 40)
    (line,) = preflight._label_studio(c)
    assert line.startswith(f"Label Studio at {server.url} refused the token in $ALPEFT_TEST_LS_TOKEN")
    monkeypatch.setenv("ALPEFT_TEST_LS_TOKEN", server.token)
    assert preflight._label_studio(c) == []
