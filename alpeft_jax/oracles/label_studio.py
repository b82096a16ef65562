"""Label Studio oracle: each round's selection becomes tasks in a Label Studio project, pre-annotated with the
model's guess; the run continues once every task has an annotation.

    label-studio start --no-browser -p 8080
    export LABEL_STUDIO_API_KEY=...        # a personal access token or a legacy token (Account & Settings)
    python -m alpeft_jax.main ... --config.oracle=label_studio --config.label_studio.url=http://127.0.0.1:8080

Talks to the server through `label-studio-sdk` (`pip install 'alpeft_jax[label]'`), which handles both token kinds
(a personal access token is exchanged for a short-lived Bearer token). The settings are `config.label_studio`:

- project: "" makes (or finds again) a project for this run, titled "<run name> (<run key>)"; a number or a title
  names an existing project (a title not found is created). New projects get an image-classification labelling
  config with one choice per class; an existing project's config must offer every class.
- images: "inline" sends PNG data URIs of at most `thumbnail` pixels; "local" points tasks at files served by
  Label Studio's local storage (the server shares this file system; `local_root` = its LOCAL_FILES_DOCUMENT_ROOT;
  images without a file are written as PNGs to `local_root`/alpeft_jax/<run key>/; the run registers the
  storage); "url" points at `image_url_prefix` + the file path on your own file server (images without a file
  go inline).
- wait_seconds: 0 stops the run at once (rerun the same command when the tasks are labelled); > 0 polls every
  `poll_seconds` for up to that long before stopping the same way; < 0 waits without limit.

Nothing lost, nothing twice. Every task carries our example id (`alpeft_id`), the round and a key of this run
(`alpeft_run`, kept in DIR/label_studio.json); before importing, the project is searched for this run's tasks, so a
rerun never imports an example twice, whatever happened between the import and the record. Task ids are written to
DIR/round_<r>/label_studio.json after each bulk import, and the labels with the round's facts (annotators, lead
times, accepted pre-annotations) the moment they are read: a round already read is never asked for again.

Rules for what annotators do:
- a skipped task (every annotation cancelled or empty) counts as not labelled; the stop message lists it, to be
  labelled in Label Studio (the round needs a label for every selected example);
- several annotations of one task (or several tasks of one example): `multiple="latest"` takes the most recently
  updated annotation, `"majority"` the most frequent class, ties going to the class annotated last;
- a class not among the dataset's classes, or several classes in one annotation: an error naming the task, and
  nothing is recorded;
- a task deleted in Label Studio is imported again on the next request, with a warning;
- server down, wrong URL or token, missing project: one error naming the URL and the fix; the run's state is
  unchanged and the same command resumes.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import secrets
import time
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from alpeft_jax.checkpoint import read_json, write_json
from alpeft_jax.oracles.base import LabelFileError, PendingLabels, PoolView

DEFAULTS: dict[str, Any] = dict(
    url="", project="", token_env="LABEL_STUDIO_API_KEY", images="inline", thumbnail=256, local_root="",
    image_url_prefix="", wait_seconds=0.0, poll_seconds=10.0, multiple="latest", request_timeout=60.0,
)
IMPORT_BATCH = 100  # tasks per bulk import (each batch's task ids are recorded before the next)
PAGE_SIZE = 500  # tasks per page when listing a project
RUN_FILE = "label_studio.json"


def label_config(class_names: list[str]) -> str:
    """An image-classification labelling config: the image and one required single choice per class."""
    choices = "".join(f"    <Choice value={quoteattr(n)}/>\n" for n in class_names)
    return ('<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            '  <Choices name="label" toName="image" choice="single" showInline="true" required="true">\n'
            f"{choices}  </Choices>\n</View>\n")


class LabelStudioOracle:
    """Labels from annotations in a Label Studio project, asked for with the model's predictions."""

    def __init__(self, pool: PoolView, workdir: str | os.PathLike, *, run_name: str = "", token: str | None = None,
                 client: Any = None, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown label_studio settings {unknown}; known: {sorted(DEFAULTS)}.")
        s = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
        self.pool = pool
        self.workdir = epath.Path(workdir)
        self.run_name = run_name
        self.url = str(s["url"]).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("the Label Studio oracle needs --config.label_studio.url=http://HOST:PORT "
                             f"(got {s['url']!r}).")
        self.project_setting = str(s["project"]).strip()
        if self.project_setting in ("0", "None"):  # the old integer default
            self.project_setting = ""
        self.token_env = str(s["token_env"])
        self.token = token
        self.images = str(s["images"])
        if self.images not in ("inline", "local", "url"):
            raise ValueError(f"label_studio.images must be inline, local or url, got {self.images!r}.")
        if self.images == "local" and not s["local_root"]:
            raise ValueError("label_studio.images=local needs --config.label_studio.local_root=DIR, the server's "
                             "LOCAL_FILES_DOCUMENT_ROOT.")
        if self.images == "url" and not s["image_url_prefix"]:
            raise ValueError("label_studio.images=url needs --config.label_studio.image_url_prefix=http://...")
        self.thumbnail = int(s["thumbnail"])
        self.local_root = os.path.abspath(os.path.expanduser(str(s["local_root"]))) if s["local_root"] else ""
        self.image_url_prefix = str(s["image_url_prefix"])
        self.wait_seconds = float(s["wait_seconds"])
        self.poll_seconds = max(0.05, float(s["poll_seconds"]))
        self.multiple = str(s["multiple"])
        if self.multiple not in ("latest", "majority"):
            raise ValueError(f"label_studio.multiple must be latest or majority, got {self.multiple!r}.")
        self.request_timeout = float(s["request_timeout"])
        self._client = client
        self._project: dict[str, Any] | None = None
        self._emails: dict[int, str] = {}
        self._key = ""

    # -- records ---------------------------------------------------------------------------------------
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

    # -- server ----------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, allow_404: bool = False, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), with the SDK's and the network's failures as one LabelFileError line.

        With allow_404, "not found" returns None instead.
        """
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            if e.status_code == 404 and allow_404:
                return None
            detail = e.body
            if isinstance(e.body, dict):
                detail = "; ".join(str(x) for x in (e.body.get("detail"), e.body.get("validation_errors")) if x)
            if e.status_code in (401, 403):
                raise LabelFileError(
                    f"Label Studio at {self.url} refused the token in ${self.token_env} while {what} "
                    f"(HTTP {e.status_code}: {detail}); put a valid personal access token or legacy token "
                    f"(Label Studio > Account & Settings) in ${self.token_env} and rerun the same command."
                ) from None
            raise LabelFileError(
                f"Label Studio at {self.url}: {what} failed (HTTP {e.status_code}: {detail})."
            ) from None
        except httpx.HTTPError as e:
            raise LabelFileError(
                f"cannot reach Label Studio at {self.url} while {what} ({type(e).__name__}: {e}); start the server "
                "(label-studio start) or fix --config.label_studio.url, then rerun the same command."
            ) from None

    def client(self) -> Any:
        """The SDK client (made on first use)."""
        if self._client is None:
            try:
                from label_studio_sdk import LabelStudio
            except ImportError:
                raise LabelFileError("the Label Studio oracle needs the label-studio-sdk package: "
                                     "pip install 'alpeft_jax[label]'.") from None
            token = self.token if self.token is not None else os.environ.get(self.token_env, "")
            if not token:
                raise LabelFileError(f"set ${self.token_env} to a Label Studio personal access token or legacy "
                                     "token (Label Studio > Account & Settings).")
            self._client = self._call("reading the token", LabelStudio, base_url=self.url, api_key=token,
                                      timeout=self.request_timeout)
        return self._client

    def project(self) -> dict[str, Any]:
        """The project's id and labelling names: {'id', 'image', 'choices', 'key', 'classes'} (found or made)."""
        if self._project is not None:
            return self._project
        ls = self.client()
        run = self._run_record()
        proj = None
        if run.get("project") and run.get("project_setting") == self.project_setting:
            proj = self._get_project(int(run["project"]), missing_ok=True)
            if proj is None:
                logging.warning("Label Studio project %s recorded in %s is gone from %s; finding or making "
                                "the project again", run["project"], self.workdir / RUN_FILE, self.url)
        if proj is None and self.project_setting.isdigit():
            proj = self._get_project(int(self.project_setting), missing_ok=False)
        if proj is None:
            title = self.project_setting or f"{self.run_name or 'alpeft_jax'} ({run['run_key']})"
            title = title[:50]
            found = [p for p in self._call("listing projects", lambda: list(ls.projects.list(title=title)))
                     if p.title == title]
            if len(found) > 1:
                raise LabelFileError(f"Label Studio at {self.url} has {len(found)} projects titled {title!r} "
                                     f"(ids {[p.id for p in found]}); pass --config.label_studio.project=ID.")
            if found:
                proj = self._get_project(int(found[0].id), missing_ok=False)
            else:
                proj = self._call(
                    "creating a project", ls.projects.create, title=title,
                    description=f"Active-learning queries of alpeft_jax run {self.run_name or '?'} "
                                f"(run key {run['run_key']}).",
                    label_config=label_config(self.pool.class_names))
                logging.info("created Label Studio project %d %r at %s", proj.id, title, self.url)
        self._project = {"id": int(proj.id), **self._check_label_config(int(proj.id), proj.label_config or "")}
        if run.get("project") != self._project["id"] or run.get("project_setting") != self.project_setting:
            write_json(self.workdir / RUN_FILE, {**run, "project": self._project["id"],
                                                 "project_setting": self.project_setting, "url": self.url})
        return self._project

    def _get_project(self, pid: int, missing_ok: bool) -> Any:
        proj = self._call(f"reading project {pid}", self.client().projects.get, id=pid, allow_404=True)
        if proj is None and not missing_ok:
            raise LabelFileError(f"Label Studio at {self.url} has no project {pid}; pick one from {self.url}/projects "
                                 "or leave --config.label_studio.project empty to make one for this run.")
        return proj

    def _check_label_config(self, pid: int, config: str) -> dict[str, Any]:
        """The Image and Choices names of a project's labelling config; every class must be a choice."""
        where = f"Label Studio project {pid} ({self.url}/projects/{pid}/settings/labeling)"
        try:
            root = ET.fromstring(config)
        except ET.ParseError as e:
            raise LabelFileError(f"{where}: cannot parse its labelling config ({e}).") from None
        images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
        for el in root.iter("Choices"):
            if el.get("toName") in images and images[el.get("toName")].startswith("$"):
                classes = [c.get("value") or "" for c in el.iter("Choice")]
                absent = [n for n in self.pool.class_names if n not in classes]
                if absent:
                    raise LabelFileError(f"{where}: its choices lack the classes {absent[:10]}"
                                         f"{' ...' if len(absent) > 10 else ''}; add a <Choice value=.../> for each, "
                                         "or leave --config.label_studio.project empty to make a project.")
                return {"image": el.get("toName"), "choices": el.get("name"),
                        "key": images[el.get("toName")][1:], "classes": classes}
        raise LabelFileError(f"{where}: its labelling config needs an <Image value=\"$...\"/> and a <Choices> "
                             "for it with one <Choice> per class.")

    # -- tasks -----------------------------------------------------------------------------------------
    def _run_tasks(self, round_index: int) -> dict[int, list[dict[str, Any]]]:
        """This run's tasks of a round in the project, by example id (several if an example was imported twice)."""
        ls, pid, key = self.client(), self.project()["id"], self.run_key
        query = json.dumps({"filters": {"conjunction": "and", "items": [  # only this run's round, not the project
            {"filter": "filter:tasks:data.alpeft_run", "operator": "equal", "type": "String", "value": key},
            {"filter": "filter:tasks:data.alpeft_round", "operator": "equal", "type": "Number", "value": round_index},
        ]}})

        def fetch() -> list[Any]:
            return list(ls.tasks.list(project=pid, page_size=PAGE_SIZE, fields="all", query=query))

        out: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for task in self._call(f"listing the tasks of project {pid}", fetch):
            t = _plain(task)
            data = t.get("data") or {}
            if data.get("alpeft_run") == key and data.get("alpeft_id") is not None:
                out[int(data["alpeft_id"])].append(t)
        return out

    def _image(self, row: int, ident: int) -> str:
        ex = self.pool.example(row)
        path = ex.get("path")
        if self.images == "url" and path:
            return self.image_url_prefix + str(path).lstrip("/")
        if self.images == "local":
            return "/data/local-files/?d=" + urllib.parse.quote(self._local_file(ex, ident))
        img = Image.fromarray(np.asarray(ex["image"], np.uint8))
        img.thumbnail((self.thumbnail, self.thumbnail))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def _local_file(self, ex: dict[str, Any], ident: int) -> str:
        """The image's path relative to `local_root`, writing a PNG there for images without a file."""
        path = ex.get("path")
        if not path:
            path = os.path.join(self.local_root, "alpeft_jax", self.run_key, f"{ident}.png")
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(np.asarray(ex["image"], np.uint8)).save(path + ".tmp.png")
                os.replace(path + ".tmp.png", path)
        path = os.path.abspath(str(path))
        rel = os.path.relpath(path, self.local_root)
        if rel.startswith("..") or os.path.dirname(rel) in ("", "."):
            raise LabelFileError(
                f"image {path} is not in a folder under label_studio.local_root={self.local_root}; start Label "
                "Studio with LOCAL_FILES_DOCUMENT_ROOT (and local_root) set to a parent of the data's folder, or "
                "use --config.label_studio.images=inline."
            )
        return rel

    def _ensure_storage(self, rels: list[str]) -> None:
        """Register local storages of the project over the images' folders, unless existing ones cover them.

        One storage per top-level folder under `local_root` (a storage may not be the root itself), over the
        common folder of that folder's images.
        """
        pid, ls = self.project()["id"], self.client()
        storages = self._call("listing local storages", ls.import_storage.local.list, project=pid)
        have = [os.path.normpath(_plain(st).get("path") or "") for st in storages]
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for rel in rels:
            groups[rel.split(os.sep, 1)[0]].append(os.path.join(self.local_root, os.path.dirname(rel)))
        for dirs in groups.values():
            if all(any(d == h or d.startswith(h + os.sep) for h in have if h) for d in dirs):
                continue
            common = os.path.commonpath(dirs)
            self._call(f"registering a local storage of {common}", ls.import_storage.local.create, project=pid,
                       path=common, title="alpeft_jax images", use_blob_urls=True)
            have.append(common)

    def _import(self, round_index: int, rows: list[int], ids: list[int], predictions: np.ndarray | None,
                record: dict[str, Any]) -> None:
        """Bulk-import tasks for `ids` (with pre-annotations), recording their task ids batch by batch."""
        proj, ls = self.project(), self.client()
        model_version = f"{self.run_name or 'alpeft_jax'}-round{round_index}"
        tasks = []
        for k, (row, ident) in enumerate(zip(rows, ids)):
            task: dict[str, Any] = {"data": {proj["key"]: self._image(row, ident), "alpeft_id": ident,
                                             "alpeft_round": round_index, "alpeft_run": self.run_key}}
            if predictions is not None:
                top = int(np.argmax(predictions[k]))
                task["predictions"] = [{
                    "model_version": model_version, "score": float(predictions[k][top]),
                    "result": [{"from_name": proj["choices"], "to_name": proj["image"], "type": "choices",
                                "value": {"choices": [self.pool.class_names[top]]}}],
                }]
                record["predicted"][str(ident)] = [top, round(float(predictions[k][top]), 6)]
            tasks.append(task)
        if self.images == "local":
            self._ensure_storage([urllib.parse.unquote(t["data"][proj["key"]].split("?d=", 1)[1]) for t in tasks])
        for start in range(0, len(tasks), IMPORT_BATCH):
            batch = tasks[start:start + IMPORT_BATCH]
            resp = self._call(f"importing {len(batch)} tasks into project {proj['id']}", ls.projects.import_tasks,
                              id=proj["id"], request=batch, return_task_ids=True)
            task_ids = list(getattr(resp, "task_ids", None) or [])
            if len(task_ids) == len(batch):
                record["tasks"].update({str(t["data"]["alpeft_id"]): int(i) for t, i in zip(batch, task_ids)})
                write_json(self._round_file(round_index), record)
        if predictions is not None:  # the annotator starts from this round's predictions
            self._call("selecting the predictions' model version", ls.projects.update, id=proj["id"],
                       model_version=model_version)
        logging.info("round %d: %d tasks imported into Label Studio project %d (%s/projects/%d)", round_index,
                     len(tasks), proj["id"], self.url, proj["id"])

    # -- annotations -----------------------------------------------------------------------------------
    def _decide(self, ident: int, tasks: list[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]], bool]:
        """(label or None, the annotations that count, whether the task was skipped) under the `multiple` rule."""
        proj = self.project()
        votes = []
        skipped = False
        for t in tasks:
            for ann in t.get("annotations") or []:
                ann = _plain(ann)
                if ann.get("was_cancelled"):
                    skipped = True
                    continue
                choices = [c for res in ann.get("result") or [] if res.get("from_name", proj["choices"]) ==
                           proj["choices"] for c in (res.get("value") or {}).get("choices") or []]
                where = (f"Label Studio task {t['id']} (example id {ident}), annotation {ann.get('id')} "
                         f"({self.url}/projects/{proj['id']}/data?task={t['id']})")
                if not choices:
                    skipped = True
                    continue
                if len(choices) > 1:
                    raise LabelFileError(f"{where}: chose {len(choices)} classes {choices}; keep one class.")
                label = self.pool.parse_label(str(choices[0]), where)
                votes.append((str(ann.get("updated_at") or ann.get("created_at") or ""), int(ann.get("id") or 0),
                              label, ann))
        if not votes:
            return None, [], skipped
        votes.sort(key=lambda v: (v[0], v[1]))
        if self.multiple == "latest":
            return votes[-1][2], [votes[-1][3]], False
        counts = collections.Counter(v[2] for v in votes)
        best = max(counts.values())
        winner = next(v[2] for v in reversed(votes) if counts[v[2]] == best)  # ties: the class annotated last
        return winner, [v[3] for v in votes], False

    def _email(self, user: Any) -> str:
        uid = user.get("id") if isinstance(user, dict) else user
        if uid is None:
            return "?"
        uid = int(uid)
        if uid not in self._emails:
            try:
                u = self._call(f"reading user {uid}", self.client().users.get, id=uid)
                self._emails[uid] = str(getattr(u, "email", "") or getattr(u, "username", "") or uid)
            except LabelFileError:
                self._emails[uid] = str(uid)
        return self._emails[uid]

    # -- the interface ---------------------------------------------------------------------------------
    def request(self, round_index: int, rows: np.ndarray, predictions: np.ndarray | None = None) -> np.ndarray:
        """Labels int64[len(rows)] once every task of the round is annotated; imports the tasks on first call."""
        rows = np.asarray(rows, np.int64)
        ids = [int(i) for i in self.pool.ids(rows)]
        if predictions is not None:
            predictions = np.asarray(predictions, np.float32)
            if predictions.shape != (len(rows), len(self.pool.class_names)):
                raise ValueError(f"predictions must be [{len(rows)}, {len(self.pool.class_names)}] class "
                                 f"probabilities, got {predictions.shape}.")
        record = read_json(self._round_file(round_index)) or {}
        if record.get("ids") == ids and record.get("labels") is not None:
            return np.asarray(record["labels"], np.int64)  # read before: never asked again
        if record.get("ids") != ids:
            if record:
                logging.warning("round %d: the selection differs from the recorded one; tasks are matched by "
                                "example id", round_index)
            record = {"ids": ids, "tasks": {}, "predicted": {}}
        deadline = None if self.wait_seconds < 0 else time.time() + self.wait_seconds
        bar, last_note, last_done = None, 0.0, -1
        try:
            while True:
                labels, counted, skipped = self._poll(round_index, rows, ids, predictions, record)
                done = int((labels >= 0).sum())
                if done == len(ids):
                    record["labels"] = labels.tolist()
                    record["info"] = self._facts(ids, labels, counted, record)
                    write_json(self._round_file(round_index), record)
                    return labels
                pid = self.project()["id"]
                where = f"{self.url}/projects/{pid}/data"
                waiting = deadline is None or time.time() + self.poll_seconds <= deadline
                if not waiting or (skipped and len(skipped) + done == len(ids)):
                    note = (f"; {len(skipped)} skipped (example ids {skipped[:10]}): open them and choose a class, "
                            "every selected example needs a label" if skipped else "")
                    raise PendingLabels(
                        f"round {round_index}: {done} of {len(ids)} Label Studio tasks annotated in project {pid} "
                        f"({where}){note}; label the rest and rerun the same command."
                    )
                if bar is None:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=len(ids), desc=f"round {round_index}: annotated in Label Studio", unit="task",
                               mininterval=2.0, dynamic_ncols=True, leave=False)
                bar.n = done
                bar.refresh()
                if time.time() - last_note >= 60.0 or done != last_done:
                    left = "" if deadline is None else f" up to {deadline - time.time():.0f}s more"
                    logging.info("round %d: %d/%d tasks annotated in Label Studio (%s); waiting%s", round_index,
                                 done, len(ids), where, left)
                    last_note, last_done = time.time(), done
                time.sleep(self.poll_seconds)
        finally:
            if bar is not None:
                bar.close()

    def _poll(self, round_index: int, rows: np.ndarray, ids: list[int], predictions: np.ndarray | None,
              record: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]], list[int]]:
        """One look at the round's tasks (importing those not there): labels (-1: none yet), the annotations
        that decided them, and the example ids of skipped tasks."""
        found = self._run_tasks(round_index)
        todo = [k for k, i in enumerate(ids) if i not in found]
        if todo:
            gone = [ids[k] for k in todo if str(ids[k]) in record["tasks"]]
            if gone:
                logging.warning("round %d: the tasks of example ids %s were deleted in Label Studio; importing "
                                "them again", round_index, gone[:10])
            self._import(round_index, [int(rows[k]) for k in todo], [ids[k] for k in todo],
                         None if predictions is None else predictions[todo], record)
            found = self._run_tasks(round_index)
        tasks = {str(i): int(found[i][0]["id"]) for i in ids if i in found}
        if tasks != record["tasks"]:
            record["tasks"] = tasks
            write_json(self._round_file(round_index), record)
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

    def _facts(self, ids: list[int], labels: np.ndarray, counted: list[dict[str, Any]],
               record: dict[str, Any]) -> dict[str, Any]:
        """The round's labelling facts for results.jsonl."""
        lead = [float(a["lead_time"]) for a in counted if a.get("lead_time") is not None]
        predicted = record.get("predicted", {})
        sent = [i for i in ids if str(i) in predicted]
        accepted = sum(int(predicted[str(i)][0]) == int(lab) for i, lab in zip(ids, labels) if str(i) in predicted)
        return {
            "project": self.project()["id"], "url": self.url, "tasks": len(ids),
            "annotators": sorted({self._email(a.get("completed_by")) for a in counted}),
            "annotations": len(counted),
            "lead_time_total_s": round(sum(lead), 3),
            "lead_time_mean_s": round(sum(lead) / len(lead), 3) if lead else None,
            "predictions_sent": len(sent), "predictions_accepted": int(accepted),
        }

    def info(self, round_index: int) -> dict[str, Any]:
        """The round's labelling facts: project, annotators, lead times, accepted pre-annotations ({} if unread)."""
        record = read_json(self._round_file(round_index)) or {}
        return dict(record.get("info") or {})


def _plain(obj: Any) -> dict[str, Any]:
    """An SDK model (or a dict) as a plain dict."""
    if isinstance(obj, dict):
        return obj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(obj, "model_dump"):
            return obj.model_dump()
        return obj.dict()
