"""Label Studio oracle: each round's selection becomes tasks on a Label Studio server; the run continues when
every task has an annotation.

Setup: a Label Studio project with an image-classification labelling config, e.g.
``<View><Image name="image" value="$image"/><Choices name="label" toName="image">…one <Choice value="NAME"/>
per class…</Choices></View>``. Then run with ``--config.oracle=label_studio`` and ``--config.label_studio.url``,
``.project``, and the token in ``$LABEL_STUDIO_API_KEY`` (never in the config, which is saved in the workdir).

The created task ids are kept in ``DIR/round_<r>/label_studio_tasks.json`` so a rerun polls the same tasks instead
of creating new ones. Images are sent inline (PNG data URLs, shrunk to ``thumbnail`` pixels) unless
``image_url_prefix`` is set, in which case the task points at ``prefix + path`` on your own file server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

from alpeft_jax.checkpoint import read_json, write_json
from alpeft_jax.oracles.base import LabelFileError, PendingLabels, PoolView


class LabelStudioOracle:
    """Labels from annotations on a Label Studio server (REST API, no SDK needed)."""

    def __init__(
        self,
        pool: PoolView,
        workdir: str,
        url: str = "",
        project: int = 0,
        token: str | None = None,
        token_scheme: str = "Token",
        image_url_prefix: str = "",
        thumbnail: int = 256,
        timeout: float = 30.0,
    ) -> None:
        if not url or not project:
            raise ValueError(
                "the Label Studio oracle needs --config.label_studio.url=http://HOST:PORT and "
                "--config.label_studio.project=ID."
            )
        self.pool = pool
        self.workdir = workdir
        self.url = url.rstrip("/")
        self.project = int(project)
        self.token = token if token is not None else os.environ.get("LABEL_STUDIO_API_KEY", "")
        if not self.token:
            raise ValueError("set the Label Studio access token in $LABEL_STUDIO_API_KEY.")
        self.token_scheme = token_scheme
        self.image_url_prefix = image_url_prefix
        self.thumbnail = thumbnail
        self.timeout = timeout

    # -- HTTP ------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"{self.token_scheme} {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise LabelFileError(
                f"Label Studio {method} {path} failed: HTTP {e.code} {e.reason}; check the url, project id and token."
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise LabelFileError(f"cannot reach Label Studio at {self.url}: {e}; is the server running?") from None

    # -- tasks -----------------------------------------------------------------------------------------
    def _image_ref(self, row: int) -> str:
        ex = self.pool.example(row)
        if self.image_url_prefix and ex.get("path"):
            return self.image_url_prefix + str(ex["path"]).lstrip("/")
        img = Image.fromarray(np.asarray(ex["image"], np.uint8))
        img.thumbnail((self.thumbnail, self.thumbnail))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def _tasks_file(self, round_index: int) -> str:
        return os.path.join(self.workdir, f"round_{round_index}", "label_studio_tasks.json")

    def request(self, round_index: int, rows: np.ndarray) -> np.ndarray:
        """Labels of `rows` once all their tasks are annotated; creates the tasks on first call."""
        rows = np.asarray(rows, np.int64)
        ids = [int(i) for i in self.pool.ids(rows)]
        path = self._tasks_file(round_index)
        record = read_json(path)
        if record is None or record.get("ids") != ids:
            tasks = []
            for row, ident in zip(rows, ids):
                data = {"image": self._image_ref(int(row)), "alpeft_id": ident}
                task = self._call("POST", "/api/tasks", {"project": self.project, "data": data})
                tasks.append(int(task["id"]))
            record = {"ids": ids, "tasks": tasks, "project": self.project}
            write_json(path, record)
        labels = np.full(len(rows), -1, np.int64)
        waiting = 0
        for k, (ident, task_id) in enumerate(zip(ids, record["tasks"])):
            task = self._call("GET", f"/api/tasks/{task_id}")
            choice = _first_choice(task)
            if choice is None:
                waiting += 1
                continue
            labels[k] = self.pool.parse_label(choice, f"Label Studio task {task_id} (id {ident})")
        if waiting:
            raise PendingLabels(
                f"round {round_index}: {waiting} of {len(ids)} Label Studio tasks in project {self.project} "
                f"are not annotated yet ({self.url}/projects/{self.project}); rerun the same command when done."
            )
        return labels


def _first_choice(task: dict[str, Any]) -> str | None:
    """The class chosen in a task's latest non-cancelled annotation, if any."""
    for ann in reversed(task.get("annotations") or []):
        if ann.get("was_cancelled"):
            continue
        for res in ann.get("result") or []:
            choices = (res.get("value") or {}).get("choices")
            if choices:
                return str(choices[0])
    return None
