"""The Label Studio oracle: the records of a run and its rounds, tying the settings, the server and the rules."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from alpeft_jax.checkpoint import read_json, write_json
from alpeft_jax.oracles.base import LabelFileError, PendingLabels, PoolView
from alpeft_jax.oracles.label_studio import api, images, rules
from alpeft_jax.oracles.label_studio.pool import Pool
from alpeft_jax.oracles.label_studio.settings import resolve

RUN_FILE = "label_studio.json"


class LabelStudioOracle:
    """Labels from annotations in a Label Studio project, asked for with the model's predictions."""

    def __init__(
        self,
        pool: PoolView,
        workdir: str | os.PathLike,
        *,
        run_name: str = "",
        token: str | None = None,
        client: Any = None,
        **settings: Any,
    ) -> None:
        self.settings = resolve(settings)
        self.pool = pool
        self.workdir = epath.Path(workdir)
        self.run_name = run_name
        self.url = self.settings.url
        self.project_setting = self.settings.project
        self.multiple = self.settings.multiple
        self.server = api.PoolServer(self.url, self.settings.token_env, token, self.settings.request_timeout, client)
        self.pool_mode = Pool(self, self.server) if self.settings.mode == "pool" else None
        self._project: dict[str, Any] | None = None
        self._found: dict[int, list[dict[str, Any]]] = {}
        self._key = ""

    # -- records ---------------------------------------------------------------------------------------
    def model_version(self, round_index: int) -> str:
        """The predictions' model version of a round: the run name and the round."""
        return f"{self.run_name or 'alpeft_jax'}-round{round_index}"

    def _round_file(self, round_index: int) -> epath.Path:
        return self.workdir / f"round_{round_index}" / RUN_FILE

    def _run_record(self) -> dict[str, Any]:
        path = self.workdir / RUN_FILE
        rec = read_json(path) or {}
        if not rec.get("run_key"):
            rec = {"run_key": secrets.token_hex(6)}
            write_json(path, rec)
        self._key = rec["run_key"]
        return rec

    @property
    def run_key(self) -> str:
        """This run's key, carried by every task it creates (made once, kept in DIR/label_studio.json)."""
        return self._key or self._run_record()["run_key"]

    # -- the project -----------------------------------------------------------------------------------
    def client(self) -> Any:
        """The SDK client (made on first use)."""
        return self.server.client()

    def project(self) -> dict[str, Any]:
        """The project's id and labelling names: {'id', 'image', 'choices', 'key', 'classes'} (found or made)."""
        if self._project is not None:
            return self._project
        self.server.client()  # a missing SDK or token fails before anything is written
        run = self._run_record()
        proj = None
        if run.get("project") and run.get("project_setting") == self.project_setting:
            proj = self.server.project(int(run["project"]), missing_ok=True)
            if proj is None:
                logging.warning(
                    "Label Studio project %s recorded in %s is gone from %s; finding or making the project again",
                    run["project"],
                    self.workdir / RUN_FILE,
                    self.url,
                )
        if proj is None and self.project_setting.isdigit():
            proj = self.server.project(int(self.project_setting), missing_ok=False)
        if proj is None:
            title = (self.project_setting or f"{self.run_name or 'alpeft_jax'} ({run['run_key']})")[:50]
            found = self.server.projects_titled(title)
            if len(found) > 1:
                raise LabelFileError(
                    f"Label Studio at {self.url} has {len(found)} projects titled {title!r} "
                    f"(ids {[p.id for p in found]}); pass --config.label_studio.project=ID."
                )
            if found:
                proj = self.server.project(int(found[0].id), missing_ok=False)
            else:
                proj = self.server.create_project(
                    title,
                    f"Active-learning queries of alpeft_jax run {self.run_name or '?'} (run key {run['run_key']}).",
                    rules.label_config(self.pool.class_names),
                )
                logging.info("created Label Studio project %d %r at %s", proj.id, title, self.url)
        self._project = {"id": int(proj.id), **self._check_label_config(int(proj.id), proj.label_config or "")}
        if run.get("project") != self._project["id"] or run.get("project_setting") != self.project_setting:
            write_json(
                self.workdir / RUN_FILE,
                {**run, "project": self._project["id"], "project_setting": self.project_setting, "url": self.url},
            )
        return self._project

    def _check_label_config(self, pid: int, config: str) -> dict[str, Any]:
        """The Image and Choices names of a project's labelling config; every class must be a choice."""
        where = f"Label Studio project {pid} ({self.url}/projects/{pid}/settings/labeling)"
        return rules.read_label_config(config, self.pool.class_names, where)

    # -- tasks -----------------------------------------------------------------------------------------
    def _run_tasks(self, round_index: int) -> dict[int, list[dict[str, Any]]]:
        """This run's tasks of a round in the project, by example id (several if an example was imported twice)."""
        pid, key = self.project()["id"], self.run_key
        return rules.by_example(self.server.tasks(pid, rules.round_query(key, round_index)), key)

    def _import(
        self, round_index: int, rows: list[int], ids: list[int], predictions: np.ndarray | None, record: dict[str, Any]
    ) -> None:
        """Bulk-import tasks for `ids` (with pre-annotations), recording their task ids batch by batch."""
        proj = self.project()
        model_version = self.model_version(round_index)
        tasks = []
        for k, (row, ident) in enumerate(zip(rows, ids)):
            image = images.task_image(self.pool.example(row), ident, self.settings, self.run_key)
            guess = None
            if predictions is not None:
                top = int(np.argmax(predictions[k]))
                guess = (self.pool.class_names[top], float(predictions[k][top]), model_version)
                record["predicted"][str(ident)] = [top, round(float(predictions[k][top]), 6)]
            tasks.append(rules.new_task(proj, image, ident, round_index, self.run_key, guess))
        if self.settings.images == "local":
            rels = [images.local_path(t["data"][proj["key"]]) for t in tasks]
            for path in rules.storages_to_add(rels, self.settings.local_root, self.server.local_storages(proj["id"])):
                self.server.add_local_storage(proj["id"], path)

        def recorded(batch: list[dict[str, Any]], task_ids: list[int]) -> None:
            record["tasks"].update({str(t["data"]["alpeft_id"]): i for t, i in zip(batch, task_ids)})
            write_json(self._round_file(round_index), record)

        self.server.import_tasks(proj["id"], tasks, recorded)
        if predictions is not None:  # the annotator starts from this round's predictions
            self.server.set_model_version(proj["id"], model_version)
        logging.info(
            "round %d: %d tasks imported into Label Studio project %d (%s/projects/%d)",
            round_index,
            len(tasks),
            proj["id"],
            self.url,
            proj["id"],
        )

    def _decide(self, ident: int, tasks: list[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]], bool]:
        """(label or None, the annotations that count, whether the task was skipped) under the `multiple` rule."""
        proj = self.project()
        return rules.decide(
            tasks,
            choices_name=proj["choices"],
            multiple=self.multiple,
            parse_label=self.pool.parse_label,
            ident=ident,
            link=f"{self.url}/projects/{proj['id']}/data",
        )

    # -- the interface ---------------------------------------------------------------------------------
    def request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Labels int64[len(rows)] once every task of the round is annotated; imports the tasks on first call."""
        rows = np.asarray(rows, np.int64)
        ids = [int(i) for i in self.pool.ids(rows)]
        if predictions is not None:
            predictions = np.asarray(predictions, np.float32)
            if predictions.shape != (len(rows), len(self.pool.class_names)):
                raise ValueError(
                    f"predictions must be [{len(rows)}, {len(self.pool.class_names)}] class "
                    f"probabilities, got {predictions.shape}."
                )
        record = read_json(self._round_file(round_index)) or {}
        if record.get("ids") == ids and record.get("labels") is not None:
            return np.asarray(record["labels"], np.int64)  # read before: never asked again
        if record.get("ids") != ids:
            if record:
                logging.warning(
                    "round %d: the selection differs from the recorded one; tasks are matched by example id",
                    round_index,
                )
            record = {"ids": ids, "tasks": {}, "predicted": {}}
        if self.pool_mode is not None and predictions is not None:  # the pool's tasks got them when published
            top = np.argmax(predictions, -1)
            record["predicted"] = {str(i): [int(t), round(float(p[t]), 6)] for i, t, p in zip(ids, top, predictions)}
        if self.pool_mode is not None and "view" not in (read_json(self._pool_round_file(round_index)) or {}):
            taken = self.pool_mode.taken_before(round_index)  # the driver did not publish the round: mark its picks
            labeled = np.isin(self.pool_mode.ids, np.asarray(sorted(taken), np.int64))
            self.pool_mode.publish(round_index, rows, None, None, labeled)
        wait = self.settings.wait_seconds
        poll = self.settings.poll_seconds
        deadline = None if wait < 0 else time.time() + wait
        bar, last_note, last_done, done = None, 0.0, -1, 0
        try:
            while True:
                labels, counted, skipped = self._poll(round_index, rows, ids, predictions, record)
                done = int((labels >= 0).sum())
                final = rules.round_labels(labels, [i in skipped for i in ids], self.settings.skipped)
                if final is not None:
                    labels = np.asarray(final, np.int64)
                    record["labels"] = labels.tolist()
                    if self.pool_mode is not None:
                        record["extra"] = self._extras(round_index, ids)
                    record["info"] = {
                        "project": self.project()["id"],
                        "url": self.url,
                        "tasks": len(ids),
                        "excluded": int((labels < 0).sum()),
                        **rules.facts(ids, labels, counted, record.get("predicted", {}), self.server.user),
                        **({"extra_labels": len(record["extra"])} if "extra" in record else {}),
                    }
                    write_json(self._round_file(round_index), record)
                    return labels
                pid = self.project()["id"]
                where = f"{self.url}/projects/{pid}/data"
                waiting = deadline is None or time.time() + poll <= deadline
                if not waiting or (skipped and len(skipped) + done == len(ids)):
                    if not skipped:
                        note = ""
                    elif self.settings.skipped == "exclude":
                        note = f"; {len(skipped)} skipped (example ids {skipped[:10]}) are excluded as can't tell"
                    else:
                        note = (
                            f"; {len(skipped)} skipped (example ids {skipped[:10]}): open them and choose a class "
                            "(label_studio.skipped=ask), or set label_studio.skipped=exclude"
                        )
                    raise PendingLabels(
                        f"round {round_index}: {done} of {len(ids)} Label Studio tasks annotated in project {pid} "
                        f"({where}){note}; label the rest and rerun the same command."
                    )
                if bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(
                        total=len(ids),
                        desc=f"round {round_index}: annotated in Label Studio",
                        unit="task",
                        mininterval=2.0,
                        dynamic_ncols=True,
                        leave=False,
                    )
                bar.n = done
                bar.refresh()
                if time.time() - last_note >= 60.0 or done != last_done:
                    left = "" if deadline is None else f" up to {deadline - time.time():.0f}s more"
                    logging.info(
                        "round %d: %d/%d tasks annotated in Label Studio (%s); waiting%s",
                        round_index,
                        done,
                        len(ids),
                        where,
                        left,
                    )
                    last_note, last_done = time.time(), done
                time.sleep(poll)
        except KeyboardInterrupt:  # Ctrl-C while waiting: a clean stop like wait_seconds=0; the same command resumes
            raise PendingLabels(
                f"round {round_index}: stopped while waiting for Label Studio ({done} of "
                f"{len(ids)} tasks annotated); nothing is lost: rerun the same command to continue."
            ) from None
        finally:
            if bar is not None:
                bar.close()

    def _poll(
        self, round_index: int, rows: np.ndarray, ids: list[int], predictions: np.ndarray | None, record: dict[str, Any]
    ) -> tuple[np.ndarray, list[dict[str, Any]], list[int]]:
        """One look at the round's tasks (importing those not there): labels (-1: none yet), the annotations
        that decided them, and the example ids of skipped tasks."""
        if self.pool_mode is not None:
            self._found = found = self.pool_mode.annotated()
            return self._decide_all(ids, found)
        found = self._run_tasks(round_index)
        todo = [k for k, i in enumerate(ids) if i not in found]
        if todo:
            gone = rules.deleted(ids, found, record["tasks"])
            if gone:
                logging.warning(
                    "round %d: the tasks of example ids %s were deleted in Label Studio; importing them again",
                    round_index,
                    gone[:10],
                )
            self._import(
                round_index,
                [int(rows[k]) for k in todo],
                [ids[k] for k in todo],
                None if predictions is None else predictions[todo],
                record,
            )
            found = self._run_tasks(round_index)
        tasks = {str(i): int(found[i][0]["id"]) for i in ids if i in found}
        if tasks != record["tasks"]:
            record["tasks"] = tasks
            write_json(self._round_file(round_index), record)
        return self._decide_all(ids, found)

    def _decide_all(
        self, ids: list[int], found: dict[int, list[dict[str, Any]]]
    ) -> tuple[np.ndarray, list[dict[str, Any]], list[int]]:
        """Labels of `ids` from their tasks (-1: none yet), the annotations that decided them, the skipped ids."""
        labels = np.full(len(ids), -1, np.int64)
        counted: list[dict[str, Any]] = []
        skipped = []
        for k, ident in enumerate(ids):
            label, used, was_skipped = self._decide(ident, found.get(ident, []))
            if label is not None:
                labels[k] = label
                counted += used
            elif was_skipped:
                skipped.append(ident)
        return labels, counted, skipped

    # -- pool mode ---------------------------------------------------------------------------------------
    def _pool_round_file(self, round_index: int) -> epath.Path:
        from alpeft_jax.oracles.label_studio.pool import POOL_FILE

        return self.workdir / f"round_{round_index}" / POOL_FILE

    def publish(
        self,
        round_index: int,
        rows: np.ndarray,
        scores: np.ndarray | None,
        probs: np.ndarray | None,
        labeled: np.ndarray,
    ) -> None:
        """Pool mode: every pool task gets round r's prediction and fields, and the round's picks a saved view.

        `rows`: the round's picks in pick order; `scores`: float[N] the strategy's score of every pool row (higher
        is asked first; None when it has none); `probs`: float[N, K] the model's probabilities (None in round 0);
        `labeled`: bool[N] rows labelled so far. Queries mode: nothing to do.
        """
        if self.pool_mode is None:
            return
        n = len(self.pool.positions)
        if probs is not None and np.shape(probs) != (n, len(self.pool.class_names)):
            raise ValueError(f"probs must be [{n}, {len(self.pool.class_names)}], got {np.shape(probs)}.")
        if scores is not None and np.shape(scores) != (n,):
            raise ValueError(f"scores must be [{n}], got {np.shape(scores)}.")
        self.pool_mode.publish(round_index, np.asarray(rows, np.int64), scores, probs, np.asarray(labeled, bool))

    def _extras(self, round_index: int, ids: list[int]) -> list[list[int]]:
        """[example id, label] of pool tasks labelled without being asked, not taken before (pool mode)."""
        assert self.pool_mode is not None
        skip = self.pool_mode.taken_before(round_index) | set(ids)
        out = []
        for ident in sorted(set(self._found) - skip):
            label, _, _ = self._decide(ident, self._found[ident])
            if label is not None:
                out.append([int(ident), int(label)])
        return out

    def extra(self, round_index: int) -> list[tuple[int, int]]:
        """(pool row, label) of the labels given unasked that arrived with round r's read (pool mode; [] else)."""
        record = read_json(self._round_file(round_index)) or {}
        if self.pool_mode is None or record.get("labels") is None:
            return []
        return [(self.pool_mode.row_of(int(i)), int(lab)) for i, lab in record.get("extra") or []]

    def info(self, round_index: int) -> dict[str, Any]:
        """The round's labelling facts: project, annotators, lead times, accepted pre-annotations ({} if unread)."""
        record = read_json(self._round_file(round_index)) or {}
        return dict(record.get("info") or {})
