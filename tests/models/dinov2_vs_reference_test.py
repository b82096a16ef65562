"""DINOv2 parity with transformers' `Dinov2Model` / `Dinov2WithRegistersModel` (tiny random PyTorch models).

Every case is a random transformers model saved with `save_pretrained` (or `torch.save` of its in-memory
state dict), loaded back through `backbones.load`, and compared with the PyTorch forward pass at the
config resolution and at other resolutions, where both sides resample the position grid bicubically.

The f32 tolerance 1e-4 discriminates the interpolation kernel: resampling the position grid with
`jax.image.resize(..., "bicubic")` (Keys a = -0.5, different edge handling) instead of torch's kernel
moves the embeddings by more than 1e-2 on these grids (asserted in `test_jax_image_resize_would_fail`),
which is far above the tolerance, so a wrong kernel fails the parity tests.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.convert import hf_dinov2  # noqa: E402
from alpeft_jax.convert.common import CheckpointError  # noqa: E402
from alpeft_jax.models import dinov2  # noqa: E402

F32_TOL = 1e-4
# bf16 compute (params f32) vs the f32 reference: bf16 keeps 8 mantissa bits (rel. step 2**-8 ~ 4e-3).
# On these two-block models the outputs reach |x| ~ 4 and the measured max error is 0.02-0.06; 0.1 is
# about 2.5% of the output range.
BF16_TOL = 0.1

# name -> (model class, config kwargs, how to save)
CASES = {
    # odd width 21 = 3 heads x 7, plain GELU MLP, layer-scale 0.5, single model.safetensors
    "plain": (
        "Dinov2Model",
        dict(hidden_size=21, num_attention_heads=3, mlp_ratio=4, layerscale_value=0.5, image_size=28, patch_size=7),
        "safetensors",
    ),
    # SwiGLU with mlp_ratio 3 on width 21: hidden int(63 * 2/3) = 42 -> rounded up to 48; 5x5 grid; sharded
    "swiglu": (
        "Dinov2Model",
        dict(
            hidden_size=21,
            num_attention_heads=3,
            mlp_ratio=3,
            use_swiglu_ffn=True,
            layerscale_value=1e-5,
            image_size=35,
            patch_size=7,
        ),
        "sharded",
    ),
    # register tokens (antialiased position resampling)
    "registers": (
        "Dinov2WithRegistersModel",
        dict(hidden_size=24, num_attention_heads=3, num_register_tokens=3, image_size=28, patch_size=7),
        "safetensors",
    ),
    # in-memory names (q_proj, gate_proj/up_proj, ...) in pytorch_model.bin, no q/k/v bias
    "bin": (
        "Dinov2Model",
        dict(hidden_size=24, num_attention_heads=3, use_swiglu_ffn=True, qkv_bias=False, image_size=28, patch_size=7),
        "bin",
    ),
}
# (height, width): upsampled square, upsampled non-square, and a downsampled / non-divisible one.
RESOLUTIONS = [(42, 42), (35, 49), (22, 30)]
# The loader-format cases (sharded, .bin) run fewer resolutions to keep the file fast.
CASE_RESOLUTIONS = {"plain": RESOLUTIONS, "registers": RESOLUTIONS, "swiglu": [(35, 49)], "bin": [(42, 42)]}


def _make(name: str, root: str) -> tuple[object, str]:
    """Build a random transformers model for case `name`, save it under root/name, return (model, dir)."""
    cls_name, kwargs, how = CASES[name]
    cfg_cls = getattr(transformers, cls_name.replace("Model", "Config"))
    config = cfg_cls(num_hidden_layers=2, **kwargs)
    torch.manual_seed(sum(map(ord, name)))
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # make every parameter (LN, layer-scale, mask/register tokens) non-trivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = os.path.join(root, name)
    if how == "safetensors":
        model.save_pretrained(path)
    elif how == "sharded":
        model.save_pretrained(path, max_shard_size="8KB")
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    else:
        config.save_pretrained(path)
        torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
    return model, path


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, backbones.Backbone]]:
    """Each case: (torch model, loaded f32 Backbone)."""
    root = str(tmp_path_factory.mktemp("dinov2"))
    out = {}
    for name in CASES:
        model, path = _make(name, root)
        out[name] = (model, backbones.load(path))
    return out


def _images(h: int, w: int, b: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, h, w, 3)).astype(np.float32)


def _torch(model: object, x: np.ndarray, mask: np.ndarray | None = None) -> object:
    with torch.no_grad():
        kw = {} if mask is None else {"bool_masked_pos": torch.from_numpy(mask)}
        return model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2), **kw)


def _config_res(bb: backbones.Backbone) -> tuple[int, int]:
    side = bb.model.patch_size * bb.model.pos_grid
    return side, side


def _diff(a: object, b: object) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers(cases, name):
    """pooler_output, patch tokens and register tokens equal transformers' at several resolutions (f32)."""
    model, bb = cases[name]
    r = bb.model.num_registers
    for hw in [_config_res(bb), *CASE_RESOLUTIONS[name]]:
        x = _images(*hw)
        ref = _torch(model, x)
        emb, aux = bb.apply("encode_image", x)
        assert emb.shape == (2, bb.embed_dim)
        assert aux["patch_tokens"].shape == (2, (hw[0] // 7) * (hw[1] // 7), bb.embed_dim)
        assert _diff(emb, ref.pooler_output) <= F32_TOL, hw
        assert _diff(aux["pooled"], ref.pooler_output) <= F32_TOL, hw
        assert _diff(aux["cls_token"], ref.last_hidden_state[:, 0]) <= F32_TOL, hw
        assert _diff(aux["patch_tokens"], ref.last_hidden_state[:, 1 + r :]) <= F32_TOL, hw
        assert _diff(aux["register_tokens"], ref.last_hidden_state[:, 1 : 1 + r]) <= F32_TOL, hw
        np.testing.assert_allclose(bb.encode_image(x), ref.pooler_output.numpy(), atol=F32_TOL, rtol=0)


@pytest.mark.parametrize("name,hw", [("plain", (42, 42)), ("registers", (35, 49))])
def test_bf16_close_to_reference(cases, name, hw):
    """bf16 compute stays within BF16_TOL of the f32 transformers output; params stay f32."""
    model, bb = cases[name]
    path = bb.source
    bb16 = backbones.load(path, dtype=jnp.bfloat16)
    assert bb16.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bb16.params))
    x = _images(*hw, seed=1)
    ref = _torch(model, x)
    emb, aux = bb16.apply("encode_image", jnp.asarray(x, jnp.bfloat16))
    assert emb.dtype == jnp.bfloat16
    assert _diff(emb, ref.pooler_output) <= BF16_TOL
    assert _diff(aux["patch_tokens"], ref.last_hidden_state[:, 1 + bb.model.num_registers :]) <= BF16_TOL


@pytest.mark.parametrize("name,hw", [("plain", (28, 28)), ("registers", (35, 49))])
def test_mask_token_matches_bool_masked_pos(cases, name, hw):
    """A patch mask replaces patch embeddings by the mask token as transformers' bool_masked_pos does."""
    model, bb = cases[name]
    x = _images(*hw, seed=2)
    n = (hw[0] // 7) * (hw[1] // 7)
    mask = np.random.default_rng(3).random((2, n)) < 0.4
    ref = _torch(model, x, mask)
    emb, aux = bb.apply("encode_image", x, mask=jnp.asarray(mask))
    assert _diff(emb, ref.pooler_output) <= F32_TOL
    assert _diff(aux["patch_tokens"], ref.last_hidden_state[:, 1 + bb.model.num_registers :]) <= F32_TOL
    # and the mask changes the output (the test would catch an ignored mask)
    assert _diff(emb, bb.encode_image(x)) > 10 * F32_TOL


@pytest.mark.parametrize("name", list(CASES))
def test_stem_matches_embeddings(cases, name):
    """image_stem equals transformers' embeddings module (patches, class, registers, resampled positions)."""
    model, bb = cases[name]
    for hw in [_config_res(bb), *RESOLUTIONS]:
        x = _images(*hw, seed=4)
        with torch.no_grad():
            ref = model.embeddings(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        assert _diff(bb.apply("image_stem", x), ref) <= F32_TOL, hw


def test_composition_equals_encode_image(cases):
    """stem -> blocks[0:k] -> blocks[k:n] -> head is encode_image (the frozen-prefix caching contract)."""
    _, bb = cases["registers"]
    x = _images(35, 49, seed=5)
    n = bb.model.num_blocks
    assert n == 2
    emb, aux = bb.apply("encode_image", x)
    h = bb.apply("image_stem", x)
    assert h.shape == (2, 1 + 3 + 5 * 7, bb.embed_dim)
    blocks = jax.jit(
        lambda h, start, stop: bb.model.apply({"params": bb.params}, h, start, stop, method="image_blocks"),
        static_argnums=(1, 2),
    )
    h = blocks(blocks(h, 0, 1), 1, n)
    emb2, aux2 = bb.apply("image_head", h)
    np.testing.assert_allclose(emb2, emb, atol=1e-5, rtol=0)  # jit boundaries only change f32 rounding
    for key in aux:
        np.testing.assert_allclose(aux2[key], aux[key], atol=1e-5, rtol=0)


def _torch_resize(grid: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    t = torch.from_numpy(grid.transpose(2, 0, 1)[None].astype(np.float32))
    out = torch.nn.functional.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return out[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("antialias", [False, True])
def test_resample_grid_matches_torch_interpolate(antialias):
    """The NumPy resampling matrices reproduce torch's bicubic interpolate (up and down, non-square)."""
    rng = np.random.default_rng(6)
    for g in (2, 4, 5, 37):
        grid = rng.standard_normal((g, g, 5)).astype(np.float32)
        for size in [(g, g), (g + 2, g + 2), (g + 1, g + 3), (max(g - 1, 2), g + 1), (max(g // 2, 2), 3), (16, 16)]:
            ref = _torch_resize(grid, size, antialias)
            mh = dinov2.bicubic_resize_matrix(g, size[0], antialias)
            mw = dinov2.bicubic_resize_matrix(g, size[1], antialias)
            got = np.einsum("hi,wj,ijc->hwc", mh, mw, grid)
            assert _diff(got, ref) <= 1e-5, (g, size)


def test_jax_image_resize_would_fail(cases):
    """jax.image.resize's bicubic misses torch's by far more than the parity tolerance (the kernel matters)."""
    model, bb = cases["plain"]
    g, w = bb.model.pos_grid, bb.model.width
    grid = model.embeddings.position_embeddings[0, 1:].detach().numpy().reshape(g, g, w)
    for size in [(6, 6), (5, 7)]:
        ref = _torch_resize(grid, size, antialias=False)
        wrong = jax.image.resize(jnp.asarray(grid), (*size, w), "bicubic")
        assert _diff(wrong, ref) > 100 * F32_TOL, size
        assert _diff(dinov2.resample_grid(jnp.asarray(grid), *size), ref) <= 1e-5


def test_backbone_metadata(cases, tmp_path):
    """Family, embed size, default 224/ImageNet preprocessing, and preprocessor_config.json overrides."""
    model, bb = cases["plain"]
    assert bb.family == "dinov2" and bb.tokenizer is None and not bb.has_text
    assert bb.embed_dim == 21 and bb.image_size == 224
    assert bb.mean == (0.485, 0.456, 0.406) and bb.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="no tokenizer"):
        bb.tokenize(["x"])
    path = str(tmp_path / "with_pre")
    model.save_pretrained(path)
    pre = {
        "crop_size": {"height": 196, "width": 196},
        "do_center_crop": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "size": {"shortest_edge": 224},
    }
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f)
    bb2 = backbones.load(path)
    assert bb2.image_size == 196 and bb2.mean == (0.5, 0.5, 0.5) and bb2.std == (0.25, 0.25, 0.25)
    assert bb.eval_resize == 256 / 224 and bb2.eval_resize == 224 / 196 and bb2.crop_offset == "floor"


# facebook/dinov2-{small,base,large,giant}'s preprocessor_config.json
DINOV2_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}


def _pixels(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth uint8 image with noise (so that resampling differences would show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx[..., None] / (3 + 2 * np.arange(3)) + yy[..., None] / 7.0)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("image_size", [None, 112])
def test_eval_view_equals_the_transformers_dinov2_processor(cases, tmp_path, image_size):
    """A loaded DINOv2 checkpoint's evaluation view is what transformers' processor (built offline from the
    checkpoint's preprocessor_config.json) gives: shorter side 256 (bicubic), centre crop 224, floored offsets.
    With data.image_size=112 the view scales (shorter side 128, crop 112), as a processor of that size does."""
    from transformers import AutoImageProcessor

    from alpeft_jax.data import preprocess as pp

    model, _ = cases["plain"]
    path = str(tmp_path / "dinov2")
    model.save_pretrained(path)
    pre = dict(DINOV2_PROCESSOR)
    if image_size:
        pre.update(size={"shortest_edge": 128}, crop_size={"height": image_size, "width": image_size})
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(DINOV2_PROCESSOR, f)  # the checkpoint keeps the 224 processor; the run asks for image_size
    bb = backbones.load(path)
    spec = pp.resolve_spec(image_size or bb.image_size, bb.mean, bb.std, resize_ratio=bb.eval_resize, crop="floor")
    assert (spec.image_size, spec.resize_to) == ((112, 128) if image_size else (224, 256))
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f)
    processor = AutoImageProcessor.from_pretrained(path)
    # EuroSAT's 64x64 (upsampled), odd margins on both sides (floor vs round differ), portrait and landscape
    for k, (h, w) in enumerate([(64, 64), (301, 451), (517, 389), (256, 256), (99, 300)]):
        img = _pixels(h, w, k)
        want = np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
        got = pp.eval_image(img, spec)
        assert got.shape == want.shape, (h, w)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{h}x{w}")
    # the crop offset matters: rounding it (torchvision's rule) would not match the processor
    rounded = pp.resolve_spec(bb.image_size, bb.mean, bb.std, resize_ratio=bb.eval_resize, crop="round")
    if not image_size:
        img = _pixels(301, 451, 1)
        want = np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
        assert np.abs(pp.eval_image(img, rounded) - want).max() > 0.1


def test_architecture_from_config(cases):
    """The module read from config.json has the SwiGLU rounding, registers and eps of the checkpoint."""
    assert cases["swiglu"][1].model.mlp_dim == 48 and cases["swiglu"][1].model.swiglu
    assert cases["swiglu"][1].model.pos_grid == 5
    assert cases["registers"][1].model.num_registers == 3 and cases["registers"][1].model.pos_antialias
    assert cases["plain"][1].model.ln_eps == 1e-6 and not cases["plain"][1].model.pos_antialias


@pytest.mark.parametrize("width,ratio", [(21, 3), (24, 4), (1536, 4), (100, 3)])
def test_swiglu_hidden_matches_transformers(width, ratio):
    """swiglu_hidden equals the hidden size of transformers' Dinov2SwiGLUFFN."""
    from transformers.models.dinov2.modeling_dinov2 import Dinov2SwiGLUFFN

    cfg = transformers.Dinov2Config(hidden_size=width, mlp_ratio=ratio, use_swiglu_ffn=True)
    with torch.device("meta"):
        ffn = Dinov2SwiGLUFFN(cfg)
    assert dinov2.swiglu_hidden(width, ratio) == ffn.down_proj.in_features


@pytest.mark.parametrize(
    "variant,hf",
    [
        ("S/14", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)),
        ("B/14", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)),
        pytest.param(
            "L/14", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16), marks=pytest.mark.slow
        ),
        pytest.param(
            "g/14",
            dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_variants_match_transformers_parameter_count(variant, hf):
    """Short variant names decode to the facebook/dinov2-* architectures (same parameter count per tensor)."""
    cfg = transformers.Dinov2Config(image_size=518, patch_size=14, **hf)
    with torch.device("meta"):
        ref = transformers.Dinov2Model(cfg)
    model = dinov2.dinov2(variant)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 14, 14, 3), jnp.float32))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert n == sum(p.numel() for p in ref.parameters())
    assert model.num_blocks == hf["num_hidden_layers"]


def test_bad_inputs_and_checkpoints(cases, tmp_path):
    """Clear errors: unknown variant, wrong image layout, mask without a mask token, incomplete weights."""
    _, bb = cases["plain"]
    with pytest.raises(ValueError, match="Unknown DINOv2 variant"):
        dinov2.decode_variant("H/14")
    with pytest.raises(ValueError, match="NHWC"):
        bb.apply("encode_image", np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="one per patch"):
        bb.apply("encode_image", _images(28, 28), mask=jnp.zeros((2, 5), bool))
    no_mask = dinov2.DinoV2(width=12, depth=1, num_heads=2, mlp_dim=24, patch_size=7, pos_grid=2, use_mask_token=False)
    params = jax.eval_shape(no_mask.init, jax.random.PRNGKey(0), _images(14, 14, 1))
    assert "mask_token" not in params["params"]
    with pytest.raises(ValueError, match="no mask token"):
        jax.eval_shape(lambda p, x, m: no_mask.apply(p, x, mask=m), params, _images(14, 14, 1), jnp.zeros((1, 4), bool))
    # a checkpoint missing a tensor / with a config that does not fit its weights
    model, _ = cases["plain"]
    path = str(tmp_path / "broken")
    sd = {k: v for k, v in model.state_dict().items() if "layer_scale2" not in k}
    model.save_pretrained(path, state_dict=sd)
    with pytest.raises(CheckpointError, match="missing 2"):
        backbones.load(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["hidden_act"] = "mish"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="hidden_act"):
        hf_dinov2.load(path)


def test_image_classification_checkpoint_loads_its_backbone(cases, tmp_path):
    """A Dinov2ForImageClassification directory loads its `dinov2.` weights; the classifier is dropped."""
    model, _ = cases["plain"]
    clf = transformers.Dinov2ForImageClassification(
        transformers.Dinov2Config(**{**model.config.to_dict(), "num_labels": 5})
    ).eval()
    clf.dinov2.load_state_dict(model.state_dict())
    path = str(tmp_path / "clf")
    clf.save_pretrained(path)
    bb = backbones.load(path)
    x = _images(35, 49, seed=7)
    assert _diff(bb.encode_image(x), _torch(model, x).pooler_output) <= F32_TOL
