"""LoRA (alpeft_jax.models.lora): parameter counts, NumPy reference of the adapted layers, merge, dropout, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from alpeft_jax.convert.common import flatten
from alpeft_jax.models import clip, lora
from alpeft_jax.models.efficientnet import EfficientNetLite, MBConv


class TwoDense(nn.Module):
    """x -> Dense "fc1" -> tanh -> Dense "fc2", inside a named submodule (paths "body/fc1", "body/fc2")."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Body(name="body")(x)


class Body(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(5, name="fc2")(jnp.tanh(nn.Dense(7, name="fc1")(x)))


class StridedPointwise(nn.Module):
    """A 1x1 nn.Conv with stride 2 ("down"): its output grid is not its input grid."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(4, (1, 1), strides=(2, 2), name="down")(x)


class PointwiseConv(nn.Module):
    """A 1x1 nn.Conv ("pw") followed by a 3x3 nn.Conv ("spatial")."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(4, (3, 3), name="spatial")(nn.Conv(6, (1, 1), name="pw")(x))


def _random_b(tree: lora.LoraTree, seed: int = 3, std: float = 0.3) -> lora.LoraTree:
    """Replace every B factor by random values (a 'trained' LoRA)."""
    flat = dict(flatten(tree))
    for i, name in enumerate(sorted(flat)):
        if name.endswith("/b"):
            flat[name] = std * jax.random.normal(jax.random.key(seed + i), flat[name].shape)
    from alpeft_jax.convert.common import unflatten

    return unflatten(flat)


def _clip_shapes(name: str) -> dict:
    model = clip.CLIP.from_variant(name)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 77), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), images, ids)["params"]


# ------------------------------------------------------------------------------------------- counts
def test_clip_b16_qkv_rank4_count():
    shapes = _clip_shapes("B/16")
    cfg = lora.LoraConfig(rank=4, dropout=0.0)
    tree = jax.eval_shape(lambda p: lora.init(jax.random.key(0), p, cfg), shapes)
    assert lora.num_params(tree) == 368_640  # 12*3*(2*768*4) + 12*3*(2*512*4)
    flat = flatten(tree)
    assert len(flat) == 2 * 3 * 24  # a and b for q, k, v of 12 image + 12 text blocks
    assert flat["img/encoder/block_11/attn/v/a"].shape == (768, 4)
    assert flat["txt/encoder/block_0/attn/q/b"].shape == (4, 512)
    vision_only = jax.eval_shape(
        lambda p: lora.init(jax.random.key(0), p, lora.LoraConfig(targets=lora.TOWER_TARGETS["vision"])), shapes
    )
    assert lora.num_params(vision_only) == 12 * 3 * 2 * 768 * 4


# ------------------------------------------------------------------------------------- NumPy reference
@pytest.mark.parametrize("scale_mode,rank,alpha", [("sqrt", 4, 4.0), ("linear", 4, 8.0), ("sqrt", 3, 2.0)])
def test_dense_matches_numpy(scale_mode, rank, alpha):
    model = TwoDense()
    x = jax.random.normal(jax.random.key(0), (6, 3))
    params = model.init(jax.random.key(1), x)["params"]
    cfg = lora.LoraConfig(rank=rank, alpha=alpha, scale_mode=scale_mode, targets=(r"body/fc\d",), dropout=0.0)
    tree = _random_b(lora.init(jax.random.key(2), params, cfg))
    out = lora.apply(model, params, tree, cfg, x)

    scale = alpha / math.sqrt(rank) if scale_mode == "sqrt" else alpha / rank
    p = jax.tree.map(np.asarray, params)["body"]
    t = jax.tree.map(np.asarray, tree)["body"]
    xn = np.asarray(x, np.float64)

    def dense(h, name):
        return h @ p[name]["kernel"] + p[name]["bias"] + scale * (h @ t[name]["a"] @ t[name]["b"])

    ref = dense(np.tanh(dense(xn, "fc1")), "fc2")
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    assert lora.LoraConfig(rank=rank, alpha=alpha, scale_mode=scale_mode).scale == pytest.approx(scale)


def test_only_targets_are_adapted():
    model = TwoDense()
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params = model.init(jax.random.key(1), x)["params"]
    cfg = lora.LoraConfig(rank=2, targets=("body/fc2",), dropout=0.0)
    tree = _random_b(lora.init(jax.random.key(2), params, cfg))
    assert set(flatten(tree)) == {"body/fc2/a", "body/fc2/b"}
    p = jax.tree.map(np.asarray, params)["body"]
    t = jax.tree.map(np.asarray, tree)["body"]["fc2"]
    h = np.tanh(np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    ref = h @ p["fc2"]["kernel"] + p["fc2"]["bias"] + cfg.scale * h @ t["a"] @ t["b"]
    np.testing.assert_allclose(np.asarray(lora.apply(model, params, tree, cfg, x)), ref, rtol=1e-5, atol=1e-5)


def test_pointwise_conv_matches_numpy_and_spatial_conv_is_rejected():
    model = PointwiseConv()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    params = model.init(jax.random.key(1), x)["params"]
    cfg = lora.LoraConfig(rank=2, alpha=3.0, targets=("pw",), dropout=0.0)
    tree = _random_b(lora.init(jax.random.key(2), params, cfg))
    assert tree["pw"]["a"].shape == (3, 2) and tree["pw"]["b"].shape == (2, 6)
    # The intermediate 1x1 output, by NumPy.
    w = np.asarray(params["pw"]["kernel"])[0, 0]
    pw = np.asarray(x) @ w + np.asarray(params["pw"]["bias"])
    pw_lora = pw + cfg.scale * np.asarray(x) @ np.asarray(tree["pw"]["a"]) @ np.asarray(tree["pw"]["b"])
    # Feed both through the frozen 3x3 conv: the adapted model must equal spatial(pw_lora).
    spatial = nn.Conv(4, (3, 3))
    ref = spatial.apply({"params": params["spatial"]}, jnp.asarray(pw_lora))
    np.testing.assert_allclose(np.asarray(lora.apply(model, params, tree, cfg, x)), np.asarray(ref), atol=1e-5)
    merged = lora.merge(params, tree, cfg)
    np.testing.assert_allclose(np.asarray(model.apply({"params": merged}, x)), np.asarray(ref), atol=1e-5)
    with pytest.raises(ValueError, match=r"spatial.*\(3, 3\) conv; only 1x1"):
        lora.init(jax.random.key(0), params, lora.LoraConfig(targets=("spatial",)))


def test_strided_pointwise_conv_is_rejected_clearly():
    model = StridedPointwise()
    x = jnp.ones((1, 4, 4, 3))
    params = model.init(jax.random.key(0), x)["params"]
    cfg = lora.LoraConfig(rank=2, targets=("down",), dropout=0.0)
    tree = lora.init(jax.random.key(1), params, cfg)
    with pytest.raises(ValueError, match=r"LoRA target down maps .* stride 1.*remove it from lora.targets"):
        lora.apply(model, params, tree, cfg, x)


# ------------------------------------------------------------------------------------------ CLIP towers
@pytest.fixture(scope="module")
def clip_inputs(vocab_clip):
    images = jax.random.normal(jax.random.key(5), (3, 16, 16, 3))
    ids = jnp.asarray(vocab_clip.tokenize(["a photo of a cat", "a dog", "sea lion on a rock"]))
    return images, ids


def _towers(model, params, tree, cfg, images, ids):
    @jax.jit
    def run(params, tree):
        img = lora.apply(model, params, tree, cfg, images, method="encode_image")[0]
        txt = lora.apply(model, params, tree, cfg, ids, method="encode_text")[0]
        return img, txt

    return run(params, tree)


def test_zero_b_is_the_base_model(vocab_clip, clip_inputs):
    images, ids = clip_inputs
    cfg = lora.LoraConfig(rank=4, dropout=0.0)
    tree = lora.init(jax.random.key(0), vocab_clip.params, cfg)
    assert all(not np.any(np.asarray(t["b"])) for t in lora.modules(tree).values())
    img, txt = _towers(vocab_clip.model, vocab_clip.params, tree, cfg, images, ids)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(vocab_clip.encode_image(images)))
    np.testing.assert_array_equal(np.asarray(txt), np.asarray(vocab_clip.encode_text(ids)))


@pytest.mark.parametrize("scale_mode", ["sqrt", "linear"])
def test_merged_equals_unmerged_and_unmerge_restores(vocab_clip, clip_inputs, scale_mode):
    images, ids = clip_inputs
    cfg = lora.LoraConfig(rank=4, alpha=8.0, scale_mode=scale_mode, dropout=0.0)
    tree = _random_b(lora.init(jax.random.key(0), vocab_clip.params, cfg))
    img, txt = _towers(vocab_clip.model, vocab_clip.params, tree, cfg, images, ids)
    base_img = vocab_clip.encode_image(images)
    assert float(jnp.max(jnp.abs(img - base_img))) > 1e-3  # the update is not negligible
    merged = lora.merge(vocab_clip.params, tree, cfg)
    np.testing.assert_allclose(
        np.asarray(vocab_clip.encode_image(images, params=merged)), np.asarray(img), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(vocab_clip.encode_text(ids, params=merged)), np.asarray(txt), atol=1e-5, rtol=1e-5
    )
    # The merged kernels are W + scale * A @ B by NumPy; every other leaf is untouched.
    flat_p, flat_m = flatten(vocab_clip.params), flatten(merged)
    t = flatten(tree)
    for name, value in flat_p.items():
        module = name[: -len("/kernel")]
        if module + "/a" in t:
            ref = np.asarray(value) + cfg.scale * np.asarray(t[module + "/a"]) @ np.asarray(t[module + "/b"])
            np.testing.assert_allclose(np.asarray(flat_m[name]), ref, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(flat_m[name]), np.asarray(value))
    restored = flatten(lora.unmerge(merged, tree, cfg))
    for name, value in flat_p.items():
        np.testing.assert_allclose(np.asarray(restored[name]), np.asarray(value), atol=1e-6)


# ------------------------------------------------------------------------------------------- dropout
def test_dropout_only_in_training_and_only_on_the_lora_input():
    model = TwoDense()
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params = model.init(jax.random.key(1), x)["params"]
    cfg = lora.LoraConfig(rank=2, dropout=0.5, targets=("body/fc1",))
    zero_b = lora.init(jax.random.key(2), params, cfg)
    base = model.apply({"params": params}, x)
    # B = 0: dropout on the LoRA input can change nothing; the frozen path sees the clean input.
    for seed in range(3):
        out = lora.apply(model, params, zero_b, cfg, x, rng=jax.random.key(seed), train=True)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(base))

    tree = _random_b(zero_b, std=1.0)
    clean = lora.apply(model, params, tree, cfg, x)  # eval mode: no dropout even with dropout > 0
    no_drop_cfg = lora.LoraConfig(rank=2, dropout=0.0, targets=("body/fc1",))
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(lora.apply(model, params, tree, no_drop_cfg, x)))
    np.testing.assert_array_equal(
        np.asarray(clean), np.asarray(lora.apply(model, params, tree, cfg, x, rng=jax.random.key(0), train=False))
    )

    # Train mode: the fc1 pre-activation is x W + b + scale * (drop(x) A B); dropout is inverted (E[drop(x)] = x),
    # so the mean over many masks of the fc1 output equals the clean fc1 output.
    def fc1_out(key):
        return lora.apply(Fc1Probe(), {"body": params["body"]}, tree, cfg, x, rng=key, train=True)

    keys = jax.random.split(jax.random.key(7), 4000)
    samples = jax.jit(jax.vmap(fc1_out))(keys)
    p = jax.tree.map(np.asarray, params)["body"]["fc1"]
    t = jax.tree.map(np.asarray, tree)["body"]["fc1"]
    xn = np.asarray(x)
    clean_fc1 = xn @ p["kernel"] + p["bias"] + cfg.scale * xn @ t["a"] @ t["b"]
    spread = np.std(np.asarray(samples, np.float64), axis=0)
    assert spread.max() > 0.1  # the masks really vary
    err = np.abs(np.asarray(samples, np.float64).mean(0) - clean_fc1)
    assert np.all(err < 5 * spread / np.sqrt(len(keys)) + 1e-4), err.max()
    # Each sample is consistent with a 0 / 2x mask on the LoRA input only.
    base_fc1 = xn @ p["kernel"] + p["bias"]
    one = np.asarray(samples[0])
    candidates = np.stack(np.meshgrid(*[[0.0, 2.0]] * 3, indexing="ij"), -1).reshape(-1, 3)  # masks over 3 inputs
    for row in range(4):
        options = [base_fc1[row] + cfg.scale * (xn[row] * m) @ t["a"] @ t["b"] for m in candidates]
        assert min(np.abs(o - one[row]).max() for o in options) < 1e-5

    with pytest.raises(ValueError, match="rng"):
        lora.apply(model, params, tree, cfg, x, train=True)


class Fc1Probe(nn.Module):
    """Only the first layer of `TwoDense` (same path "body/fc1")."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Fc1Body(name="body")(x)


class Fc1Body(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(7, name="fc1")(x)


# ---------------------------------------------------------------------------------------------- init
def test_a_init_is_uniform_within_one_over_sqrt_fan_in():
    params = {"enc": {"wide": {"kernel": jnp.zeros((400, 30))}, "narrow": {"kernel": jnp.zeros((9, 30))}}}
    tree = lora.init(jax.random.key(0), params, lora.LoraConfig(rank=64, targets=("enc/.*",), dropout=0.0))
    for fan_in, name in ((400, "wide"), (9, "narrow")):
        a = np.asarray(tree["enc"][name]["a"])
        bound = 1 / math.sqrt(fan_in)
        assert a.shape == (fan_in, 64)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.97 * bound
        assert np.std(a) == pytest.approx(bound / math.sqrt(3), rel=0.08)  # U(-b, b) has std b / sqrt(3)
        assert abs(np.mean(a)) < 0.1 * bound
        np.testing.assert_array_equal(np.asarray(tree["enc"][name]["b"]), np.zeros((64, 30)))


# ------------------------------------------------------------------------------------------ EfficientNet
class LastBlock(nn.Module):
    """EfficientNet-Lite0's last MBConv block under its real name ("blocks_15"), on a small feature map."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return MBConv(3, 1, 6, 320, depthwise="shift", name="blocks_15")(x)


def test_efficientnet_pointwise_targets():
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    full = jax.eval_shape(EfficientNetLite().init, jax.random.key(0), images)["params"]
    found = lora.target_modules(full, (r"blocks_15/(expand|project)_conv",))
    assert found == {"blocks_15/expand_conv": (192, 1152), "blocks_15/project_conv": (1152, 320)}
    with pytest.raises(ValueError, match=r"conv_stem.*\(3, 3\) conv"):
        lora.target_modules(full, ("conv_stem",))

    model = LastBlock()
    x = jax.random.normal(jax.random.key(0), (1, 3, 3, 192))
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), jnp.float32), shapes)
    cfg = lora.LoraConfig(rank=2, targets=(r"blocks_15/(expand|project)_conv",), dropout=0.0)
    tree = _random_b(lora.init(jax.random.key(2), params, cfg), std=0.5)
    assert set(lora.modules(tree)) == {"blocks_15/expand_conv", "blocks_15/project_conv"}
    out = jax.jit(lambda p, t: lora.apply(model, p, t, cfg, x))(params, tree)
    base = jax.jit(lambda p: model.apply({"params": p}, x))
    assert float(jnp.max(jnp.abs(out - base(params)))) > 1e-2
    np.testing.assert_allclose(np.asarray(base(lora.merge(params, tree, cfg))), np.asarray(out), atol=1e-4, rtol=1e-5)
    # The expand layer alone, by NumPy: a Dense over the channel axis of the NHWC map.
    p = jax.tree.map(np.asarray, params)["blocks_15"]["expand_conv"]
    t = jax.tree.map(np.asarray, tree)["blocks_15"]["expand_conv"]
    xn = np.asarray(x)
    ref = np.clip(xn @ p["kernel"] + p["bias"] + cfg.scale * xn @ t["a"] @ t["b"], 0, 6)
    got = lora.apply(ExpandOnly(), {"blocks_15": {"expand_conv": params["blocks_15"]["expand_conv"]}}, tree, cfg, x)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=1e-5)


class ExpandOnly(nn.Module):
    """Only the expand layer of `LastBlock` (same path), followed by ReLU6."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ExpandBody(name="blocks_15")(x)


class ExpandBody(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(nn.Dense(1152, name="expand_conv")(x), 0, 6)


# -------------------------------------------------------------------------------------------- bad input
def test_bad_configs():
    shapes = _clip_shapes("B/32")
    with pytest.raises(ValueError, match=r"matched no Dense/Conv kernel.*img/.*fix lora.targets"):
        lora.target_modules(shapes, (r".*/attention/query",))
    with pytest.raises(ValueError, match="matched no") as err:
        jax.eval_shape(lambda p: lora.init(jax.random.key(0), p, lora.LoraConfig(targets=("nothing",))), shapes)
    assert "encoder/block_0" in str(err.value)  # example module paths are listed
    for rank in (0, -2, 1.5):
        with pytest.raises(ValueError, match="rank"):
            lora.LoraConfig(rank=rank)
    with pytest.raises(ValueError, match="scale_mode"):
        lora.LoraConfig(scale_mode="quadratic")
    with pytest.raises(ValueError, match="dropout"):
        lora.LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match=r"img/patch_embed.*\(32, 32\) conv"):
        lora.target_modules(shapes, (r"img/patch_embed",))
