"""Pool scoring and the frozen-prefix cache on a tiny random DINOv2 with LoRA (non-zero B) and a linear head.

References are independent of the scorer: the model applied to the whole pool in one call, the backbone's own
`encode_image` / `image_blocks(image_stem(.))`, a NumPy MLP for the loss-prediction head, and the same run on
8 simulated CPU devices in a subprocess (`_multidevice_worker.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import _multidevice_worker as w  # noqa: E402

from alpeft_jax import backbones, scoring  # noqa: E402
from alpeft_jax.scoring import FeatureCache, PoolScorer, Sharder, make_mesh  # noqa: E402

N = w.N_POOL
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    return w.make_checkpoint(str(tmp_path_factory.mktemp("dinov2") / "ckpt"))


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory):
    """(1-device arrays, 8-device arrays, 1-device state); the 8-device run goes on in a subprocess meanwhile."""
    out = str(tmp_path_factory.mktemp("md") / "eight.npz")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_multidevice_worker.py"), ckpt, out],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state: dict = {}
    one = w.run_all(ckpt, jax.devices()[:1], state)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    with np.load(out) as f:
        eight = dict(f)
    return one, eight, state


def _logits_np(model, trainable, images, kind="images"):
    """The model on the whole pool in one call (no chunks, no sharding)."""
    logits, aux = jax.jit(lambda t, x: model.logits(t, x, kind))(trainable, jnp.asarray(images))
    return np.asarray(logits), np.asarray(aux["features"])


# -- multi-device ------------------------------------------------------------------------------------
def test_eight_devices_match_one_device(runs):
    one, eight, _ = runs
    diffs = {k: float(np.abs(eight[k] - v).max()) for k, v in one.items() if v.dtype.kind == "f"}
    print("max |8 devices - 1 device|:", diffs)
    assert sorted(one) == sorted(eight)
    for k, v in one.items():
        assert eight[k].shape == v.shape and eight[k].dtype == v.dtype, k
        if "/select/" in k or k.endswith("/labels"):
            np.testing.assert_array_equal(eight[k], v, err_msg=k)
        else:
            # 8 rows per device instead of 64 changes the float32 GEMM summation order: a few ulps of values
            # up to ~5 (measured max 2.4e-6); a lost, duplicated or misplaced row would differ by O(1)
            np.testing.assert_allclose(eight[k], v, rtol=0, atol=5e-6, err_msg=k)
    assert one["images/mc_logits"].shape == (w.MC, N, len(w.CLASSES))
    assert one["hidden/cache"].shape == (N, 17, 24) and one["features/cache"].shape == (N, 24)


def test_pool_matches_the_model_on_the_whole_pool(runs):
    one, _, state = runs
    for kind in ("images", "hidden", "features"):
        model, trainable, _, _ = state[kind]
        logits, feats = _logits_np(model, trainable, state["pool"])  # from images, whatever the cache
        np.testing.assert_allclose(one[f"{kind}/logits"], logits, atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(one[f"{kind}/features"], feats, atol=1e-5, err_msg=kind)
    # LoRA really adapts: the same tree without the LoRA update gives other logits
    model, trainable, _, _ = state["images"]
    plain = _logits_np(model, {"head": trainable["head"]}, state["pool"][:8])[0]
    assert np.abs(plain - one["images/logits"][:8]).max() > 1e-2


def test_loss_prediction_head_matches_numpy(runs):
    one, _, state = runs
    p = state["images"][1]["loss_pred"]
    h = np.maximum(one["images/logits"] @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"]), 0)
    ref = (h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"]))[:, 0]
    np.testing.assert_allclose(one["images/loss_pred"], ref, atol=1e-5)
    assert "loss_pred" not in state["hidden"][1] and "hidden/loss_pred" not in one


# -- the frozen-prefix cache -----------------------------------------------------------------------------
def test_features_cache_is_encode_image(runs):
    one, _, state = runs
    ref = np.asarray(state["bb"].encode_image(state["pool"]))
    np.testing.assert_allclose(one["features/cache"], ref, atol=1e-5)
    assert state["features"][3].kind == "features"


def test_hidden_cache_is_the_blocks_below_the_first_adapted_one(runs):
    one, _, state = runs
    bb, images = state["bb"], state["pool"]
    model, trainable, _, cache = state["hidden"]
    assert (model.input_kind, model.cache_block, cache.kind) == ("hidden", 1, "hidden")
    ref = bb.model.apply(
        {"params": bb.params}, jnp.asarray(images[:40]), method=lambda m, x: m.image_blocks(m.image_stem(x), 0, 1)
    )
    np.testing.assert_allclose(one["hidden/cache"][:40], np.asarray(ref), atol=1e-5)
    # the point of the cache: adapted logits from the cached hidden state equal those from the images
    from_cache = model.logits(trainable, jnp.asarray(cache.array[:40]), kind="hidden")[0]
    from_images = model.logits(trainable, jnp.asarray(images[:40]), kind="images")[0]
    np.testing.assert_allclose(np.asarray(from_cache), np.asarray(from_images), atol=1e-5)


def test_cache_on_disk_is_atomic_reused_and_chunked(ckpt, runs, tmp_path, monkeypatch):
    one, _, state = runs
    model = state["features"][0]
    path = str(tmp_path / "sub" / "pool.npy")
    calls, shapes = [], []
    real = scoring._prefix_with_params

    def counting(m, p, x):
        shapes.append(x.shape)
        return real(m, p, x)

    real_jit = jax.jit

    def jit_counting(fn):  # counts calls of the compiled prefix
        jitted = real_jit(fn)

        def call(*a):
            calls.append(1)
            return jitted(*a)

        return call

    monkeypatch.setattr(scoring, "_prefix_with_params", counting)
    monkeypatch.setattr(scoring.jax, "jit", jit_counting)
    seen = []

    def progress(done, total):
        seen.append(done)
        assert not os.path.exists(path), "the cache file appeared before it was complete"

    share = np.arange(N)
    cache = FeatureCache.build(
        model,
        w.image_batches(state["pool"], share, 100),
        N,
        path=path,
        memory_budget_bytes=1,
        progress=progress,
        chunk_size=64,
        sharder=state["sharder"],
    )
    monkeypatch.undo()
    assert seen[-1] == N and max(s[0] for s in shapes) <= 64
    assert isinstance(cache.array, np.memmap) and os.path.exists(path)
    assert os.listdir(tmp_path / "sub") == ["pool.npy"]  # no temporary file left
    np.testing.assert_allclose(np.asarray(cache.array), one["features/cache"], atol=1e-6)
    np.testing.assert_array_equal(np.load(path), np.asarray(cache.array))
    n_calls = len(calls)
    # padded batches of 100 rows -> chunks 64 + 36, 64 + 36, 64 (3 rows; the all-padding 36 is skipped)
    assert n_calls == 5 and sorted({s[0] for s in shapes}) == [36, 64]
    consumed = []

    def counted_batches():
        for b in w.image_batches(state["pool"], share, 100):
            consumed.append(1)
            yield b

    monkeypatch.setattr(scoring.jax, "jit", jit_counting)
    again = FeatureCache.build(model, counted_batches(), N, path=path, memory_budget_bytes=1)
    monkeypatch.undo()
    assert len(calls) == n_calls and not consumed  # reused from disk, nothing recomputed
    np.testing.assert_array_equal(np.asarray(again.array), np.asarray(cache.array))


def test_cache_interrupted_leaves_no_file(runs, tmp_path):
    _, _, state = runs
    model = state["features"][0]
    share = np.arange(N)

    def failing():
        for i, b in enumerate(w.image_batches(state["pool"], share, w.CHUNK)):
            if i == 2:
                raise OSError("image source went away")
            yield b

    with pytest.raises(OSError, match="went away"):
        FeatureCache.build(
            model, failing(), N, path=str(tmp_path / "c.npy"), memory_budget_bytes=1, sharder=state["sharder"]
        )
    assert os.listdir(tmp_path) == []


def test_bfloat16_cache_survives_the_disk(ckpt, tmp_path):
    bb16 = backbones.load(ckpt, dtype=jnp.bfloat16)
    model = w.model_for(bb16, "features")
    images = w.pool_images(20)
    pos = np.arange(20)
    path = str(tmp_path / "bf16.npy")
    first = FeatureCache.build(model, w.image_batches(images, pos, 8), 20, path=path)  # in memory, saved
    assert first.array.dtype == jnp.bfloat16
    again = FeatureCache.build(model, iter(()), 20, path=path)
    assert again.array.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(again.array, np.float32), np.asarray(first.array, np.float32))
    ref = np.asarray(bb16.encode_image(images), np.float32)
    np.testing.assert_allclose(np.asarray(first.array, np.float32), ref, atol=0.05)


def test_cached_inputs_pad_with_false_mask_and_minus_one_labels():
    arr = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    inputs = w.cached_inputs(FeatureCache(arr, "features"), Sharder(make_mesh(jax.devices()[:1])))
    assert inputs.kind == "features"
    labels = np.arange(10) * 10
    got = list(inputs.batches(np.array([5, 1, 3]), 2, labels=labels))
    assert len(got) == 2
    np.testing.assert_array_equal(got[0]["inputs"], arr[[5, 1]])
    np.testing.assert_array_equal(got[0]["label"], [50, 10])
    np.testing.assert_array_equal(got[0]["pos"], [5, 1])
    np.testing.assert_array_equal(got[1]["inputs"], np.stack([arr[3], np.zeros(3)]))
    np.testing.assert_array_equal(got[1]["_mask"], [True, False])
    np.testing.assert_array_equal(got[1]["label"], [30, -1])
    np.testing.assert_array_equal(got[1]["pos"], [3, -1])
    assert all(b["label"].dtype == np.int32 for b in got)
    unlabeled = list(inputs.batches(np.array([0]), 4))[0]
    np.testing.assert_array_equal(unlabeled["label"], [-1, -1, -1, -1])
    with pytest.raises(IndexError, match="positions"):
        list(inputs.batches(np.array([10]), 2))
    with pytest.raises(ValueError, match="rows"):
        inputs.with_cache(FeatureCache(arr[:9], "features"))  # a cache of other rows


# -- rows, order, chunks ----------------------------------------------------------------------------------
class _Spy:
    """Delegates to a model and records the row count of every `logits` call (at trace time)."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logits(self, trainable, inputs, kind=None, **kw):
        self.rows.append(inputs.shape[0])
        return self.model.logits(trainable, inputs, kind, **kw)


def test_rows_in_pool_order_padding_dropped_and_chunk_bounded(runs):
    one, _, state = runs
    model, trainable, _, _ = state["images"]
    spy = _Spy(model)
    scorer = PoolScorer(spy, "images", chunk_size=w.CHUNK, sharder=state["sharder"])
    perm = np.random.default_rng(0).permutation(N)
    batches = w.image_batches(state["pool"], perm, 150, fill=np.nan)  # padding rows are NaN
    pool = scorer.score(trainable, batches, N)
    assert spy.rows and max(spy.rows) <= w.CHUNK
    assert pool["logits"].shape == (N, len(w.CLASSES)) and np.isfinite(pool["logits"]).all()
    np.testing.assert_allclose(pool["logits"], one["images/logits"], atol=1e-5)
    np.testing.assert_allclose(pool["features"], one["images/features"], atol=1e-5)


def test_batches_must_hold_every_pool_row_once(runs):
    _, _, state = runs
    model, trainable, scorer, cache = state["features"]
    inputs = w.cached_inputs(cache, state["sharder"])
    with pytest.raises(ValueError, match="outside the pool"):  # more rows than the pool
        scorer.score(trainable, inputs.batches(np.arange(N), 64), N - 1)
    with pytest.raises(RuntimeError, match="covered"):
        scorer.score(trainable, inputs.batches(np.arange(N - 1), 64), N)
    with pytest.raises(RuntimeError, match="more than once"):
        scorer.score(trainable, inputs.batches(np.r_[np.arange(N), 7], 64), N)
    with pytest.raises(ValueError, match="kind"):
        PoolScorer(model, "hidden")


def test_assemble_orders_drops_padding_and_detects_loss():
    a = (np.array([2, -1, 0]), {"x": np.array([[20.0], [99.0], [0.0]])})
    b = (np.array([1, 3, -1]), {"x": np.array([[10.0], [30.0], [99.0]])})
    np.testing.assert_array_equal(scoring._assemble(4, [b, a])["x"][:, 0], [0.0, 10.0, 20.0, 30.0])
    with pytest.raises(RuntimeError, match=r"3 of 4 rows.*missing \[3\]"):
        scoring._assemble(4, [a, (np.array([1, -1]), {"x": np.zeros((2, 1))})])
    with pytest.raises(RuntimeError, match="more than once"):
        scoring._assemble(4, [a, b, (np.array([1]), {"x": np.zeros((1, 1))})])


def test_batches_with_positions_in_any_chunking_equal_one(runs):
    one, _, state = runs
    _, trainable, scorer, _ = state["images"]
    images = state["pool"]

    order = np.random.default_rng(1).permutation(N)  # batches of 37 that carry their pool positions, shuffled
    pool = scorer.score(trainable, w.image_batches(images, order, 37), N, mc_samples=w.MC, rng=jax.random.key(5))
    for k in ("logits", "features", "loss_pred"):
        np.testing.assert_allclose(pool[k], one[f"images/{k}"], atol=1e-6, err_msg=k)
    # MC-dropout samples depend on the row, not on how the pool was split into chunks
    np.testing.assert_allclose(pool["mc_logits"], one["images/mc_logits"], atol=1e-6)


# -- MC dropout -------------------------------------------------------------------------------------------
def test_mc_dropout_samples_differ_and_vanish_without_dropout(runs):
    one, _, state = runs
    mc, det = one["images/mc_logits"], one["images/logits"]
    for s in range(w.MC):
        assert np.abs(mc[s] - det).max() > 1e-2
        for t in range(s):
            assert np.abs(mc[s] - mc[t]).max() > 1e-2
    # dropout 0: every sample is the deterministic output (hidden-kind model, from the cache)
    _, trainable, scorer, cache = state["hidden"]
    assert scorer.model.lora_config.dropout == 0.0
    inputs = w.cached_inputs(cache, state["sharder"])
    pool = scorer.score(trainable, inputs.batches(np.arange(N), w.CHUNK), N, mc_samples=2)
    assert pool["mc_logits"].shape == (2, N, len(w.CLASSES))
    for s in range(2):
        np.testing.assert_allclose(pool["mc_logits"][s], one["hidden/logits"], atol=1e-5)
