"""Batch pipelines: fixed shapes, padding masks, ids, shuffling, augmentation seeds and resumption."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from alpeft_jax.data import as_arrays, epoch_order, eval_batches, get_source, train_batches
from alpeft_jax.data.sources import ArraySource

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(23, 20, 26, 3), dtype=np.uint8)
    labels = rng.integers(-1, 4, size=23)
    ids = np.arange(23) * 7 + 100  # ids differ from positions
    return ArraySource(imgs, labels, ["a", "b", "c", "d"], ids=ids)


def _pil_eval(arr, size):
    """Independent reference: shorter side -> size (bicubic), centre crop, normalise."""
    img = Image.fromarray(arr)
    w, h = img.size
    new = (size, int(h * size / w)) if w <= h else (int(w * size / h), size)
    img = img.resize(new, Image.BICUBIC)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float64) / 255
    return (x - MEAN) / STD


def _collect(batches):
    return [{k: v.copy() for k, v in b.items()} for b in batches]


def test_eval_batches_shapes_padding_ids(pool):
    idx = [3, 0, 22, 5, 9, 10, 11]
    bs = _collect(eval_batches(pool, idx, 3, 16, MEAN, STD, num_threads=2))
    assert len(bs) == 3
    for b in bs:
        assert b["image"].shape == (3, 16, 16, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["_id"].dtype == np.int32 and b["_mask"].dtype == np.bool_
    ids = np.concatenate([b["_id"] for b in bs])
    mask = np.concatenate([b["_mask"] for b in bs])
    np.testing.assert_array_equal(ids, list(pool.ids[idx]) + [-1, -1])
    np.testing.assert_array_equal(mask, [True] * 7 + [False] * 2)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in bs])[:7], pool.labels[idx])
    assert (bs[-1]["image"][1:] == 0).all() and (bs[-1]["label"][1:] == -1).all()
    for k, i in enumerate(idx):
        img = bs[k // 3]["image"][k % 3]
        assert np.abs(img - _pil_eval(pool.images[i], 16)).max() < 1e-5


def test_eval_resumption(pool):
    full = _collect(eval_batches(pool, None, 4, 8, MEAN, STD))
    assert len(full) == 6
    tail = _collect(eval_batches(pool, None, 4, 8, MEAN, STD, start=8))
    assert len(tail) == 4
    for a, b in zip(full[2:], tail, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    by_id = _collect(eval_batches(pool, None, 4, 8, MEAN, STD, start_id=int(pool.ids[8])))
    for a, b in zip(tail, by_id, strict=True):
        np.testing.assert_array_equal(a["_id"], b["_id"])
    assert len(list(eval_batches(pool, None, 4, 8, MEAN, STD, start=23))) == 0
    with pytest.raises(ValueError, match="start_id"):
        eval_batches(pool, [0, 1], 4, 8, MEAN, STD, start_id=999)


def test_train_batches_shuffle_determinism_and_resume(pool):
    idx = np.arange(0, 23, 2)  # 12 examples
    kw = dict(seed=5, epoch=0, num_threads=2)
    e0 = _collect(train_batches(pool, idx, 5, 12, MEAN, STD, **kw))
    again = _collect(train_batches(pool, idx, 5, 12, MEAN, STD, **kw))
    assert len(e0) == 3
    for a, b in zip(e0, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    ids0 = np.concatenate([b["_id"] for b in e0])
    assert sorted(ids0[ids0 >= 0]) == sorted(pool.ids[idx]) and (ids0 == -1).sum() == 3
    np.testing.assert_array_equal(ids0[:12], pool.ids[epoch_order(idx, 5, 0)])
    e1 = np.concatenate([b["_id"] for b in train_batches(pool, idx, 5, 12, MEAN, STD, seed=5, epoch=1)])
    assert not np.array_equal(ids0, e1)
    resumed = _collect(train_batches(pool, idx, 5, 12, MEAN, STD, start_batch=1, **kw))
    for a, b in zip(e0[1:], resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    dropped = list(train_batches(pool, idx, 5, 12, MEAN, STD, drop_remainder=True, **kw))
    assert len(dropped) == 2 and all(b["_mask"].all() for b in dropped)


def test_augmentation_depends_on_example_not_on_batch_position(pool):
    idx = np.arange(10)
    a = _collect(train_batches(pool, idx, 4, 12, MEAN, STD, seed=1, epoch=2))
    b = _collect(train_batches(pool, idx, 3, 12, MEAN, STD, seed=1, epoch=2, num_threads=1))
    views_a = {int(i): x for bt in a for i, x in zip(bt["_id"], bt["image"], strict=True) if i >= 0}
    views_b = {int(i): x for bt in b for i, x in zip(bt["_id"], bt["image"], strict=True) if i >= 0}
    assert views_a.keys() == views_b.keys()
    for i in views_a:
        np.testing.assert_array_equal(views_a[i], views_b[i])
    # augmented views differ from the evaluation view; augment=False gives the evaluation view
    ev = {
        int(i): x
        for bt in eval_batches(pool, idx, 4, 12, MEAN, STD)
        for i, x in zip(bt["_id"], bt["image"], strict=True)
    }
    assert sum(not np.allclose(views_a[i], ev[i]) for i in views_a) >= 8
    na = _collect(train_batches(pool, idx, 4, 12, MEAN, STD, seed=1, epoch=2, augment=False))
    for bt in na:
        for i, x in zip(bt["_id"], bt["image"], strict=True):
            if i >= 0:
                np.testing.assert_array_equal(x, ev[int(i)])


def test_as_arrays_and_backbone_spec(pool):
    out = as_arrays(pool, [4, 2], 10)
    assert out["image"].shape == (2, 10, 10, 3) and out["image"].dtype == np.uint8
    np.testing.assert_array_equal(out["id"], pool.ids[[4, 2]])
    np.testing.assert_array_equal(out["label"], pool.labels[[4, 2]])
    normed = as_arrays(pool, [4], 10, MEAN, STD)["image"][0]
    assert np.abs(normed - _pil_eval(pool.images[4], 10)).max() < 1e-5
    bb = SimpleNamespace(image_size=10, mean=MEAN, std=STD)
    b = next(iter(eval_batches(pool, [4], 2, bb)))
    np.testing.assert_array_equal(b["image"][0], normed)


def test_pipeline_on_mock_tfds_with_random_image_sizes():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        src = get_source("dtd", "train")
        shapes = {src[i]["image"].shape for i in range(len(src))}
        bs = list(eval_batches(src, None, 4, 24, MEAN, STD))
        tb = list(train_batches(src, None, 4, 24, MEAN, STD, seed=0, epoch=0))
    assert len(shapes) > 1  # mock images really have different sizes
    assert [b["image"].shape for b in bs + tb] == [(4, 24, 24, 3)] * 4
    np.testing.assert_array_equal(np.concatenate([b["_id"] for b in bs]), [0, 1, 2, 3, 4, 5, -1, -1])
