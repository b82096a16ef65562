"""Hugging Face DINOv2 checkpoints (`Dinov2Model`, `Dinov2WithRegistersModel`) -> `alpeft_jax.models.dinov2`.

    bb = load("/path/to/dinov2-base")          # a save_pretrained directory (usually via backbones.load)

Reads single or sharded safetensors and `pytorch_model.bin` (torch needed for the latter). Both the
on-disk names (`attention.attention.query`, `mlp.weights_in`, ...) and transformers' in-memory names
(`attention.q_proj`, `mlp.gate_proj`/`up_proj`, ...) are accepted, with or without the `dinov2.` prefix
of the image-classification models (whose classifier is dropped).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.convert.common import (
    CheckpointError,
    conv_oihw_to_hwio,
    convert,
    read_config,
    read_hf_directory,
    transpose_linear,
)
from alpeft_jax.models.backbone import Backbone
from alpeft_jax.models.dinov2 import DinoV2, swiglu_hidden
from alpeft_jax.models.transformer import ACTIVATIONS

__all__ = ["HOOKS", "RULES", "load", "model_from_config", "preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224  # transformers' DINOv2 image processor: shorter side 256, centre crop 224
DEFAULT_RESIZE = 256

_P = r"(?:dinov2(?:_with_registers)?\.)?"  # prefix of the *ForImageClassification checkpoints
_L = _P + r"encoder\.layer\.(\d+)\."


def _linear(src: str, dst: str) -> list[tuple[str, str]]:
    """Rules for one linear layer: `<src>.weight|bias` of encoder layer i -> `encoder/block_i/<dst>`."""
    return [
        (_L + src + r"\.weight", r"encoder/block_\1/" + dst + "/kernel"),
        (_L + src + r"\.bias", r"encoder/block_\1/" + dst + "/bias"),
    ]


RULES: list[tuple[str, str | None]] = [
    (r"classifier\..*", None),
    (_P + r"embeddings\.cls_token", "cls_token"),
    (_P + r"embeddings\.mask_token", "mask_token"),
    (_P + r"embeddings\.register_tokens", "reg_tokens"),
    (_P + r"embeddings\.position_embeddings", "pos_embed"),
    (_P + r"embeddings\.patch_embeddings\.projection\.weight", "patch_embed/kernel"),
    (_P + r"embeddings\.patch_embeddings\.projection\.bias", "patch_embed/bias"),
    (_L + r"norm([12])\.weight", r"encoder/block_\1/ln\2/scale"),
    (_L + r"norm([12])\.bias", r"encoder/block_\1/ln\2/bias"),
    (_L + r"layer_scale([12])\.lambda1", r"encoder/block_\1/ls\2/scale"),
    *_linear(r"attention\.(?:attention\.query|q_proj)", "attn/q"),
    *_linear(r"attention\.(?:attention\.key|k_proj)", "attn/k"),
    *_linear(r"attention\.(?:attention\.value|v_proj)", "attn/v"),
    *_linear(r"attention\.(?:output\.dense|o_proj)", "attn/out"),
    *_linear(r"mlp\.fc1", "mlp/fc1"),
    *_linear(r"mlp\.fc2", "mlp/fc2"),
    *_linear(r"mlp\.weights_in", "mlp/w12"),  # [gate; up] stacked on the output axis
    *_linear(r"mlp\.(?:weights_out|down_proj)", "mlp/w3"),
    (_P + r"layernorm\.weight", "norm/scale"),
    (_P + r"layernorm\.bias", "norm/bias"),
]

HOOKS = [
    (r"patch_embed/kernel", conv_oihw_to_hwio),
    (r".*/kernel", transpose_linear),
]


def _fuse_gate_up(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stack in-memory-named SwiGLU `gate_proj`/`up_proj` into the on-disk `weights_in` layout."""
    out = dict(state)
    for name in [k for k in state if re.fullmatch(r".*\.mlp\.gate_proj\.(weight|bias)", k)]:
        up = name.replace(".gate_proj.", ".up_proj.")
        if up not in state:
            raise CheckpointError(f"{name} has no matching {up}: the SwiGLU MLP needs both halves.")
        out[name.replace(".gate_proj.", ".weights_in.")] = np.concatenate([out.pop(name), out.pop(up)], 0)
    return out


def _zero_qkv_bias(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add zero q/k/v biases for `qkv_bias=False` checkpoints (the shared attention always has biases)."""
    out = dict(state)
    pat = r"(.*attention\.(?:attention\.(?:query|key|value)|[qkv]_proj))\.weight"
    for name, w in state.items():
        m = re.fullmatch(pat, name)
        if m and m.group(1) + ".bias" not in state:
            out[m.group(1) + ".bias"] = np.zeros(w.shape[0], w.dtype)
    return out


def _square(value: Any, what: str, path: str) -> int:
    """An int config entry that may be given as a square [h, w] pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{path}: config.json {what}={value} is not square; only square is supported.")
        value = value[0]
    return int(value)


def model_from_config(config: dict[str, Any], dtype: Any = jnp.float32, path: str = "config.json") -> DinoV2:
    """Build the `DinoV2` module described by a transformers Dinov2 / Dinov2WithRegisters config dict."""
    model_type = config.get("model_type", "dinov2")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a DINOv2 checkpoint.")
    if int(config.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{path}: num_channels={config['num_channels']}; only RGB (3) is supported.")
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported; known: {', '.join(ACTIVATIONS)}.")
    width = int(config.get("hidden_size", 768))
    heads = int(config.get("num_attention_heads", 12))
    if width % heads or int(config.get("head_dim", width // heads)) != width // heads:
        raise CheckpointError(f"{path}: hidden_size {width} must equal num_attention_heads {heads} x head_dim.")
    patch = _square(config.get("patch_size", 14), "patch_size", path)
    image = _square(config.get("image_size", 518), "image_size", path)
    ratio = float(config.get("mlp_ratio", 4))
    swiglu = bool(config.get("use_swiglu_ffn", False))
    registers = model_type == "dinov2_with_registers"
    return DinoV2(
        width=width,
        depth=int(config.get("num_hidden_layers", 12)),
        num_heads=heads,
        mlp_dim=swiglu_hidden(width, ratio) if swiglu else int(width * ratio),
        patch_size=patch,
        pos_grid=image // patch,
        num_registers=int(config.get("num_register_tokens", 4)) if registers else 0,
        swiglu=swiglu,
        layer_scale=True,
        use_mask_token=True if registers else bool(config.get("use_mask_token", True)),
        ln_eps=float(config.get("layer_norm_eps", 1e-6)),
        activation=act,
        pos_antialias=registers,
        dtype=dtype,
    )


def preprocessing(path: str) -> tuple[int, tuple[float, ...], tuple[float, ...], float]:
    """(image_size, mean, std, evaluation resize ratio) from `preprocessor_config.json` when present, else the
    Hugging Face DINOv2 processor's: shorter side 256, centre crop 224, ImageNet statistics."""
    pre_path = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(pre_path):
        return DEFAULT_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, DEFAULT_RESIZE / DEFAULT_IMAGE_SIZE
    try:
        with open(pre_path) as f:
            pre = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"Bad preprocessor_config.json in {path}: {e}") from None
    size = pre.get("size", DEFAULT_RESIZE)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    crop: Any = pre.get("crop_size", DEFAULT_IMAGE_SIZE) if pre.get("do_center_crop", True) else None
    if crop is None:
        crop = shortest or (size.get("height", DEFAULT_IMAGE_SIZE) if isinstance(size, dict) else DEFAULT_IMAGE_SIZE)
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width", DEFAULT_IMAGE_SIZE))
    mean = tuple(float(v) for v in pre.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in pre.get("image_std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{pre_path}: image_mean/image_std must have 3 entries, got {mean} / {std}.")
    resize = int(shortest) if shortest and pre.get("do_resize", True) else int(crop)
    if resize < int(crop):
        raise CheckpointError(f"{pre_path}: size.shortest_edge {resize} is below crop_size {crop}; fix the file.")
    return int(crop), mean, std, resize / int(crop)


def load(path: str, dtype: Any = jnp.float32) -> Backbone:
    """Load a transformers DINOv2 `save_pretrained` directory as a `Backbone` (params float32, compute `dtype`)."""
    config = read_config(path)
    model = model_from_config(config, dtype, os.path.join(path, "config.json"))
    state = read_hf_directory(path)
    state = _fuse_gate_up(state)
    if not config.get("qkv_bias", True):
        state = _zero_qkv_bias(state)
    side = model.patch_size * model.pos_grid
    dummy = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), dummy)["params"]
    params = convert(state, expected, RULES, HOOKS, source=path)
    image_size, mean, std, eval_resize = preprocessing(path)
    return Backbone(
        family="dinov2",
        model=model,
        params=jax.tree.map(jnp.asarray, params),
        image_size=image_size,
        mean=mean,
        std=std,
        embed_dim=model.width,
        config=config,
        tokenizer=None,
        source=path,
        eval_resize=eval_resize,
        crop_offset="floor",
    )
