"""backbones.load: hub ids through the Hugging Face cache; the one-line error when neither has it."""

import shutil

import numpy as np
import pytest
import torch

from alpeft_jax import backbones


def _fake_hub_cache(cache, repo_id, src_dir):
    """Lay out `src_dir` as huggingface_hub's cache does: models--org--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / rev
    shutil.copytree(src_dir, snap)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, monkeypatch, tiny_clip_factory):
    ref, directory = tiny_clip_factory(seed=3)
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someorg/tiny-clip", directory)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = backbones.load("someorg/tiny-clip")
    images = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    want = getattr(out, "pooler_output", out).numpy()
    np.testing.assert_allclose(np.asarray(bb.encode_image(images)), want, atol=1e-4)


def test_unknown_hub_id_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(backbones.CheckpointError, match=r"huggingface-cli download facebook/dinov2-base") as e:
        backbones.load("facebook/dinov2-base")
    assert "\n" not in str(e.value)


def test_paths_that_are_not_hub_ids_fail_fast(tmp_path):
    with pytest.raises(backbones.CheckpointError, match="no such file or directory"):
        backbones.load(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(backbones.CheckpointError, match="Don't know how to load"):
        backbones.load(str(tmp_path / "notes.txt"))
