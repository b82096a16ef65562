"""Pool mode: the whole pool in the project once, every task's prediction each round, the round's picks marked,
and every annotation taken as a label.

    DIR/label_studio_pool.json         {"pages": {page: [task ids]}, "again": {example id: task id}, "page_size"}
    DIR/round_<r>/label_studio_pool.json  the round's pushes: {"ids", "predictions": [chunks done], "picks",
                                          "views"}; the labels go to DIR/round_<r>/label_studio.json as in queries mode

Pool row k sits on page k // page_size. Pages go in order and each page's task ids are recorded as soon as it
answers, so only the first page not recorded can be in the project unrecorded (a crash, a timeout): its tasks carry
`alpeft_page`, and that page alone is looked up (by the field) before it is imported, so nothing goes in twice.

Label Studio has no bulk update of task data (one request per task, a few per second), so what changes for the
whole pool each round rides on the prediction, which goes in bulk (one request per PREDICTIONS_PER_REQUEST tasks):
its `score` (the Data Manager's "Prediction score" column, shown for the project's current model version) is the
task's place in the strategy's order, 1 - (k - 1) / U for the k-th most informative of U unlabelled tasks (Label
Studio keeps scores in [0, 1]; for strategies without a per-task score, the model's probability of its guess; none
on labelled tasks), its result is the model's guess with the guess's probability as the result's
`score`, and its `model_version` names the run and the round. Task data changes only for the round's picks:
`alpeft_selected` (the round that asked for the task; -1, set at import, if none yet) and `alpeft_rank` (1 = asked
first, in pick order). A saved view "round r: to label" lists the round's picks by rank, and one saved view of the
whole pool sorts it by the current prediction score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from absl import logging

from alpeft_jax.checkpoint import read_json, write_json
from alpeft_jax.oracles.base import LabelFileError
from alpeft_jax.oracles.label_studio import api, images, rules

if TYPE_CHECKING:
    from alpeft_jax.oracles.label_studio.oracle import LabelStudioOracle

POOL_FILE = "label_studio_pool.json"
FIELDS = ("alpeft_selected", "alpeft_rank")  # task data written on the round's picks (set to -1 / null at import)
POOL_VIEW = "pool: by the model's score"
HIDDEN = tuple(  # the views show the image, the example id, the annotation count, the prediction and the pick fields
    "tasks:" + c
    for c in (
        "inner_id completed_at cancelled_annotations total_predictions annotators annotations_results "
        "annotations_ids predictions_model_versions file_upload storage_filename created_at updated_at updated_by "
        "avg_lead_time draft_exists data.alpeft_run data.alpeft_page"
    ).split()
)
T = TypeVar("T")


def view_title(round_index: int) -> str:
    """The saved Data Manager view of a round's queries."""
    return f"round {round_index}: to label"


def prediction_scores(probs: np.ndarray, scores: np.ndarray | None, labeled: np.ndarray) -> list[float | None]:
    """The prediction `score` of each row, in [0, 1] as Label Studio requires: the row's place in the strategy's
    order, 1 - (k - 1) / U for the k-th highest of the U unlabelled rows with a finite score (the model's
    probability of its guess when the strategy has no score); None on labelled rows."""
    unlabeled = ~np.asarray(labeled, bool)
    if scores is None:
        value = np.where(unlabeled, np.max(probs, -1), np.nan)
    else:
        scores = np.asarray(scores, np.float64)
        rest = np.flatnonzero(unlabeled & np.isfinite(scores))
        order = rest[np.argsort(-scores[rest], kind="stable")]
        value = np.full(len(scores), np.nan)
        value[order] = 1.0 - np.arange(len(order)) / max(1, len(order))
    return [round(float(v), 6) if np.isfinite(v) else None for v in value.tolist()]


def predictions(
    project: dict[str, Any],
    names: list[str],
    version: str,
    task_ids: np.ndarray,
    probs: np.ndarray,
    scores: list[float | None],
) -> list[dict[str, Any]]:
    """Predictions of `task_ids`: the model's guess (probability as the result's score), `scores` as their score."""
    top = np.argmax(probs, -1)
    out = []
    for t, k, p, s in zip(task_ids.tolist(), top.tolist(), probs[np.arange(len(top)), top].tolist(), scores):
        result = rules.choice_result(project, names[k])
        result[0]["score"] = round(float(p), 6)
        out.append({"task": int(t), "model_version": version, "score": s, "result": result})
    return out


def retried(what: str, fn: Callable[[], T], applied: Callable[[], T | None]) -> T:
    """fn(), tried up to api.RETRIES times; before each retry `applied()` says whether the last try took effect
    (its answer then stands, so a page is never applied twice)."""
    for attempt in range(api.RETRIES):
        try:
            return fn()
        except LabelFileError as e:
            if attempt + 1 == api.RETRIES:
                raise
            logging.warning("%s failed (%s); trying again", what, e)
            time.sleep(0.5 * (attempt + 1))
            done = applied()
            if done is not None:
                return done
    raise AssertionError("unreachable")


class Pool:
    """The pool-mode side of a LabelStudioOracle: import, per-round pushes, and the reads of annotations."""

    def __init__(self, oracle: LabelStudioOracle, server: api.PoolServer) -> None:
        self.o = oracle
        self.server = server
        self._ids: np.ndarray | None = None
        self._row_of: dict[int, int] | None = None

    # -- records -----------------------------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        """Dataset id of every pool row."""
        if self._ids is None:
            self._ids = np.asarray(self.o.pool.ids(np.arange(len(self.o.pool.positions))), np.int64)
        return self._ids

    def row_of(self, ident: int) -> int:
        """The pool row of a dataset id."""
        if self._row_of is None:
            self._row_of = {int(i): k for k, i in enumerate(self.ids)}
        return self._row_of[int(ident)]

    def record(self) -> dict[str, Any]:
        """DIR/label_studio_pool.json (pages imported so far)."""
        rec = read_json(self.o.workdir / POOL_FILE) or {}
        if rec.get("page_size") != api.POOL_PAGE or rec.get("n") != len(self.ids) or rec.get("run") != self.o.run_key:
            rec = {"page_size": api.POOL_PAGE, "n": len(self.ids), "run": self.o.run_key, "pages": {}, "again": {}}
        return rec

    def task_ids(self, rec: dict[str, Any]) -> np.ndarray:
        """Task id of every pool row (0 where not imported)."""
        out = np.zeros(len(self.ids), np.int64)
        for page, tids in rec["pages"].items():
            start = int(page) * rec["page_size"]
            out[start : start + len(tids)] = tids
        for ident, tid in rec["again"].items():
            out[self.row_of(int(ident))] = tid
        return out

    def _task(self, row: int, page: int, selected: int = -1, rank: int | None = None) -> dict[str, Any]:
        ident = int(self.ids[row])
        image = images.task_image(self.o.pool.example(row), ident, self.o.settings, self.o.run_key)
        data = {self.o.project()["key"]: image, "alpeft_id": ident, "alpeft_run": self.o.run_key, "alpeft_page": page}
        return {"data": {**data, "alpeft_selected": selected, "alpeft_rank": rank}}

    def _run_filter(self, *items: tuple[str, str, str, Any]) -> dict[str, Any]:
        return api.data_filter([("data.alpeft_run", "equal", "String", self.o.run_key), *items])

    # -- the import, once ------------------------------------------------------------------------------------
    def import_pool(self) -> dict[str, Any]:
        """Import every pool row not imported yet, a page at a time (found again by page, never twice)."""
        rec = self.record()
        pid = self.o.project()["id"]
        n, size = len(self.ids), rec["page_size"]
        pages = [p for p in range((n + size - 1) // size) if str(p) not in rec["pages"]]
        if not pages:
            return rec
        from tqdm.auto import tqdm

        if self.o.settings.images == "local":
            rels = [images.local_path(self._task(r, 0)["data"][self.o.project()["key"]]) for r in range(n)]
            have = self.server.local_storages(pid)
            for path in rules.storages_to_add(rels, self.o.settings.local_root, have):
                self.server.add_local_storage(pid, path)
        done = n - sum(min(size, n - p * size) for p in pages)
        with tqdm(total=n, initial=done, desc="pool import into Label Studio", unit="task", dynamic_ncols=True) as bar:
            for page in pages:
                rows = range(page * size, min(n, (page + 1) * size))
                rec["pages"][str(page)] = self._import_page(pid, page, list(rows), look=page == pages[0])
                write_json(self.o.workdir / POOL_FILE, rec)
                bar.update(len(rows))
        logging.info("pool of %d tasks in Label Studio project %d (%s/projects/%d)", n, pid, self.o.url, pid)
        return rec

    def _found(self, pid: int, page: int, rows: list[int]) -> dict[int, int]:
        """Example id -> task id of a page's tasks already in the project (the lowest task id if several)."""
        found: dict[int, int] = {}
        for t in self.server.task_data(pid, self._run_filter(("data.alpeft_page", "equal", "Number", page))):
            ident = int(t["data"].get("alpeft_id", -1))
            found[ident] = min(found.get(ident, t["id"]), t["id"])
        return found

    def _import_page(self, pid: int, page: int, rows: list[int], look: bool) -> list[int]:
        """Import one page (its tasks already in the project looked up first if `look`); its task ids."""
        found = self._found(pid, page, rows) if look else {}
        todo = [r for r in rows if int(self.ids[r]) not in found]
        if todo:
            tasks = [self._task(r, page) for r in todo]

            def again() -> list[int] | None:
                now = self._found(pid, page, rows)
                return [now[int(self.ids[r])] for r in todo] if all(int(self.ids[r]) in now for r in todo) else None

            new = retried(f"importing pool page {page}", lambda: self.server.import_page(pid, tasks), again)
            if len(new) != len(todo):
                new = again() or []
                if len(new) != len(todo):
                    raise LabelFileError(f"Label Studio at {self.o.url} did not import pool page {page} whole.")
            found.update({int(self.ids[r]): t for r, t in zip(todo, new)})
        return [int(found[int(self.ids[r])]) for r in rows]

    # -- each round: predictions, the picks, the views ------------------------------------------------------
    def publish(
        self,
        round_index: int,
        selected: np.ndarray,
        scores: np.ndarray | None,
        probs: np.ndarray | None,
        labeled: np.ndarray,
    ) -> None:
        """Push round r's prediction onto every pool task, mark the round's picks and save the views (resumable)."""
        rec = self.import_pool()
        pid = self.o.project()["id"]
        selected = np.asarray(selected, np.int64)
        sel_ids = [int(i) for i in self.ids[selected]]
        path = self.o.workdir / f"round_{round_index}" / POOL_FILE
        done = read_json(path) or {}
        if done.get("ids") != sel_ids:
            done = {"ids": sel_ids, "predictions": [], "picks": False}
        if probs is not None:
            rec = self._push_predictions(pid, rec, done, path, round_index, probs, scores, labeled)
        if not done["picks"]:
            rec = self._mark_picks(pid, rec, round_index, selected)
            done["picks"] = True
            write_json(path, done)
        run = [("data.alpeft_run", "equal", "String", self.o.run_key)]
        done["views"] = {
            view_title(round_index): self.server.save_view(
                pid,
                view_title(round_index),
                api.data_filter([*run, ("data.alpeft_selected", "equal", "Number", round_index)]),
                ["tasks:data.alpeft_rank"],
                HIDDEN,
            )
        }
        if probs is not None:
            done["views"][POOL_VIEW] = self.server.save_view(
                pid, POOL_VIEW, api.data_filter(run), ["-tasks:predictions_score"], HIDDEN
            )
        write_json(path, done)
        logging.info(
            "round %d: %s %d pool tasks; view %r lists the %d to label (%s/projects/%d/data)",
            round_index,
            "predictions on" if probs is not None else "no model yet for the",
            len(self.ids),
            view_title(round_index),
            len(sel_ids),
            self.o.url,
            pid,
        )

    def _push_predictions(
        self,
        pid: int,
        rec: dict[str, Any],
        done: dict[str, Any],
        path: Any,
        round_index: int,
        probs: np.ndarray,
        scores: np.ndarray | None,
        labeled: np.ndarray,
    ) -> dict[str, Any]:
        """Every pool task's prediction of round r, in bulk requests of up to PREDICTIONS_PER_REQUEST tasks; each
        request is recorded when it answers, and a failed one is sent again only if it did not take effect."""
        n = len(self.ids)
        version = self.o.model_version(round_index)
        chunks = np.array_split(np.arange(n), max(1, -(-n // api.PREDICTIONS_PER_REQUEST)))
        todo = [c for c in range(len(chunks)) if c not in done["predictions"]]
        if todo:
            from tqdm.auto import tqdm

            value = prediction_scores(probs, scores, labeled)
            left = sum(len(chunks[c]) for c in todo)
            with tqdm(total=n, initial=n - left, unit="task", desc=f"round {round_index}: predictions to Label Studio",
                      dynamic_ncols=True) as bar:  # fmt: skip
                for c in todo:
                    rec = self._push(pid, rec, chunks[c], version, probs, value)
                    done["predictions"].append(c)
                    write_json(path, done)
                    bar.update(len(chunks[c]))
        self.server.set_model_version(pid, version)
        return rec

    def _push(
        self,
        pid: int,
        rec: dict[str, Any],
        rows: np.ndarray,
        version: str,
        probs: np.ndarray,
        value: list[float | None],
    ) -> dict[str, Any]:
        """One bulk request of predictions for `rows`. Before a retry: if the failed try took effect (the request is
        one transaction: its first and last tasks hold the version), it stands; else tasks deleted in Label Studio
        (which fail the whole request) are imported again."""
        names = self.o.pool.class_names
        timeout = api.predictions_timeout(len(rows), self.o.settings.request_timeout)
        for attempt in range(api.RETRIES):
            tids = self.task_ids(rec)[rows]
            preds = predictions(self.o.project(), names, version, tids, probs[rows], [value[r] for r in rows])
            try:
                made = self.server.import_predictions(pid, preds, timeout)
            except LabelFileError as e:
                if attempt + 1 == api.RETRIES:
                    raise
                logging.warning("pushing %d predictions failed (%s); checking and trying again", len(rows), e)
                time.sleep(0.5 * (attempt + 1))
                if all(self.server.has_prediction(int(t), version) for t in (tids[0], tids[-1])):
                    return rec
                rec = self._revive(pid, rec)
                continue
            if made != len(preds):
                raise LabelFileError(
                    f"Label Studio at {self.o.url} made {made} of {len(preds)} predictions (model version {version}) "
                    f"in project {pid}; its log names the ones it refused (a labelling config that lost a class?)."
                )
            return rec
        raise AssertionError("unreachable")

    def _revive(self, pid: int, rec: dict[str, Any]) -> dict[str, Any]:
        """Import again the pool tasks deleted in Label Studio (one listing of the run's task ids)."""
        live = set(self.server.task_ids(pid, self._run_filter()))
        tids = self.task_ids(rec)
        gone = [int(r) for r in np.flatnonzero(~np.isin(tids, np.fromiter(live, np.int64, len(live))))]
        if gone:
            logging.warning(
                "the pool tasks of example ids %s were deleted in Label Studio; importing them again",
                [int(self.ids[r]) for r in gone[:10]],
            )
            picked = self._picked()
            size = rec["page_size"]
            tasks = [self._task(r, r // size, *picked.get(int(self.ids[r]), (-1, None))) for r in gone]
            new = self.server.import_page(pid, tasks)
            if len(new) != len(gone):
                raise LabelFileError(f"Label Studio at {self.o.url} did not import {len(gone)} deleted tasks again.")
            rec["again"].update({str(int(self.ids[r])): int(t) for r, t in zip(gone, new)})
            write_json(self.o.workdir / POOL_FILE, rec)
        return rec

    def _picked(self) -> dict[int, tuple[int, int]]:
        """Example id -> (round, rank) of the picks of the rounds recorded so far (the latest round wins)."""
        out: dict[int, tuple[int, int]] = {}
        q = 0
        while (self.o.workdir / f"round_{q}").exists():
            past = read_json(self.o.workdir / f"round_{q}" / POOL_FILE) or {}
            for k, ident in enumerate(past.get("ids") or []):
                out[int(ident)] = (q, k + 1)
            q += 1
        return out

    def _mark_picks(self, pid: int, rec: dict[str, Any], round_index: int, selected: np.ndarray) -> dict[str, Any]:
        """Write the round and rank on each pick (PICK_WORKERS requests at once); deleted picks are imported again."""
        size = rec["page_size"]
        tids = self.task_ids(rec)[selected]

        def data(k: int) -> dict[str, Any]:
            row = int(selected[k])
            return self._task(row, row // size, round_index, k + 1)["data"]

        def one(k: int) -> bool:
            t = int(tids[k])
            return retried(f"updating task {t}", lambda: self.server.set_task_data(t, data(k)), lambda: None)

        with ThreadPoolExecutor(api.PICK_WORKERS) as pool:
            alive = list(pool.map(one, range(len(selected))))
        gone = [k for k, ok in enumerate(alive) if not ok]
        if gone:
            logging.warning(
                "the pool tasks of example ids %s were deleted in Label Studio; importing them again",
                [int(self.ids[selected[k]]) for k in gone[:10]],
            )
            new = self.server.import_page(pid, [{"data": data(k)} for k in gone])
            rec["again"].update({str(int(self.ids[selected[k]])): int(t) for k, t in zip(gone, new)})
            write_json(self.o.workdir / POOL_FILE, rec)
        return rec

    # -- reads --------------------------------------------------------------------------------------------------
    def annotated(self) -> dict[int, list[dict[str, Any]]]:
        """This run's pool tasks that hold an annotation (counted or cancelled), by example id."""
        pid = self.o.project()["id"]
        tasks: dict[int, dict[str, Any]] = {}
        for field in ("total_annotations", "cancelled_annotations"):
            for t in self.server.annotated(pid, self._run_filter((field, "greater", "Number", 0))):
                tasks[int(t["id"])] = t
        return rules.by_example(tasks.values(), self.o.run_key)

    def taken_before(self, round_index: int) -> set[int]:
        """Example ids whose label was taken in an earlier round (asked for, or given unasked)."""
        out: set[int] = set()
        for q in range(round_index):
            past = read_json(self.o._round_file(q)) or {}
            if past.get("labels") is not None:
                out.update(int(i) for i in past.get("ids") or [])
                out.update(int(i) for i, _ in past.get("extra") or [])
        return out
