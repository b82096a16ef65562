"""label_studio.mode=pool against a real Label Studio server (see _label_studio_server.py): the pool imported once
in pages, every task's predictions and fields each round, the round's saved view, and unasked annotations taken
as labels exactly once. The annotator and the checks talk to the server's REST API, apart from the SDK the oracle
uses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("label_studio_sdk", reason="the Label Studio oracle needs the 'label' extra")

import _label_studio_server as ls_server  # noqa: E402

from alpeft_jax import oracles  # noqa: E402
from alpeft_jax.data import ArraySource  # noqa: E402
from alpeft_jax.oracles import label_studio  # noqa: E402
from alpeft_jax.oracles.label_studio import pool as pool_mode  # noqa: E402

NAMES = ["cat", "dog", "bird"]
N = 11
LABELS = np.arange(N) % 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ls_server.start(tmp_path_factory.mktemp("label_studio_pool"))
    yield srv
    srv.stop()


def api(server, method, path, body=None):
    raw = server.request(method, path, None if body is None else json.dumps(body).encode())
    return json.loads(raw) if raw else None


def tasks_of(server, pid):
    out = api(server, "GET", f"/api/tasks/?project={pid}&fields=all&page_size=1000")
    return sorted(out["tasks"] if isinstance(out, dict) else out, key=lambda t: t["id"])


def annotate(server, task_id, choice):
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
    return api(server, "POST", f"/api/tasks/{task_id}/annotations/", {"result": result, "lead_time": 1.0})


def _pool():
    images = np.random.default_rng(0).integers(0, 255, (N, 8, 8, 3), dtype=np.uint8)
    src = ArraySource(images, LABELS, NAMES, ids=np.arange(200, 200 + N))
    return oracles.PoolView(src, np.arange(N), NAMES)


def _oracle(server, wd, **kw):
    return oracles.LabelStudioOracle(
        _pool(), wd, run_name="p", token=server.token, url=server.url, mode="pool", poll_seconds=0.2, **kw
    )


def _by_id(tasks):
    return {t["data"]["alpeft_id"]: t for t in tasks}


def test_pool_mode_is_a_setting():
    assert label_studio.DEFAULTS["mode"] == "queries"
    with pytest.raises(ValueError, match="label_studio.mode must be queries or pool"):
        label_studio.settings.resolve({"url": "http://x", "mode": "all"})


def test_prediction_scores_and_guesses():
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labeled = np.array([False, True, False, False])
    scores = np.array([2.3, 0.4, -np.inf, -0.5])  # an entropy and a negated distance: any real number
    # the place in the strategy's order among the unlabelled rows with a score (Label Studio keeps [0, 1])
    assert pool_mode.prediction_scores(probs, scores, labeled) == [1.0, None, None, 0.5]
    many = np.random.default_rng(0).normal(0, 5, 1000)
    value = np.array(pool_mode.prediction_scores(np.full((1000, 3), 1 / 3), many, np.zeros(1000, bool)))
    assert value.min() > 0 and value.max() == 1 and (np.argsort(-value) == np.argsort(-many)).all()
    # a strategy without scores: the probability of the guess
    assert pool_mode.prediction_scores(probs, None, labeled) == [0.7, None, 0.8, 0.4]
    project = {"choices": "label", "image": "image"}
    preds = pool_mode.predictions(project, NAMES, "v", np.array([11, 12, 13, 14]), probs, [0.9, None, None, 0.2])
    assert [p["task"] for p in preds] == [11, 12, 13, 14] and {p["model_version"] for p in preds} == {"v"}
    assert [p["result"][0]["value"]["choices"] for p in preds] == [["dog"], ["cat"], ["bird"], ["bird"]]
    assert [p["result"][0]["score"] for p in preds] == [0.7, 0.5, 0.8, 0.4]
    assert [p["score"] for p in preds] == [0.9, None, None, 0.2]


@pytest.mark.slow
def test_pool_import_twice_and_a_crash_between_pages(server, tmp_path, monkeypatch):
    monkeypatch.setattr(label_studio.api, "POOL_PAGE", 4)  # three pages
    wd = str(tmp_path)
    o = _oracle(server, wd)
    calls = []
    real = label_studio.api.PoolServer.import_page

    def crash_after_second_page(self, pid, tasks):
        out = real(self, pid, tasks)  # the server imports the page ...
        calls.append(len(tasks))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed before the page was recorded")  # ... and the run dies
        return out

    monkeypatch.setattr(label_studio.api.PoolServer, "import_page", crash_after_second_page)
    with pytest.raises(KeyboardInterrupt):
        o.pool_mode.import_pool()
    pid = o.project()["id"]
    assert len(tasks_of(server, pid)) == 8
    with open(os.path.join(wd, pool_mode.POOL_FILE)) as f:
        assert sorted(json.load(f)["pages"]) == ["0"]  # page 1 was imported but not recorded
    again = _oracle(server, wd)
    again.pool_mode.import_pool()
    assert calls == [4, 4, 3]  # page 1 found again by its field, only page 2 imported
    first = tasks_of(server, pid)
    assert sorted(t["data"]["alpeft_id"] for t in first) == list(range(200, 200 + N))  # each example once
    _oracle(server, wd).pool_mode.import_pool()  # a second import: nothing new
    assert [t["id"] for t in tasks_of(server, pid)] == [t["id"] for t in first] and calls == [4, 4, 3]


@pytest.mark.slow
def test_rounds_fields_views_and_unasked_labels(server, tmp_path, monkeypatch):
    monkeypatch.setattr(label_studio.api, "POOL_PAGE", 5)
    wd = str(tmp_path)
    o = _oracle(server, wd)
    none = np.zeros(N, bool)
    picks0 = np.array([3, 0, 7])
    o.publish(0, picks0, None, None, none)  # round 0: no model yet
    pid = o.project()["id"]
    tasks = _by_id(tasks_of(server, pid))
    assert len(tasks) == N
    for ident, t in tasks.items():
        row = ident - 200
        assert t["data"]["alpeft_selected"] == (0 if row in picks0 else -1)
        assert t["data"]["alpeft_rank"] == (list(picks0).index(row) + 1 if row in picks0 else None)
        assert not t["predictions"]
    with pytest.raises(oracles.PendingLabels, match="0 of 3"):
        o.request(0, picks0)
    for row in picks0:
        annotate(server, tasks[200 + row]["id"], NAMES[LABELS[row]])
    annotate(server, tasks[205]["id"], "bird")  # unasked (its truth: bird)
    annotate(server, tasks[206]["id"], "cat")  # unasked, then edited: the latest annotation counts
    annotate(server, tasks[206]["id"], "dog")
    assert o.request(0, picks0).tolist() == LABELS[picks0].tolist()
    assert sorted(o.extra(0)) == [(5, 2), (6, 1)]
    assert o.info(0)["extra_labels"] == 2
    # Round 1: every task's prediction (the model's guess, the strategy's score), the view of the picks by rank,
    # the view of the whole pool by score.
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), N).astype(np.float32)
    scores = (rng.random(N) * 3).astype(np.float32)  # beyond [0, 1], as an entropy can be
    labeled = np.isin(np.arange(N), [3, 0, 7, 5, 6])
    picks1 = np.array([9, 1, 4])
    o.publish(1, picks1, scores, probs, labeled)
    tasks = _by_id(tasks_of(server, pid))
    assert len(tasks) == N  # nothing imported twice
    for ident, t in tasks.items():
        row, d = ident - 200, t["data"]
        (p,) = [p for p in t["predictions"] if p["model_version"] == "p-round1"]
        assert p["result"][0]["value"]["choices"] == [NAMES[int(np.argmax(probs[row]))]]
        assert p["result"][0]["score"] == pytest.approx(float(probs[row].max()), abs=1e-5)
        place = 1 - (scores[~labeled] > scores[row]).sum() / (~labeled).sum()  # 1 = the highest unlabelled score
        assert p["score"] == (None if labeled[row] else pytest.approx(float(place), abs=1e-5))
        assert d["alpeft_selected"] == {3: 0, 0: 0, 7: 0, 9: 1, 1: 1, 4: 1}.get(row, -1)
        assert d["alpeft_rank"] == {3: 1, 0: 2, 7: 3, 9: 1, 1: 2, 4: 3}.get(row)  # the rank in its own round
    assert api(server, "GET", f"/api/projects/{pid}/")["model_version"] == "p-round1"
    views = api(server, "GET", f"/api/dm/views/?project={pid}")
    (view,) = [v for v in views if v["data"]["title"] == "round 1: to label"]
    listed = api(server, "GET", f"/api/tasks/?project={pid}&view={view['id']}&fields=all&page_size=100")["tasks"]
    assert [t["data"]["alpeft_id"] - 200 for t in listed] == picks1.tolist()  # the picks, in rank order
    (whole,) = [v for v in views if v["data"]["title"] == pool_mode.POOL_VIEW]
    listed = api(server, "GET", f"/api/tasks/?project={pid}&view={whole['id']}&fields=all&page_size=100")["tasks"]
    unlabeled = np.flatnonzero(~labeled)
    by_score = unlabeled[np.argsort(-scores[unlabeled])].tolist()  # most informative first, labelled ones last
    assert [t["data"]["alpeft_id"] - 200 for t in listed][: len(by_score)] == by_score and len(listed) == N
    o.publish(1, picks1, scores, probs, labeled)  # published again (a rerun): nothing pushed twice
    assert all(t["total_predictions"] == 1 for t in tasks_of(server, pid))
    assert len([v for v in api(server, "GET", f"/api/dm/views/?project={pid}") if "round 1" in v["data"]["title"]]) == 1
    # An unasked label arriving now counts with round 1's read, once; round 0's extras are not taken again.
    annotate(server, tasks[202]["id"], "bird")
    annotate(server, tasks[205]["id"], "cat")  # edited after it was taken: the label taken in round 0 stands
    for row in picks1:
        annotate(server, tasks[200 + row]["id"], NAMES[LABELS[row]])
    assert o.request(1, picks1, probs[picks1]).tolist() == LABELS[picks1].tolist()
    assert o.extra(1) == [(2, 2)] and sorted(o.extra(0)) == [(5, 2), (6, 1)]
    info = o.info(1)
    assert info["extra_labels"] == 1 and info["predictions_sent"] == 3
    # Round 2 after a pool task was deleted in Label Studio: the bulk push fails on it, the task is imported again
    # (once) and the push goes through; a deleted pick is found again under its new id.
    api(server, "DELETE", f"/api/tasks/{tasks[208]['id']}/")
    probs2 = rng.dirichlet(np.ones(3), N).astype(np.float32)
    labeled = np.isin(np.arange(N), [3, 0, 7, 5, 6, 9, 1, 4, 2])
    picks2 = np.array([10, 8])
    o.publish(2, picks2, None, probs2, labeled)
    tasks = _by_id(tasks_of(server, pid))
    assert len(tasks) == N and tasks[208]["id"] > max(t["id"] for i, t in tasks.items() if i != 208)
    for ident, t in tasks.items():
        row = ident - 200
        (p,) = [p for p in t["predictions"] if p["model_version"] == "p-round2"]
        assert p["score"] == (None if labeled[row] else pytest.approx(float(probs2[row].max()), abs=1e-5))
    assert tasks[208]["data"]["alpeft_selected"] == 2 and tasks[208]["data"]["alpeft_rank"] == 2
    (view,) = [
        v for v in api(server, "GET", f"/api/dm/views/?project={pid}") if v["data"]["title"] == "round 2: to label"
    ]
    listed = api(server, "GET", f"/api/tasks/?project={pid}&view={view['id']}&fields=all&page_size=100")["tasks"]
    assert [t["data"]["alpeft_id"] - 200 for t in listed] == picks2.tolist()
