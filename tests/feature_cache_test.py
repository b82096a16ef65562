"""The frozen-prefix caches are keyed on their content: images rewritten in place behind the same CSV path, other
weights or another preprocessing give a new cache, and a run over changed images equals one with a fresh cache."""

import json
import os

import numpy as np
import pytest
from _tiny_config import tiny_config
from PIL import Image
from sklearn.datasets import load_digits

from alpeft_jax import backbones, data, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


_tiny = tiny_config


def _write_digits(root, order, n_train=60, n_test=30):
    """train.csv / test.csv over PNGs 0..n-1; file i holds digit image order[i], labelled with that digit."""
    d = load_digits()
    root.mkdir(exist_ok=True)
    for split, idx in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        lines = ["path,label"]
        for i in idx:
            j = int(order[i])
            Image.fromarray((d.images[j] * 16).clip(0, 255).astype(np.uint8)).save(root / f"{i}.png")
            lines.append(f"{i}.png,{WORDS[d.target[j]]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def _pool_caches(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith("pool_") and f.endswith(".npy"))


def _results(wd):
    with open(os.path.join(wd, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_source_fingerprints_follow_the_content(tmp_path):
    _write_digits(tmp_path / "d", np.arange(90))
    src = data.get_source("csv", "train", str(tmp_path / "d"))
    same = data.get_source("csv", "train", str(tmp_path / "d"))
    assert src.fingerprint() == same.fingerprint()
    half = data.get_source("csv", "train[:50%]", str(tmp_path / "d"))  # a slice: its own rows
    assert half.fingerprint() != src.fingerprint()
    os.utime(tmp_path / "d" / "3.png", ns=(1, 1))  # the same bytes, another modification time
    assert data.get_source("csv", "train", str(tmp_path / "d")).fingerprint() != src.fingerprint()
    images = np.zeros((4, 5, 5), np.uint8)
    a = data.ArraySource(images, None, ["a", "b"])
    images2 = images.copy()
    images2[2, 1, 1] = 1  # one pixel
    assert a.fingerprint() == data.ArraySource(images.copy(), None, ["a", "b"]).fingerprint()
    assert a.fingerprint() != data.ArraySource(images2, None, ["a", "b"]).fingerprint()


def test_weights_fingerprint_tells_weights_and_dtypes_apart():
    import jax.numpy as jnp

    params = {"a": {"w": jnp.arange(1000, dtype=jnp.float32).reshape(10, 100)}, "b": jnp.ones(3)}
    fp = backbones.weights_fingerprint(params)
    assert fp == backbones.weights_fingerprint({"a": {"w": params["a"]["w"] + 0}, "b": jnp.ones(3)})
    assert fp != backbones.weights_fingerprint({**params, "b": jnp.ones(3) * 2})
    assert fp != backbones.weights_fingerprint({**params, "b": jnp.ones(3, jnp.bfloat16)})


@pytest.mark.slow  # three runs' caches and two rounds of training: about two minutes on 2 cores
def test_images_rewritten_in_place_get_a_new_cache_and_the_right_results(tmp_path):
    cache = tmp_path / "cache"  # one cache folder shared by every run, as configs/demo.py does

    def cfg(cache_dir):
        c = _tiny(f"rounds=1,epochs=2,cache={cache_dir}")
        c.data.name, c.data.dir = "csv", str(tmp_path / "d")
        c.data.max_pool, c.data.max_test = 0, 0
        return c

    _write_digits(tmp_path / "d", np.arange(90))
    first = loop.Run(cfg(cache), tmp_path / "a")
    old = np.array(first.inputs.get("pool").cache.array)
    assert len(_pool_caches(cache)) == 1
    # The same CSV path, other images behind it (the digits shuffled: labels and pixels both change).
    _write_digits(tmp_path / "d", np.random.default_rng(0).permutation(90))
    second = loop.Run(cfg(cache), tmp_path / "b")
    new = np.array(second.inputs.get("pool").cache.array)
    assert len(_pool_caches(cache)) == 2  # a new cache, the old one kept for its own content
    fresh_dir = tmp_path / "fresh"
    fresh = loop.Run(cfg(fresh_dir), tmp_path / "c")  # the reference: nothing cached before
    np.testing.assert_array_equal(new, np.array(fresh.inputs.get("pool").cache.array))
    # The run over the rewritten images equals the one with a fresh cache (accuracy included).
    keys = ("round", "n_labeled", "accuracy", "nll", "ece", "brier", "selected_ids")
    got, expected = second.run(), fresh.run()
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in expected]
    # and not what the stale features would have given: the first images' cache under the new labels
    assert not np.array_equal(old, new)
