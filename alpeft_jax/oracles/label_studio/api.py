"""The Label Studio server through `label-studio-sdk`: every call the oracle makes, and its failures as one line.

Answers come back as plain dicts (tasks with their annotations as dicts), the shapes `rules` works on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

from alpeft_jax.oracles.base import LabelFileError

IMPORT_BATCH = 100  # tasks per bulk import (each batch's task ids are recorded before the next)
PAGE_SIZE = 500  # tasks per page when listing a project


def plain(obj: Any) -> dict[str, Any]:
    """An SDK model (or a dict) as a plain dict."""
    if isinstance(obj, dict):
        return obj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(obj, "model_dump"):
            return obj.model_dump()
        return obj.dict()


class Server:
    """One Label Studio server at `url`, with the token given or read from $`token_env` on first use."""

    def __init__(
        self, url: str, token_env: str, token: str | None = None, timeout: float = 60.0, client: Any = None
    ) -> None:
        self.url = url
        self.token_env = token_env
        self.token = token
        self.timeout = timeout
        self._client = client
        self._users: dict[int, str] = {}

    def call(self, what: str, fn: Callable[..., Any], *args: Any, allow_404: bool = False, **kwargs: Any) -> Any:
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
                raise LabelFileError(
                    "the Label Studio oracle needs the label-studio-sdk package: pip install 'alpeft_jax[label]'."
                ) from None
            token = self.token if self.token is not None else os.environ.get(self.token_env, "")
            if not token:
                raise LabelFileError(
                    f"set ${self.token_env} to a Label Studio personal access token or legacy "
                    "token (Label Studio > Account & Settings)."
                )
            self._client = self.call(
                "reading the token", LabelStudio, base_url=self.url, api_key=token, timeout=self.timeout
            )
        return self._client

    def check(self) -> None:
        """One authenticated request: raises LabelFileError when the token is unset or refused, or the server down."""
        ls = self.client()
        self.call("checking the token", ls.users.whoami)

    # -- projects --------------------------------------------------------------------------------------
    def project(self, pid: int, missing_ok: bool) -> Any:
        """Project `pid` (None if missing_ok and it is not there)."""
        proj = self.call(f"reading project {pid}", self.client().projects.get, id=pid, allow_404=True)
        if proj is None and not missing_ok:
            raise LabelFileError(
                f"Label Studio at {self.url} has no project {pid}; pick one from {self.url}/projects "
                "or leave --config.label_studio.project empty to make one for this run."
            )
        return proj

    def projects_titled(self, title: str) -> list[Any]:
        """The projects with exactly this title."""
        ls = self.client()
        return [
            p for p in self.call("listing projects", lambda: list(ls.projects.list(title=title))) if p.title == title
        ]

    def create_project(self, title: str, description: str, label_config: str) -> Any:
        """A new project."""
        return self.call(
            "creating a project",
            self.client().projects.create,
            title=title,
            description=description,
            label_config=label_config,
        )

    def set_model_version(self, pid: int, model_version: str) -> None:
        """Show annotators the predictions of this model version."""
        self.call(
            "selecting the predictions' model version",
            self.client().projects.update,
            id=pid,
            model_version=model_version,
        )

    # -- tasks -----------------------------------------------------------------------------------------
    def tasks(self, pid: int, query: str) -> list[dict[str, Any]]:
        """Every task of project `pid` that matches `query` (all fields, annotations included), paged."""
        ls = self.client()

        def fetch() -> list[Any]:
            return list(ls.tasks.list(project=pid, page_size=PAGE_SIZE, fields="all", query=query))

        out = []
        for task in self.call(f"listing the tasks of project {pid}", fetch):
            t = dict(plain(task))
            t["annotations"] = [plain(a) for a in t.get("annotations") or []]
            out.append(t)
        return out

    def import_tasks(
        self, pid: int, tasks: list[dict[str, Any]], on_batch: Callable[[list[dict[str, Any]], list[int]], None]
    ) -> None:
        """Bulk-import `tasks`, IMPORT_BATCH at a time, calling on_batch(batch, task ids) after each."""
        ls = self.client()
        for start in range(0, len(tasks), IMPORT_BATCH):
            batch = tasks[start : start + IMPORT_BATCH]
            resp = self.call(
                f"importing {len(batch)} tasks into project {pid}",
                ls.projects.import_tasks,
                id=pid,
                request=batch,
                return_task_ids=True,
            )
            task_ids = [int(i) for i in getattr(resp, "task_ids", None) or []]
            if len(task_ids) == len(batch):
                on_batch(batch, task_ids)

    # -- local storage and users -----------------------------------------------------------------------
    def local_storages(self, pid: int) -> list[str]:
        """The folders of the project's local-files storages."""
        storages = self.call("listing local storages", self.client().import_storage.local.list, project=pid)
        return [plain(st).get("path") or "" for st in storages]

    def add_local_storage(self, pid: int, path: str) -> None:
        """Register a local-files storage of `path` for the project."""
        self.call(
            f"registering a local storage of {path}",
            self.client().import_storage.local.create,
            project=pid,
            path=path,
            title="alpeft_jax images",
            use_blob_urls=True,
        )

    def user(self, user: Any) -> str:
        """An annotator's email (or username, or id) from an annotation's `completed_by` (an id or a dict)."""
        uid = user.get("id") if isinstance(user, dict) else user
        if uid is None:
            return "?"
        uid = int(uid)
        if uid not in self._users:
            try:
                u = self.call(f"reading user {uid}", self.client().users.get, id=uid)
                self._users[uid] = str(getattr(u, "email", "") or getattr(u, "username", "") or uid)
            except LabelFileError:
                self._users[uid] = str(uid)
        return self._users[uid]


# -- pool mode: pages, predictions, task fields and views ---------------------------------------------------------
POOL_PAGE = 500  # pool tasks per import request
PREDICTIONS_PER_REQUEST = 20_000  # predictions per bulk request (Label Studio recounts the project after each)
PICK_WORKERS = 4  # updates of the round's picks in flight at once (Label Studio has no bulk update of task data)
RETRIES = 3  # attempts per request before the error stops the run


def predictions_timeout(n: int, request_timeout: float) -> float:
    """Seconds to wait for a bulk request of `n` predictions (the server recounts every task of the project)."""
    return max(request_timeout, 60.0 + n / 50.0)


def data_filter(items: list[tuple[str, str, str, Any]]) -> dict[str, Any]:
    """A Data Manager filter over task fields: (field, operator, type, value) items, all of which must hold."""
    return {
        "conjunction": "and",
        "items": [
            {"filter": f"filter:tasks:{field}", "operator": op, "type": kind, "value": value}
            for field, op, kind, value in items
        ],
    }


class PoolServer(Server):
    """The calls pool mode adds: one-page imports, bulk predictions, task data updates, saved views."""

    def import_page(self, pid: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Bulk-import one page of tasks; their new task ids, in order."""
        resp = self.call(
            f"importing {len(tasks)} tasks into project {pid}",
            self.client().projects.import_tasks,
            id=pid,
            request=tasks,
            return_task_ids=True,
        )
        return [int(i) for i in getattr(resp, "task_ids", None) or []]

    def task_data(self, pid: int, filters: dict[str, Any], page_size: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """{'id', 'data'} of the tasks matching `filters` (annotations and predictions left out), paged."""
        import json

        ls = self.client()
        query = json.dumps({"filters": filters})

        def fetch() -> list[dict[str, Any]]:
            pages = ls.tasks.list(project=pid, page_size=page_size, fields="task_only", query=query, resolve_uri=False)
            return [{"id": int(t.id), "data": dict(t.data or {})} for t in pages]

        return list(self.call(f"listing tasks of project {pid}", fetch))

    def annotated(self, pid: int, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Every task matching `filters` with its annotations (all fields), paged."""
        import json

        return self.tasks(pid, json.dumps({"filters": filters}))

    def import_predictions(self, pid: int, predictions: list[dict[str, Any]], timeout: float) -> int:
        """Bulk-create predictions ({'task', 'model_version', 'score', 'result'}) in one request; how many were made."""
        resp = self.call(
            f"importing {len(predictions)} predictions into project {pid}",
            self.client().projects.import_predictions,
            id=pid,
            request=predictions,
            request_options={"timeout_in_seconds": int(timeout + 0.999)},
        )
        return int(getattr(resp, "created", 0) or 0)

    def task_ids(self, pid: int, filters: dict[str, Any]) -> list[int]:
        """The ids of the tasks matching `filters` (nothing else is sent back)."""
        import json

        ls = self.client()
        query = json.dumps({"filters": filters})

        def fetch() -> list[int]:
            pages = ls.tasks.list(
                project=pid, page_size=10 * PAGE_SIZE, fields="task_only", include="id", query=query, resolve_uri=False
            )
            return [int(t.id) for t in pages]

        return list(self.call(f"listing the task ids of project {pid}", fetch))

    def has_prediction(self, task_id: int, model_version: str) -> bool:
        """Whether task `task_id` holds a prediction of `model_version`."""
        ls = self.client()
        found = self.call(f"listing the predictions of task {task_id}", lambda: list(ls.predictions.list(task=task_id)))
        return any(plain(p).get("model_version") == model_version for p in found)

    def set_task_data(self, task_id: int, data: dict[str, Any]) -> bool:
        """Replace a task's data; False if the task is gone."""
        done = self.call(
            f"updating task {task_id}", self.client().tasks.update, id=str(task_id), data=data, allow_404=True
        )
        return done is not None

    def views(self, pid: int) -> list[dict[str, Any]]:
        """The project's saved Data Manager views (tabs): {'id', 'data': {'title', ...}}."""
        ls = self.client()
        found = self.call(f"listing the views of project {pid}", lambda: list(ls.views.list(project=pid)))
        return [plain(v) for v in found]

    def save_view(
        self, pid: int, title: str, filters: dict[str, Any], ordering: list[str], hidden: tuple[str, ...] = ()
    ) -> int:
        """Create (or update, when one has this title) a saved Data Manager view, `hidden` columns hidden; its id."""
        data: dict[str, Any] = {"title": title, "filters": filters, "ordering": ordering}
        if hidden:
            data["hiddenColumns"] = {"explore": list(hidden), "labeling": list(hidden)}
        for v in self.views(pid):
            if (v.get("data") or {}).get("title") == title:
                update = self.client().views.update
                self.call(f"updating view {title!r}", update, id=str(v["id"]), data=data, project=pid)
                return int(v["id"])
        view = self.call(f"saving view {title!r}", self.client().views.create, data=data, project=pid)
        return int(plain(view)["id"])
