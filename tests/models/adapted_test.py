"""AdaptedModel (alpeft_jax.models.adapted): input kinds agree, logits against independent CLIP paths, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alpeft_jax.convert.common import flatten, unflatten
from alpeft_jax.models import lora, prompts
from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel

NAMES = ["cat", "golden_retriever", "sea lion"]


def _random_b(trainable: dict, std: float = 0.3) -> dict:
    flat = dict(flatten(trainable))
    for i, k in enumerate(sorted(flat)):
        if k.endswith("/b"):
            flat[k] = std * jax.random.normal(jax.random.key(i), flat[k].shape)
    return unflatten(flat)


def _cos_logits(scale: float, img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float64)
    txt = np.asarray(txt, np.float64)
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    return scale * img @ txt.T


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(0), (3, 16, 16, 3))


@pytest.mark.parametrize(
    "targets,kind",
    [
        ((r"img/encoder/block_1/attn/(q|k|v)",), "hidden"),
        (lora.TOWER_TARGETS["text"], "features"),
        (lora.TOWER_TARGETS["both"], "images"),
    ],
)
def test_clip_lora_logits_equal_merged_reference_for_every_input_kind(vocab_clip, images, targets, kind):
    cfg = lora.LoraConfig(rank=2, alpha=4.0, targets=targets, dropout=0.0)
    model = AdaptedModel(vocab_clip, NAMES, AdaptConfig(mode="lora", lora=cfg))
    assert model.input_kind == kind and model.head_kind == "none"
    assert model.cache_block == (1 if kind == "hidden" else None)
    trainable = _random_b(model.init(jax.random.key(1)))
    assert set(trainable) == {"lora"}
    got = jax.jit(lambda t, x: model.logits(t, x, kind)[0])(trainable, model.prefix(images))
    from_images = jax.jit(lambda t, x: model.logits(t, x, "images")[0])(trainable, images)
    # Independent path: merged weights through the plain backbone, frozen "X X ... X name." prompts.
    merged = lora.merge(vocab_clip.params, trainable["lora"], cfg)
    texts = [" ".join(["X"] * 16 + [n.replace("_", " ")]) + "." for n in NAMES]
    txt = vocab_clip.encode_text(vocab_clip.tokenize(texts), params=merged)
    ref = _cos_logits(np.exp(float(vocab_clip.params["logit_scale"])), vocab_clip.encode_image(images, merged), txt)
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(from_images), ref, atol=2e-4, rtol=1e-4)


def test_zero_shot_head_equals_clip_forward(vocab_clip, images):
    model = AdaptedModel(vocab_clip, NAMES, AdaptConfig(mode="linear", head="zeroshot"))
    assert model.input_kind == "features" and model.head_kind == "zeroshot"
    trainable = model.init(jax.random.key(0))
    assert set(trainable) == {"head"} and trainable["head"]["kernel"].shape == (12, 3)
    got, aux = model.logits(trainable, model.prefix(images), "features")
    ids = vocab_clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    ref = vocab_clip.model.apply({"params": vocab_clip.params}, images, jnp.asarray(ids))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["features"]), np.asarray(vocab_clip.encode_image(images)), atol=1e-6)


def test_prompt_mode_with_placeholder_context_equals_clip_forward(vocab_clip, images):
    n_ctx = 4
    model = AdaptedModel(vocab_clip, NAMES, AdaptConfig(mode="prompt", prompt=prompts.PromptConfig(n_ctx=n_ctx)))
    assert model.input_kind == "features" and model.head_kind == "none"
    trainable = model.init(jax.random.key(0))
    assert trainable["prompt"].shape == (3, n_ctx, 16)
    x_emb = vocab_clip.params["txt"]["token_embed"]["embedding"][vocab_clip.tokenizer.encode("X")[0]]
    trainable = {"prompt": jnp.broadcast_to(x_emb, (3, n_ctx, 16))}
    got = jax.jit(lambda t, x: model.logits(t, x, "features")[0])(trainable, model.prefix(images))
    ids = vocab_clip.tokenize([" ".join(["X"] * n_ctx + [n.replace("_", " ")]) + "." for n in NAMES])
    ref = vocab_clip.model.apply({"params": vocab_clip.params}, images, jnp.asarray(ids))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-4, rtol=1e-5)


def test_dinov2_lora_and_linear(tiny_dinov2, images):
    linear = AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="linear"))
    assert linear.input_kind == "features" and linear.head_kind == "linear"
    trainable = linear.init(jax.random.key(0))
    feats = np.asarray(tiny_dinov2.encode_image(images))
    head = jax.tree.map(np.asarray, trainable["head"])
    np.testing.assert_allclose(
        np.asarray(linear.logits(trainable, linear.prefix(images), "features")[0]),
        feats @ head["kernel"] + head["bias"],
        atol=1e-5,
    )
    bound = 1 / np.sqrt(16)
    assert np.abs(head["kernel"]).max() <= bound and np.abs(head["bias"]).max() <= bound

    cfg = lora.LoraConfig(rank=2, targets=(r"encoder/block_1/(attn/(q|v)|mlp/fc1)",), dropout=0.0)
    model = AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="lora", lora=cfg))
    assert model.input_kind == "hidden" and model.cache_block == 1 and model.head_kind == "linear"
    trainable = _random_b(model.init(jax.random.key(1)))
    assert set(trainable) == {"lora", "head"}
    got = model.logits(trainable, model.prefix(images), "hidden")[0]
    merged_feats = np.asarray(tiny_dinov2.encode_image(images, lora.merge(tiny_dinov2.params, trainable["lora"], cfg)))
    head = jax.tree.map(np.asarray, trainable["head"])
    np.testing.assert_allclose(np.asarray(got), merged_feats @ head["kernel"] + head["bias"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(model.logits(trainable, images, "images")[0]), np.asarray(got), atol=1e-5)


def test_bad_configs(tiny_dinov2):
    with pytest.raises(ValueError, match="adapt.mode"):
        AdaptConfig(mode="adapter")
    with pytest.raises(ValueError, match="adapt.head"):
        AdaptConfig(head="mlp")
    with pytest.raises(ValueError, match="adapt.head=linear with adapt.mode=prompt: prompts classify through the text"):
        AdaptConfig(mode="prompt", head="linear")
    with pytest.raises(ValueError, match="adapt.mode=prompt needs a CLIP backbone, not dinov2; use lora or linear"):
        AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="prompt"))
    with pytest.raises(ValueError, match="adapt.head=zeroshot needs a CLIP backbone, not dinov2; use adapt.head=lin"):
        AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="linear", head="zeroshot"))
    with pytest.raises(ValueError, match="adapt.head=none needs a CLIP backbone, not dinov2; use adapt.head=linear"):
        AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="lora", head="none"))
    with pytest.raises(ValueError, match="matched no"):
        AdaptedModel(tiny_dinov2, NAMES, AdaptConfig(mode="lora", lora=lora.LoraConfig(targets=("txt/.*",))))
