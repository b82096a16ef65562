"""Pool mode: the whole pool in the project once, every task's predictions and fields each round, and every
annotation taken as a label.

    DIR/label_studio_pool.json         {"pages": {page: [task ids]}, "again": {example id: task id}, "page_size"}
    DIR/round_<r>/label_studio_pool.json  the round's pushes: {"ids", "predictions": [pages], "fields": [pages],
                                          "view"}; the labels go to DIR/round_<r>/label_studio.json as in queries mode

Pool row k sits on page k // page_size. A page's tasks carry `alpeft_page`, so a page whose import answered but
was not recorded (a crash, a timeout) is found again by that field and never imported twice. Each round writes on
every task, for the Data Manager to sort and filter on: `alpeft_score` (the strategy's score, higher is asked
first), `alpeft_rank` (1 = asked first: the round's picks in pick order, then the rest of the unlabelled pool by
score), `alpeft_class` and `alpeft_prob` (the model's guess) and `alpeft_selected` (the round that asked for the
task, -1 if none yet); a saved view "round r: to label" lists the round's picks by rank.
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
FIELDS = ("alpeft_score", "alpeft_rank", "alpeft_class", "alpeft_prob", "alpeft_selected")
T = TypeVar("T")


def view_title(round_index: int) -> str:
    """The saved Data Manager view of a round's queries."""
    return f"round {round_index}: to label"


def ranks(n: int, selected: np.ndarray, scores: np.ndarray | None, labeled: np.ndarray) -> np.ndarray:
    """Rank of each pool row (1 = asked first; 0 = none): the picks in pick order, then unlabelled rows by score."""
    out = np.zeros(n, np.int64)
    selected = np.asarray(selected, np.int64)
    out[selected] = np.arange(1, len(selected) + 1)
    if scores is not None:
        rest = np.flatnonzero((out == 0) & ~np.asarray(labeled, bool))
        order = rest[np.argsort(-np.asarray(scores, np.float64)[rest], kind="stable")]
        out[order] = np.arange(len(selected) + 1, len(selected) + 1 + len(order))
    return out


def fields(rank: int, score: float | None, guess: tuple[str, float] | None, selected_round: int) -> dict[str, Any]:
    """A task's Data Manager fields for one round."""
    return {
        "alpeft_score": None if score is None or not np.isfinite(score) else round(float(score), 6),
        "alpeft_rank": int(rank) if rank > 0 else None,
        "alpeft_class": None if guess is None else guess[0],
        "alpeft_prob": None if guess is None else round(float(guess[1]), 6),
        "alpeft_selected": int(selected_round),
    }


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

    def _task(self, row: int, page: int) -> dict[str, Any]:
        ident = int(self.ids[row])
        image = images.task_image(self.o.pool.example(row), ident, self.o.settings, self.o.run_key)
        data = {self.o.project()["key"]: image, "alpeft_id": ident, "alpeft_run": self.o.run_key, "alpeft_page": page}
        return {"data": data}

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
                rec["pages"][str(page)] = self._import_page(pid, page, list(rows))
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

    def _import_page(self, pid: int, page: int, rows: list[int]) -> list[int]:
        found = self._found(pid, page, rows)
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

    # -- each round: predictions, fields, the view -----------------------------------------------------------
    def publish(
        self,
        round_index: int,
        selected: np.ndarray,
        scores: np.ndarray | None,
        probs: np.ndarray | None,
        labeled: np.ndarray,
    ) -> None:
        """Push round r's predictions and fields onto every pool task and save the round's view (resumable)."""
        rec = self.import_pool()
        pid = self.o.project()["id"]
        n, size = len(self.ids), rec["page_size"]
        selected = np.asarray(selected, np.int64)
        sel_ids = [int(i) for i in self.ids[selected]]
        path = self.o.workdir / f"round_{round_index}" / POOL_FILE
        done = read_json(path) or {}
        if done.get("ids") != sel_ids:
            done = {"ids": sel_ids, "predictions": [], "fields": []}
        names = self.o.pool.class_names
        version = self.o.model_version(round_index)
        rank = ranks(n, selected, scores, labeled)
        chosen_in = self._selected_rounds(round_index, selected)
        top = None if probs is None else np.argmax(probs, -1)
        from tqdm.auto import tqdm

        n_pages = (n + size - 1) // size
        steps = ["predictions", "fields"] if probs is not None else ["fields"]
        for step in steps:
            todo = [p for p in range(n_pages) if p not in done[step]]
            if not todo:
                continue
            with tqdm(total=n, initial=n - sum(min(size, n - p * size) for p in todo), unit="task",
                      desc=f"round {round_index}: {step} to Label Studio", dynamic_ncols=True) as bar:  # fmt: skip
                for page in todo:
                    rows = np.arange(page * size, min(n, (page + 1) * size))
                    tids = self.task_ids(rec)[rows]
                    if step == "predictions":
                        assert probs is not None and top is not None
                        preds = [
                            {
                                "task": int(t),
                                "model_version": version,
                                "score": round(float(probs[r, top[r]]), 6),
                                "result": rules.choice_result(self.o.project(), names[top[r]]),
                            }
                            for r, t in zip(rows, tids)
                        ]
                        self._push(pid, page, preds, int(tids[-1]), version)
                    else:
                        rec = self._fields_page(pid, rec, page, rows, tids, rank, scores, probs, top, chosen_in)
                    done[step].append(page)
                    write_json(path, done)
                    bar.update(len(rows))
        if probs is not None:
            self.server.set_model_version(pid, version)
        view = self.server.save_view(
            pid,
            view_title(round_index),
            self._run_filter(("data.alpeft_selected", "equal", "Number", round_index)),
            ["tasks:data.alpeft_rank"],
        )
        done["view"] = view
        write_json(path, done)
        logging.info(
            "round %d: predictions and fields on %d pool tasks; view %r lists the %d to label (%s/projects/%d/data)",
            round_index,
            n,
            view_title(round_index),
            len(sel_ids),
            self.o.url,
            pid,
        )

    def _push(self, pid: int, page: int, preds: list[dict[str, Any]], last_task: int, version: str) -> None:
        """One page of predictions; a retry first checks whether the failed try was applied after all."""
        retried(
            f"pushing predictions of pool page {page}",
            lambda: self.server.import_predictions(pid, preds),
            lambda: True if self.server.has_prediction(last_task, version) else None,
        )

    def _selected_rounds(self, round_index: int, selected: np.ndarray) -> np.ndarray:
        """The round in which each pool row was asked for (-1: never), this round's picks included."""
        out = np.full(len(self.ids), -1, np.int64)
        for q in range(round_index):
            past = read_json(self.o.workdir / f"round_{q}" / POOL_FILE) or {}
            for ident in past.get("ids") or []:
                out[self.row_of(int(ident))] = q
        out[np.asarray(selected, np.int64)] = round_index
        return out

    def _fields_page(
        self,
        pid: int,
        rec: dict[str, Any],
        page: int,
        rows: np.ndarray,
        tids: np.ndarray,
        rank: np.ndarray,
        scores: np.ndarray | None,
        probs: np.ndarray | None,
        top: np.ndarray | None,
        chosen_in: np.ndarray,
    ) -> dict[str, Any]:
        """Write one page's fields, task by task (several at once); tasks deleted in Label Studio are imported again."""
        names = self.o.pool.class_names

        def data(r: int) -> dict[str, Any]:
            guess = None if probs is None or top is None else (names[top[r]], float(probs[r, top[r]]))
            score = None if scores is None else float(scores[r])
            return {**self._task(int(r), page)["data"], **fields(int(rank[r]), score, guess, int(chosen_in[r]))}

        def one(item: tuple[int, int]) -> bool:
            r, t = item
            return retried(f"updating task {t}", lambda: self.server.set_task_data(int(t), data(r)), lambda: None)

        with ThreadPoolExecutor(api.FIELD_WORKERS) as pool:
            ok = list(pool.map(one, zip(rows.tolist(), tids.tolist())))
        gone = [int(r) for r, alive in zip(rows, ok) if not alive]
        if gone:
            logging.warning(
                "the pool tasks of example ids %s were deleted in Label Studio; importing them again",
                [int(self.ids[r]) for r in gone[:10]],
            )
            new = self.server.import_page(pid, [{"data": data(r)} for r in gone])
            rec["again"].update({str(int(self.ids[r])): int(t) for r, t in zip(gone, new)})
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
