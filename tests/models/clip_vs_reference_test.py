"""CLIP ViT (alpeft_jax.models.clip + convert.hf_clip) against transformers' PyTorch CLIPModel."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.convert import hf_clip  # noqa: E402
from alpeft_jax.models import clip  # noqa: E402

# Legacy eos_token_id == 2 (pool at argmax of ids), wider vision than text, 56px images, one text block.
LEGACY = dict(
    text_config=dict(
        vocab_size=64,
        hidden_size=24,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=3,
        max_position_embeddings=12,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ),
    vision_config=dict(
        hidden_size=36,
        intermediate_size=72,
        num_hidden_layers=3,
        num_attention_heads=3,
        image_size=56,
        patch_size=8,
        hidden_act="quick_gelu",
    ),
    projection_dim=16,
)
# Exact GELU, non-default LayerNorm eps and logit scale.
GELU = dict(
    text_config=dict(
        vocab_size=50,
        hidden_size=24,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=10,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        bos_token_id=48,
        eos_token_id=49,
        pad_token_id=0,
    ),
    vision_config=dict(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=3,
        image_size=48,
        patch_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    ),
    projection_dim=12,
    logit_scale_init_value=3.0,
)

CASES = {
    "safetensors": (None, {}),  # tests/conftest.py TINY_CLIP
    "legacy_eos_sharded": (LEGACY, {"max_shard_size": "20KB"}),
    "gelu_pytorch_bin": (GELU, {"pytorch_bin": True}),
}


def _features(out):
    """get_*_features returns a tensor in some transformers versions and an output object in others."""
    return (out.pooler_output if hasattr(out, "pooler_output") else out).detach().numpy()


def _inputs(config, seed=0, batch=3, n_images=2):
    """Random NCHW images and token ids whose EOS position differs from the argmax of the ids."""
    rng = np.random.default_rng(seed)
    t, v = config["text_config"], config["vision_config"]
    size, length, vocab = v["image_size"], t["max_position_embeddings"], t["vocab_size"]
    images = rng.normal(size=(n_images, 3, size, size)).astype(np.float32)
    ids = rng.integers(3, vocab, size=(batch, length))
    ids[:, 0] = t["bos_token_id"]
    eos = t["eos_token_id"]
    ids[ids == eos] = 3
    for i, pos in enumerate(rng.permutation(np.arange(2, length))[:batch]):
        if eos == 2:  # legacy rule: the end-of-text token has the largest id
            ids[i, pos] = vocab - 1
            ids[i, pos + 1 :] = 1
            ids[i, 1:pos][ids[i, 1:pos] == vocab - 1] = 3
        else:
            ids[i, pos:] = eos  # padded with EOS, as the HF tokenizer does
            ids[i, pos - 1] = vocab - 1  # a larger id before it: argmax pooling would be wrong
    return images, ids.astype(np.int64)


@pytest.fixture(scope="module")
def built(tiny_clip_factory, tiny_clip_config):
    """`built(name)`: (name, config, torch model, saved directory) of a CASES entry, each saved once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            config, save_kwargs = CASES[name]
            config = config or tiny_clip_config
            model, path = tiny_clip_factory(config, seed=len(name), **save_kwargs)
            cache[name] = (name, config, model, path)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=list(CASES))
def case(request, built):
    return built(request.param)


def _nhwc(images):
    return np.transpose(images, (0, 2, 3, 1))


def test_save_format_is_the_one_under_test(case):
    name, _, _, path = case
    names = sorted(p.name for p in path.iterdir())
    expected = {
        "safetensors": ["model.safetensors"],
        "legacy_eos_sharded": ["model.safetensors.index.json"],
        "gelu_pytorch_bin": ["pytorch_model.bin"],
    }[name]
    assert set(expected) <= set(names), names
    if name == "legacy_eos_sharded":
        assert sum(n.endswith(".safetensors") for n in names) > 1, names  # really several shards
    if name == "gelu_pytorch_bin":
        assert not any(n.endswith(".safetensors") for n in names), names


def test_features_and_logits_match_transformers(case):
    _, config, ref, path = case
    bb = backbones.load(str(path))
    assert bb.family == "clip" and bb.embed_dim == config["projection_dim"]
    assert bb.image_size == config["vision_config"]["image_size"]
    images, ids = _inputs(config)
    with torch.no_grad():
        ref_img = _features(ref.get_image_features(pixel_values=torch.from_numpy(images)))
        ref_txt = _features(ref.get_text_features(input_ids=torch.from_numpy(ids)))
        ref_out = ref(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images))
        ref_vis = ref.vision_model(pixel_values=torch.from_numpy(images))
    img, img_aux = bb.apply("encode_image", jnp.asarray(_nhwc(images)))
    img = np.asarray(img)
    txt = np.asarray(bb.encode_text(ids))
    np.testing.assert_allclose(img, ref_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-4, rtol=0)
    logits, aux = bb.apply("__call__", jnp.asarray(_nhwc(images)), jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), ref_out.logits_per_image.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(aux["image_embeds"]), ref_out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["text_embeds"]), ref_out.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(img_aux["pooled"]), ref_vis.pooler_output.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(img_aux["patch_tokens"]), ref_vis.last_hidden_state[:, 1:].numpy(), atol=1e-4)


def test_bf16_compute_stays_close(built):  # one configuration (the default tiny CLIP) keeps the file fast
    _, config, ref, path = built("safetensors")
    bb = backbones.load(str(path), dtype=jnp.bfloat16)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda p: p.dtype == jnp.float32, bb.params))
    images, ids = _inputs(config, seed=1)
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images))
    logits, _ = bb.apply("__call__", jnp.asarray(_nhwc(images), jnp.bfloat16), jnp.asarray(ids, jnp.int32))
    scale = math.exp(float(ref.logit_scale.detach()))
    cos, ref_cos = np.asarray(logits, np.float32) / scale, out.logits_per_image.numpy() / scale
    # bf16 has an 8-bit mantissa; measured 2e-3 on this model, so 1e-2 leaves headroom across platforms.
    np.testing.assert_allclose(cos, ref_cos, atol=1e-2, rtol=0)
    img = np.asarray(bb.encode_image(_nhwc(images)), np.float32)
    ref_img = out.image_embeds.numpy()
    agreement = (img / np.linalg.norm(img, axis=-1, keepdims=True) * ref_img).sum(-1)
    assert agreement.min() > 0.999, agreement  # measured 0.99996


def test_stem_blocks_head_compose_to_encode_image(built):  # the deepest image tower (3 blocks) is enough
    _, config, _, path = built("legacy_eos_sharded")
    bb = backbones.load(str(path))
    images = jnp.asarray(_nhwc(_inputs(config)[0]))
    run = lambda method, *args: bb.model.apply({"params": bb.params}, *args, method=method)
    n = bb.model.num_image_blocks
    assert n == bb.model.num_blocks == config["vision_config"]["num_hidden_layers"]
    with pytest.raises(ValueError, match="outside"):
        run("image_blocks", run("image_stem", images), 1, n + 1)
    full, full_aux = run("encode_image", images)
    for split in (1, 2):
        hidden = run("image_stem", images)
        hidden = run("image_blocks", hidden, 0, split)
        hidden = run("image_blocks", hidden, split, n)
        emb, aux = run("image_head", hidden)
        np.testing.assert_allclose(np.asarray(emb), np.asarray(full), atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(aux["pooled"]), np.asarray(full_aux["pooled"]), atol=1e-6)


def test_embeddings_input_equals_ids_input(case):
    _, config, ref, path = case
    bb = backbones.load(str(path))
    _, ids = _inputs(config, seed=2)
    run = lambda method, *args, **kw: bb.model.apply({"params": bb.params}, *args, method=method, **kw)
    emb = run("embed_tokens", jnp.asarray(ids))
    np.testing.assert_allclose(
        np.asarray(emb), ref.text_model.embeddings.token_embedding.weight.detach().numpy()[ids], atol=0
    )
    eot = clip.eot_positions(ids, config["text_config"]["eos_token_id"])
    from_ids, _ = run("encode_text", jnp.asarray(ids))
    from_emb, _ = run("encode_text", embeddings=emb, eot_index=eot)
    np.testing.assert_allclose(np.asarray(from_emb), np.asarray(from_ids), atol=1e-6)
    # Causal attention: editing an embedding after the pooled token changes nothing, before it does.
    eot = np.asarray(eot)
    i = int(np.argmin(eot))
    assert eot[i] < ids.shape[1] - 1
    delta = jnp.asarray(np.random.default_rng(0).normal(size=emb.shape[-1]), emb.dtype)  # not a constant shift
    after, before = emb.at[i, eot[i] + 1].add(delta), emb.at[i, 1].add(delta)
    out_after, _ = run("encode_text", embeddings=after, eot_index=eot)
    out_before, _ = run("encode_text", embeddings=before, eot_index=eot)
    np.testing.assert_allclose(np.asarray(out_after), np.asarray(from_ids), atol=1e-6)
    assert np.abs(np.asarray(out_before)[i] - np.asarray(from_ids)[i]).max() > 1e-3


def test_eot_positions_follow_transformers_rule():
    ids = np.array([[5, 9, 7, 7, 0], [5, 3, 9, 7, 7]])
    np.testing.assert_array_equal(np.asarray(clip.eot_positions(ids, 7)), [2, 3])  # first EOS
    np.testing.assert_array_equal(np.asarray(clip.eot_positions(ids, 2)), [1, 2])  # legacy: argmax


def test_text_without_ids_needs_eot_index(tiny_clip_dir, tiny_clip_config):
    bb = backbones.load(str(tiny_clip_dir))
    emb = jnp.zeros((1, 4, tiny_clip_config["text_config"]["hidden_size"]))
    with pytest.raises(ValueError, match="eot_index"):
        bb.model.apply({"params": bb.params}, embeddings=emb, method="encode_text")


def test_preprocessing_facts(tiny_clip_dir, tmp_path):
    import shutil

    bb = backbones.load(str(tiny_clip_dir))
    assert bb.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bb.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert bb.tokenizer is None  # no vocab.json/merges.txt in the directory
    d = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, d)
    (d / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    bb = backbones.load(str(d))
    assert bb.mean == (0.5, 0.5, 0.5) and bb.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("name", ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"])
def test_variants_match_transformers_parameter_counts(name):
    vision, text, embed_dim = clip.variant(name)
    model = clip.CLIP(vision, text, embed_dim)
    shapes = hf_clip.expected_params(model)
    ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=text.width,
            intermediate_size=4 * text.width,
            num_hidden_layers=text.depth,
            num_attention_heads=text.heads,
        ),
        vision_config=dict(
            hidden_size=vision.width,
            intermediate_size=4 * vision.width,
            num_hidden_layers=vision.depth,
            num_attention_heads=vision.heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
        ),
        projection_dim=embed_dim,
    )
    with torch.device("meta"):
        ref = transformers.CLIPModel(config)
    assert ours == sum(p.numel() for p in ref.parameters())
    assert clip.variant(name.replace("ViT-", "").replace("/", "-")) == (vision, text, embed_dim)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="Unknown CLIP variant"):
        clip.variant("ViT-H/99")


def _write_tiny_bpe(directory):
    """A byte-level CLIP BPE vocabulary: every byte alone and word-final, a few merges, SOT/EOT last."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    merges = [("c", "a"), ("ca", "t</w>"), ("o", "g</w>"), ("d", "og</w>"), ("p", "h"), ("ph", "o")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {tok: i for i, tok in enumerate(vocab)}
    (directory / "vocab.json").write_text(json.dumps(encoder))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return encoder


def test_directory_with_vocabulary_gets_a_working_tokenizer(tmp_path, tiny_clip_factory, tiny_clip_config):
    text_config = dict(
        tiny_clip_config["text_config"], vocab_size=520, bos_token_id=518, eos_token_id=519, pad_token_id=519
    )
    config = dict(tiny_clip_config, text_config=text_config)
    ref, path = tiny_clip_factory(config, seed=5)
    encoder = _write_tiny_bpe(path)
    assert len(encoder) == 520
    bb = backbones.load(str(path))
    assert bb.tokenizer is not None
    texts = ["a photo of a cat", "dog"]
    ids = np.asarray(bb.tokenize(texts))
    assert ids.shape == (2, text_config["max_position_embeddings"]) and ids.dtype == np.int32
    hf_tok = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    hf_ids = hf_tok(texts, padding="max_length", max_length=ids.shape[1], return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, hf_ids)
    assert encoder["cat</w>"] in ids[0] and encoder["dog</w>"] in ids[1]  # the merges were applied
    with torch.no_grad():
        ref_txt = _features(ref.get_text_features(input_ids=torch.from_numpy(hf_ids.astype(np.int64))))
    np.testing.assert_allclose(np.asarray(bb.encode_text(ids)), ref_txt, atol=1e-4, rtol=0)
