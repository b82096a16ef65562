"""CLIP ResNet (alpeft_jax.models.clip_resnet + convert.openai_clip) against open_clip's PyTorch CLIP.

The reference is the model code of the installed open_clip package (its ModifiedResNet, AttentionPool2d
and text transformer), loaded by file path because `import open_clip` needs torchvision, which is not
installed: only `open_clip/utils.py` imports torchvision (for FrozenBatchNorm2d, unused here), so a
throw-away stub is present just while that module is imported. Tiny random models, every weight and
BatchNorm statistic perturbed, are saved as .safetensors, .pt (torch.save) and a traced TorchScript
archive (open_clip's `trace_model`, the format of OpenAI's releases) and loaded by `backbones.load`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _required import require_open_clip

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
require_open_clip(module=True)

from _open_clip_ref import open_clip_model_module  # noqa: E402

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.models import clip_resnet, lora  # noqa: E402
from alpeft_jax.models.adapted import _BLOCK  # noqa: E402

# layers (2,1,1,1): blocks_0 has a channel-changing shortcut, blocks_1 the identity, blocks_2..4 stride 2.
# Text width 64 -> 1 head and vision width 16 -> 8 attention-pool heads, both inferred from the shapes.
VISION = dict(layers=(2, 1, 1, 1), width=16, image_size=64, patch_size=None)
TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
EMBED = 32
TEXTS = ["a photo of a cat", "a close-up photo of a striped texture", "x"]


def _perturb(model, seed: int):
    """Move every parameter and BatchNorm statistic away from its init so no weight is trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or name.endswith("attn_mask"):
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs())
            else:
                t.add_(0.1 * noise)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(open_clip model, {format: saved path}) of a tiny random CLIP RN."""
    from safetensors.torch import save_file

    ocm = open_clip_model_module()
    torch.manual_seed(0)
    model = _perturb(ocm.CLIP(EMBED, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=True).eval(), seed=1)
    d = tmp_path_factory.mktemp("clip_rn")
    paths = {"safetensors": d / "rn.safetensors", "pt": d / "rn.pt", "torchscript": d / "rn_jit.pt"}
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, paths["safetensors"])
    torch.save(model.state_dict(), paths["pt"])
    torch.jit.save(ocm.trace_model(model, batch_size=2), str(paths["torchscript"]))
    return model, {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def inputs(reference):
    """NCHW images, token ids from the loaded backbone's tokenizer, and the reference outputs."""
    model, paths = reference
    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ids = backbones.load(paths["safetensors"]).tokenize(TEXTS)
    with torch.no_grad():
        x = torch.from_numpy(images)
        img = model.encode_image(x).numpy()
        txt = model.encode_text(torch.from_numpy(ids).long()).numpy()
        v = model.visual
        h = v.stem(x)
        after_layer1 = v.layer1(h)
        fmap = v.layer4(v.layer3(v.layer2(after_layer1)))
    logits = float(model.logit_scale.detach().exp()) * _unit(img) @ _unit(txt).T
    return dict(
        images=images,
        nhwc=images.transpose(0, 2, 3, 1),
        ids=ids,
        img=img,
        txt=txt,
        logits=logits,
        stem=h.numpy(),
        after_layer1=after_layer1.numpy(),
        fmap=fmap.numpy(),
    )


@pytest.fixture(scope="module")
def bb(reference):
    """The float32 backbone loaded from the .safetensors file."""
    return backbones.load(reference[1]["safetensors"])


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nchw_to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("fmt", ["safetensors", "pt", "torchscript"])
def test_embeddings_and_logits_match_open_clip(reference, inputs, fmt):
    bb = backbones.load(reference[1][fmt])
    assert isinstance(bb.model, clip_resnet.CLIPResNet)
    assert bb.family == "clip" and bb.config["architecture"] == "resnet"
    assert bb.image_size == 64 and bb.embed_dim == EMBED
    assert bb.model.vision.layers == (2, 1, 1, 1) and bb.model.vision.heads == 16 * 32 // 64
    img = np.asarray(bb.encode_image(inputs["nhwc"]))
    txt = np.asarray(bb.encode_text(inputs["ids"]))
    np.testing.assert_allclose(img, inputs["img"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(txt, inputs["txt"], atol=1e-4, rtol=0)
    logits, aux = bb.apply("__call__", jnp.asarray(inputs["nhwc"]), jnp.asarray(inputs["ids"]))
    np.testing.assert_allclose(np.asarray(logits), inputs["logits"], atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(aux["logit_scale"]), float(reference[0].logit_scale.detach().exp()), rtol=1e-6)


def test_aux_pooled_is_embedding_and_patch_tokens_are_feature_map(bb, inputs):
    emb, aux = bb.apply("encode_image", jnp.asarray(inputs["nhwc"]))
    np.testing.assert_array_equal(np.asarray(aux["pooled"]), np.asarray(emb))
    want = _nchw_to_nhwc(inputs["fmap"]).reshape(2, -1, 16 * 32)
    assert aux["patch_tokens"].shape == (2, 4, 512)
    np.testing.assert_allclose(np.asarray(aux["patch_tokens"]), want, atol=1e-4, rtol=0)


def test_frozen_prefix_matches_reference_stages_and_composes(bb, inputs):
    model, x = bb.model, jnp.asarray(inputs["nhwc"])
    assert model.num_image_blocks == 5
    run = lambda fn, *a: jax.jit(lambda p, *b: model.apply({"params": p}, *b, method=fn))(bb.params, *a)  # noqa: E731
    stem = run(lambda m, im: m.image_stem(im), x)
    np.testing.assert_allclose(np.asarray(stem), _nchw_to_nhwc(inputs["stem"]), atol=1e-5, rtol=0)
    # blocks 0..1 are layer1 (global numbering), blocks 2..4 the strided stages.
    h2 = run(lambda m, h: m.image_blocks(h, 0, 2), stem)
    np.testing.assert_allclose(np.asarray(h2), _nchw_to_nhwc(inputs["after_layer1"]), atol=1e-4, rtol=0)
    for cut in (0, 1, 4):
        h = run(lambda m, im: m.image_blocks(m.image_stem(im), 0, cut), x)  # noqa: B023
        emb, _ = run(lambda m, hh: m.image_head(m.image_blocks(hh, cut, None)), h)  # noqa: B023
        np.testing.assert_allclose(np.asarray(emb), inputs["img"], atol=1e-4, rtol=0)


def test_bfloat16_compute_close_to_float32_reference(reference, inputs):
    bb = backbones.load(reference[1]["safetensors"], dtype=jnp.bfloat16)
    assert jax.tree_util.tree_leaves(bb.params)[0].dtype == jnp.float32  # weights stay float32
    img = np.asarray(bb.encode_image(inputs["nhwc"]), np.float32)
    txt = np.asarray(bb.encode_text(inputs["ids"]), np.float32)
    # bf16 has an 8-bit mantissa: ~2-3 significant digits through 5 blocks and 2 text layers.
    for got, want in ((img, inputs["img"]), (txt, inputs["txt"])):
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
        assert (np.sum(_unit(got) * _unit(want), axis=-1) > 0.999).all()


def test_lora_targets_1x1_convs_and_attention_pool(bb, inputs):
    cfg = lora.LoraConfig(
        rank=2, alpha=2.0, targets=(r"img/blocks_[3-4]/conv(1|3)", r"img/attnpool/attn/(q|v)"), dropout=0.0
    )
    found = lora.target_modules(bb.params, cfg.targets)
    assert set(found) == {
        "img/blocks_3/conv1",
        "img/blocks_3/conv3",
        "img/blocks_4/conv1",
        "img/blocks_4/conv3",
        "img/attnpool/attn/q",
        "img/attnpool/attn/v",
    }
    assert int(_BLOCK.search("blocks_4/conv3").group(1)) == 4
    tree = lora.init(jax.random.key(0), bb.params, cfg)
    tree = jax.tree_util.tree_map(lambda t: t + 0.05 * jax.random.normal(jax.random.key(1), t.shape), tree)
    x = jnp.asarray(inputs["nhwc"])
    adapted = jax.jit(lambda t: lora.apply(bb.model, bb.params, t, cfg, x, method="encode_image")[0])(tree)
    merged = bb.encode_image(x, params=lora.merge(bb.params, tree, cfg))
    assert np.abs(np.asarray(adapted) - inputs["img"]).max() > 1e-3  # the update reaches the output
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(merged), atol=1e-4, rtol=0)


def test_wrong_image_size_is_refused(bb):
    with pytest.raises(ValueError, match="expects NHWC images"):
        bb.encode_image(np.zeros((1, 3, 64, 64), np.float32))


def test_variants_have_openai_dims():
    for name, layers, width, heads, size, embed in (
        ("RN50", (3, 4, 6, 3), 64, 32, 224, 1024),
        ("RN101", (3, 4, 23, 3), 64, 32, 224, 512),
        ("RN50x4", (4, 6, 10, 6), 80, 40, 288, 640),
    ):
        m = clip_resnet.CLIPResNet.from_variant(name)
        assert (m.vision.layers, m.vision.width, m.vision.heads, m.image_size, m.embed_dim) == (
            layers,
            width,
            heads,
            size,
            embed,
        )
        assert m.num_image_blocks == sum(layers)
    with pytest.raises(ValueError, match="Unknown CLIP ResNet variant"):
        clip_resnet.variant("RN18")
