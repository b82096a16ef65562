"""A gs:// workdir end to end, resumed, with the bucket mocked onto a local folder.

Every file operation of the project goes through etils.epath, which `epath.testing.mock_epath` redirects here;
Orbax writes arrays through TensorStore, whose GCS driver is pointed at the same folder (its `file` driver), and
asks the bucket for its namespace kind (answered: flat).
Nothing may turn the URL into a local path by itself: such a write lands outside the bucket folder and the test
sees it (the workdir's files must all be in the bucket, none under the current directory).
"""

import contextlib
import json
import os
from unittest import mock

import pytest
from _tiny_config import tiny_config
from etils import epath
from etils.epath import testing as epath_testing

from alpeft_jax import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_tiny = tiny_config


@contextlib.contextmanager
def fake_gcs(root):
    """gs://BUCKET/... lives in root/BUCKET/... for epath and for Orbax's TensorStore."""
    root = str(root)

    def local(p):
        s = os.fspath(p)
        return os.path.join(root, s[len("gs://") :]) if s.startswith("gs://") else s

    def remote(p):
        s = os.fspath(p)
        return "gs://" + s[len(root) + 1 :] if s.startswith(root + os.sep) else s

    def one(orig, path, *a, **k):
        return orig(local(path), *a, **k)

    def two(orig, src, dst, *a, **k):
        return orig(local(src), local(dst), *a, **k)

    def glob(orig, pattern):
        return [remote(p) for p in orig(local(pattern))]

    def walk(orig, top, **k):
        for d, dirs, files in orig(local(top), **k):
            yield remote(d), dirs, files

    from orbax.checkpoint._src.path import gcs_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    def normalize(path):
        return os.path.normpath(local(path))

    fns = {
        name: one for name in ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat")
    }
    with (
        epath_testing.mock_epath(**fns, copy=two, rename=two, replace=two, glob=glob, walk=walk),
        mock.patch.object(ts_utils, "_use_gcs_driver", lambda d: False),
        mock.patch.object(ts_utils, "_normalize_path", normalize),
        mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False),
    ):
        yield


def _comparable(rows):
    keys = ("round", "n_labeled", "accuracy", "nll", "ece", "selected_ids")
    return [{k: r[k] for k in keys} for r in rows]


def test_gs_workdir_runs_and_resumes(tmp_path, monkeypatch):
    bucket = tmp_path / "bucket_root"
    (bucket / "my-bucket").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a URL turned into a relative local path would land here
    url = "gs://my-bucket/runs/tiny"
    local = loop.run(_tiny("rounds=2,epochs=2"), str(tmp_path / "local"))
    with fake_gcs(bucket):
        first = loop.run(_tiny("rounds=1,epochs=2"), url)
        assert len(first) == 1
        resumed = loop.run(_tiny("rounds=2,epochs=2"), url, allow_config_change=True)  # round 1 from ckpt/0
        assert epath.Path(url, "results.jsonl").exists()
        rows = [json.loads(line) for line in epath.Path(url, "results.jsonl").read_text().splitlines()]
    assert _comparable(resumed) == _comparable(rows) == _comparable(local)
    run_dir = bucket / "my-bucket" / "runs" / "tiny"
    names = set(os.listdir(run_dir))
    assert {"al_state.json", "config.json", "results.jsonl", "curves.png", "ckpt", "cache", "tensorboard"} <= names
    assert sorted(os.listdir(run_dir / "ckpt")) == ["0", "1"]
    assert any(n.startswith("events.out") for n in os.listdir(run_dir / "tensorboard"))
    assert os.listdir(cwd) == []  # nothing escaped the bucket


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        loop.run(_tiny("rounds=1,epochs=1"), str(f))
    assert f.read_text() == "x"
