"""OpenAI / open_clip state-dict loader (alpeft_jax.convert.openai_clip) against open_clip's PyTorch CLIP.

Covered: OpenAI-format ViT CLIP as .safetensors, .pt (torch.save, zip), a traced TorchScript archive
(`torch.jit.trace_module` of the whole model, as OpenAI released theirs) and a `{"state_dict": {"module.*"}}`
training checkpoint; open_clip configs beside the weights (`open_clip_config.json` with `model_cfg` and
`preprocess_cfg` for a ViT with exact GELU and 16-wide heads; `<name>.json` for a ResNet with 32-wide heads);
and bad input: unknown architecture, a resized tensor, a missing tensor, a config that disagrees with the
weights or asks for an unsupported feature, head counts that cannot be inferred, forbidden pickle globals,
and a TorchScript archive without torch. The reference is open_clip's model code loaded by file path
(`import open_clip` needs torchvision, absent here; a stub exists only while open_clip/utils.py is imported).
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
from _required import require_open_clip

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
require_open_clip(module=True)

from _open_clip_ref import open_clip_model_module  # noqa: E402

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.convert import openai_clip  # noqa: E402
from alpeft_jax.convert.common import CheckpointError  # noqa: E402
from alpeft_jax.models.clip import CLIP  # noqa: E402
from alpeft_jax.models.clip_resnet import CLIPResNet  # noqa: E402

# OpenAI layout, heads = width // 64 inferred from the shapes.
VIT = dict(
    embed_dim=24,
    vision_cfg=dict(layers=2, width=64, image_size=32, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
    quick_gelu=True,
)
# open_clip configs that the shapes alone cannot describe: 3 and 4 heads, exact GELU, a 100-token vocabulary
# (and an [H, W] image size).
VIT_CFG = dict(
    embed_dim=20,
    vision_cfg=dict(layers=2, width=48, head_width=16, image_size=[48, 48], patch_size=16),
    text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=4, layers=2),
)
RN_CFG = dict(
    embed_dim=16,
    quick_gelu=True,
    vision_cfg=dict(layers=[1, 1, 1, 1], width=8, head_width=32, image_size=96, patch_size=None),
    text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
)
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _build(cfg: dict, seed: int):
    """A tiny random open_clip CLIP in eval mode with every tensor perturbed."""
    ocm = open_clip_model_module()
    torch.manual_seed(seed)
    model = ocm.CLIP(
        cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False),
    ).eval()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or name.endswith("attn_mask"):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand_like(t))
            else:
                t.add_(0.1 * torch.randn_like(t))
    return model


def _state(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save_safetensors(state: dict, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _ids(cfg: dict, seed: int = 0) -> np.ndarray:
    """Token ids in OpenAI format: SOT-like start, the largest id at the end-of-text position, zero padding."""
    t = cfg["text_cfg"]
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, t["vocab_size"] - 1, size=(3, t["context_length"]))
    for i, eot in enumerate((3, t["context_length"] - 1, 7)):
        ids[i, eot] = t["vocab_size"] - 1
        ids[i, eot + 1 :] = 0
    return ids


def _reference(model, cfg: dict, ids: np.ndarray, seed: int = 0) -> dict:
    size = int(np.atleast_1d(cfg["vision_cfg"]["image_size"])[0])
    images = np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images)).numpy()
        txt = model.encode_text(torch.from_numpy(ids).long()).numpy()
        scale = float(model.logit_scale.exp())
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return dict(nhwc=images.transpose(0, 2, 3, 1), ids=ids, img=img, txt=txt, logits=scale * unit(img) @ unit(txt).T)


def _assert_parity(bb: backbones.Backbone, ref: dict) -> None:
    np.testing.assert_allclose(np.asarray(bb.encode_image(ref["nhwc"])), ref["img"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(bb.encode_text(ref["ids"])), ref["txt"], atol=1e-4, rtol=0)
    logits, _ = bb.apply("__call__", ref["nhwc"], ref["ids"])
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-3, rtol=1e-5)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """(model, state, reference outputs, directory) of the OpenAI-layout tiny ViT."""
    model = _build(VIT, seed=0)
    from alpeft_jax.tokenizer import Tokenizer

    ids = Tokenizer.default()(["a photo of a dog", "two words", "a"])
    return model, _state(model), _reference(model, VIT, ids), tmp_path_factory.mktemp("openai_vit")


def test_vit_safetensors_pt_and_training_checkpoint(vit):
    model, state, ref, d = vit
    torch.save(model.state_dict(), d / "vit.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, d / "vit_ddp.pth")
    paths = [_save_safetensors(state, d / "vit.safetensors"), str(d / "vit.pt"), str(d / "vit_ddp.pth")]
    for path in paths:
        bb = backbones.load(path)
        assert isinstance(bb.model, CLIP) and bb.family == "clip" and bb.config["architecture"] == "vit"
        v, t = bb.model.vision, bb.model.text
        assert (v.width, v.depth, v.heads, v.patch_size, v.image_size, v.activation) == (64, 2, 1, 8, 32, "quick_gelu")
        assert (t.width, t.depth, t.heads, t.context_length, t.vocab_size) == (64, 1, 1, 77, 49408)
        assert bb.image_size == 32 and bb.embed_dim == 24 and bb.mean == openai_clip.CLIP_MEAN
        np.testing.assert_array_equal(bb.tokenize(["a photo of a dog", "two words", "a"]), ref["ids"])
        _assert_parity(bb, ref)


def test_vit_torchscript_archive(vit):
    model, _, ref, d = vit
    x = torch.zeros(1, 3, 32, 32)
    ids = torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace_module(
        model, {"forward": (x, ids), "encode_image": (x,), "encode_text": (ids,)}, check_trace=False
    )
    torch.jit.save(traced, str(d / "vit_jit.pt"))
    bb = backbones.load(str(d / "vit_jit.pt"))
    _assert_parity(bb, ref)


def test_torchscript_without_torch_says_what_to_install(vit, monkeypatch):
    path = vit[3] / "vit_jit_notorch.pt"
    torch.jit.save(torch.jit.trace_module(vit[0], {"encode_image": (torch.zeros(1, 3, 32, 32),)}), str(path))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(CheckpointError, match=r"TorchScript archive .* needs torch: pip install"):
        openai_clip.load(str(path))


def test_open_clip_config_beside_weights_vit(tmp_path):
    model = _build(VIT_CFG, seed=2)
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": VIT_CFG, "preprocess_cfg": {"mean": MEAN, "std": STD}})
    )
    bb = backbones.load(str(tmp_path / "open_clip_pytorch_model.bin"))
    v, t = bb.model.vision, bb.model.text
    assert (v.heads, v.activation, t.heads, t.activation) == (3, "gelu", 4, "gelu")
    assert bb.mean == tuple(MEAN) and bb.std == tuple(STD)
    assert bb.tokenizer is None  # not the standard 49,408-token vocabulary
    _assert_parity(bb, _reference(model, VIT_CFG, _ids(VIT_CFG)))


def test_open_clip_config_named_like_weights_resnet(tmp_path):
    model = _build(RN_CFG, seed=3)
    _save_safetensors(_state(model), tmp_path / "rn_tiny.safetensors")
    (tmp_path / "rn_tiny.json").write_text(json.dumps(RN_CFG))
    bb = backbones.load(str(tmp_path / "rn_tiny.safetensors"))
    assert isinstance(bb.model, CLIPResNet) and bb.config["architecture"] == "resnet"
    assert bb.model.vision.heads == 8 * 32 // 32 and bb.image_size == 96 and bb.model.text.heads == 2
    _assert_parity(bb, _reference(model, RN_CFG, _ids(RN_CFG)))


# ------------------------------------------------------------------------------------------ bad input


def _error(path: str) -> str:
    with pytest.raises(CheckpointError) as info:
        backbones.load(path)
    return str(info.value)


def test_unknown_architecture(vit, tmp_path):
    state = {k: v for k, v in vit[1].items() if not k.startswith("visual.")}
    state["visual.trunk.stem.weight"] = torch.zeros(4, 3, 3, 3)
    msg = _error(_save_safetensors(state, tmp_path / "odd.safetensors"))
    assert "unknown CLIP architecture" in msg and "visual.layer1" in msg


def test_shape_mismatch_names_the_tensor(vit, tmp_path):
    state = dict(vit[1])
    state["visual.transformer.resblocks.1.mlp.c_proj.weight"] = torch.zeros(64, 255)
    msg = _error(_save_safetensors(state, tmp_path / "resized.safetensors"))
    assert "shape mismatch 1: visual.transformer.resblocks.1.mlp.c_proj.weight" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_resnet_shape_mismatch_and_missing_tensor(tmp_path):
    state = _state(_build(RN_CFG, seed=4))
    (tmp_path / "a.json").write_text(json.dumps(RN_CFG))
    (tmp_path / "b.json").write_text(json.dumps(RN_CFG))
    resized = {**state, "visual.layer2.0.conv2.weight": torch.zeros(16, 16, 1, 1)}
    msg = _error(_save_safetensors(resized, tmp_path / "a.safetensors"))
    assert "shape mismatch 1: visual.layer2.0.conv2.weight -> img/blocks_1/conv2/kernel" in msg
    dropped = {k: v for k, v in state.items() if k != "visual.layer3.0.downsample.1.running_var"}
    assert "missing 1: img/blocks_2/downsample/bn/var" in _error(_save_safetensors(dropped, tmp_path / "b.safetensors"))


def test_corrupt_fused_qkv_is_named(vit, tmp_path):
    state = dict(vit[1])
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(190, 64)
    assert "txt/encoder/block_0/attn/in_proj/kernel" in _error(_save_safetensors(state, tmp_path / "qkv.safetensors"))


def test_config_that_disagrees_or_asks_too_much(tmp_path):
    state = _state(_build(VIT_CFG, seed=5))
    cases = {
        "embed": ({**VIT_CFG, "embed_dim": 99}, "embed_dim = 99"),
        "timm": (
            {**VIT_CFG, "vision_cfg": {**VIT_CFG["vision_cfg"], "timm_model_name": "vit_tiny"}},
            "timm_model_name",
        ),
        "textpool": ({**VIT_CFG, "text_cfg": {**VIT_CFG["text_cfg"], "pool_type": "last"}}, "pool_type"),
    }
    for name, (cfg, needle) in cases.items():
        os.makedirs(tmp_path / name)
        path = _save_safetensors(state, tmp_path / name / "w.safetensors")
        (tmp_path / name / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        assert needle in _error(path)


def test_heads_not_inferable_without_config(tmp_path):
    state = _state(_build(VIT_CFG, seed=6))  # text width 32: width // 64 == 0 heads
    msg = _error(_save_safetensors(state, tmp_path / "noconfig.safetensors"))
    assert "attention heads" in msg and "open_clip_config.json" in msg


def test_forbidden_pickle_global_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    legacy = tmp_path / "evil.pt"
    with open(legacy, "wb") as f:
        pickle.dump(Exploit(), f)
    assert "refusing to load" in _error(str(legacy))
    zipped = tmp_path / "module.pt"
    torch.save({"layer": torch.nn.Linear(2, 2)}, zipped)  # a pickled module, not a state dict
    assert "refusing to load" in _error(str(zipped))


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        openai_clip.load("/nonexistent/dir/model.safetensors")
