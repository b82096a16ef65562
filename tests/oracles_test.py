"""Oracles: simulated labels, the CSV file round-trip, and Label Studio against a local fake of its REST API."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from alpeft_jax import oracles
from alpeft_jax.data import ArraySource

NAMES = ["cat", "dog", "bird"]


def _pool(labels=(0, 1, 2, 1, 0, 2)):
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)
    src = ArraySource(images, np.asarray(labels), NAMES, ids=np.arange(100, 100 + len(labels)))
    return oracles.PoolView(src, np.arange(len(labels)), NAMES)


def test_simulated_reveals_dataset_labels_and_refuses_unlabelled():
    assert oracles.SimulatedOracle(_pool()).request(0, np.array([2, 0])).tolist() == [2, 0]
    with pytest.raises(oracles.LabelFileError, match="oracle=file"):
        oracles.SimulatedOracle(_pool((0, -1, 2))).request(0, np.array([1]))


def test_file_oracle_writes_request_with_thumbnails_and_reads_names_or_indices(tmp_path):
    o = oracles.FileOracle(_pool(), str(tmp_path))
    with pytest.raises(oracles.PendingLabels, match="to_label.csv"):
        o.request(3, np.array([4, 1]))
    text = (tmp_path / "round_3" / "to_label.csv").read_text().splitlines()
    assert text[0] == "id,path,label" and [line.split(",")[0] for line in text[1:]] == ["104", "101"]
    assert os.path.exists(text[1].split(",")[1])
    (tmp_path / "round_3" / "labels.csv").write_text("id,label\n101,DOG\n104,0\n")
    assert o.request(3, np.array([4, 1])).tolist() == [0, 1]


class _FakeLabelStudio(BaseHTTPRequestHandler):
    tasks: dict = {}
    token = "secret"

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        if self.headers.get("Authorization") != f"Token {self.token}":
            return self._send(401, {"detail": "bad token"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tid = 1000 + len(self.tasks)
        self.tasks[tid] = {"id": tid, "data": body["data"], "project": body["project"], "annotations": []}
        self._send(201, self.tasks[tid])

    def do_GET(self):  # noqa: N802
        tid = int(self.path.rsplit("/", 1)[1])
        self._send(200, self.tasks[tid]) if tid in self.tasks else self._send(404, {})

    def log_message(self, *args):
        pass


def test_label_studio_creates_tasks_once_then_reads_annotations(tmp_path):
    _FakeLabelStudio.tasks = {}
    server = HTTPServer(("127.0.0.1", 0), _FakeLabelStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        o = oracles.LabelStudioOracle(_pool(), str(tmp_path), url=url, project=7, token="secret")
        rows = np.array([5, 3])
        with pytest.raises(oracles.PendingLabels, match="2 of 2"):
            o.request(0, rows)
        assert len(_FakeLabelStudio.tasks) == 2
        t1, t2 = sorted(_FakeLabelStudio.tasks)
        assert _FakeLabelStudio.tasks[t1]["data"]["alpeft_id"] == 105
        assert _FakeLabelStudio.tasks[t1]["data"]["image"].startswith("data:image/png;base64,")
        _FakeLabelStudio.tasks[t1]["annotations"] = [{"result": [{"value": {"choices": ["bird"]}}]}]
        with pytest.raises(oracles.PendingLabels, match="1 of 2"):
            o.request(0, rows)
        _FakeLabelStudio.tasks[t2]["annotations"] = [
            {"was_cancelled": True, "result": [{"value": {"choices": ["cat"]}}]},
            {"result": [{"value": {"choices": ["dog"]}}]},
        ]
        again = oracles.LabelStudioOracle(_pool(), str(tmp_path), url=url, project=7, token="secret")
        assert again.request(0, rows).tolist() == [2, 1]
        assert len(_FakeLabelStudio.tasks) == 2  # a rerun polls the same tasks
        _FakeLabelStudio.tasks[t2]["annotations"] = [{"result": [{"value": {"choices": ["fish"]}}]}]
        with pytest.raises(oracles.LabelFileError, match="unknown class 'fish'"):
            again.request(0, rows)
        bad = oracles.LabelStudioOracle(_pool(), str(tmp_path / "b"), url=url, project=7, token="wrong")
        with pytest.raises(oracles.LabelFileError, match="HTTP 401"):
            bad.request(0, rows)
    finally:
        server.shutdown()
        server.server_close()
    gone = oracles.LabelStudioOracle(_pool(), str(tmp_path / "c"), url=url, project=7, token="secret", timeout=2)
    with pytest.raises(oracles.LabelFileError, match="cannot reach"):
        gone.request(0, rows)
    with pytest.raises(ValueError, match="label_studio.url"):
        oracles.LabelStudioOracle(_pool(), str(tmp_path), url="", project=0, token="x")
