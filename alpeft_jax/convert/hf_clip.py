"""Hugging Face `CLIPModel` directories -> `alpeft_jax.models.clip.CLIP` + converted params.

    bb = hf_clip.load("/path/to/clip-vit-base-patch16")   # config.json + model.safetensors (or shards / .bin)

The architecture comes from config.json; the weights are renamed by `rules` and reshaped by `hooks`
(see `alpeft_jax.convert.common.convert`), strictly: every model parameter must be found with its shape
and every checkpoint tensor used, except the `position_ids` buffers, which are dropped on purpose.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from alpeft_jax.convert.common import (
    CheckpointError,
    conv_oihw_to_hwio,
    convert,
    read_config,
    read_hf_directory,
    transpose_linear,
)
from alpeft_jax.models.backbone import Backbone
from alpeft_jax.models.clip import CLIP, CLIP_MEAN, CLIP_STD, TextConfig, VisionConfig
from alpeft_jax.models.transformer import ACTIVATIONS

__all__ = ["CLIP_MEAN", "CLIP_STD", "expected_params", "hooks", "load", "model_from_config", "rules"]


# transformers' CLIPVisionConfig / CLIPTextConfig / CLIPConfig defaults: save_pretrained writes only the
# values that differ from these, so a missing key means the default.
_VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
_TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)
_PROJECTION_DIM = 512
STANDARD_VOCAB_SIZE = 49408  # the released CLIP BPE vocabulary
_LOGIT_SCALE_INIT = 2.6592


def _tower_rules(hf: str, ours: str) -> list[tuple[str, str | None]]:
    """Renames shared by both towers (`hf` = text_model | vision_model, `ours` = txt | img)."""
    layer = rf"{hf}\.encoder\.layers\.(\d+)\."
    block = rf"{ours}/encoder/block_\1"
    return [
        (rf"{layer}self_attn\.(q|k|v)_proj\.weight", rf"{block}/attn/\2/kernel"),
        (rf"{layer}self_attn\.(q|k|v)_proj\.bias", rf"{block}/attn/\2/bias"),
        (rf"{layer}self_attn\.out_proj\.weight", rf"{block}/attn/out/kernel"),
        (rf"{layer}self_attn\.out_proj\.bias", rf"{block}/attn/out/bias"),
        (rf"{layer}layer_norm(1|2)\.weight", rf"{block}/ln\2/scale"),
        (rf"{layer}layer_norm(1|2)\.bias", rf"{block}/ln\2/bias"),
        (rf"{layer}mlp\.(fc1|fc2)\.weight", rf"{block}/mlp/\2/kernel"),
        (rf"{layer}mlp\.(fc1|fc2)\.bias", rf"{block}/mlp/\2/bias"),
        (rf"{hf}\.embeddings\.position_ids", None),  # a buffer (arange), not a parameter: dropped on purpose
        (rf"{hf}\.embeddings\.position_embedding\.weight", f"{ours}/pos_embed"),
    ]


# Checkpoint tensor name -> Flax path; first match wins, None drops the tensor.
rules: list[tuple[str, str | None]] = [
    *_tower_rules("vision_model", "img"),
    *_tower_rules("text_model", "txt"),
    (r"vision_model\.embeddings\.class_embedding", "img/cls"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "img/patch_embed/kernel"),
    (r"vision_model\.pre_layrnorm\.weight", "img/ln_pre/scale"),
    (r"vision_model\.pre_layrnorm\.bias", "img/ln_pre/bias"),
    (r"vision_model\.post_layernorm\.weight", "img/ln_post/scale"),
    (r"vision_model\.post_layernorm\.bias", "img/ln_post/bias"),
    (r"visual_projection\.weight", "img/proj/kernel"),
    (r"text_model\.embeddings\.token_embedding\.weight", "txt/token_embed/embedding"),
    (r"text_model\.final_layer_norm\.weight", "txt/ln_final/scale"),
    (r"text_model\.final_layer_norm\.bias", "txt/ln_final/bias"),
    (r"text_projection\.weight", "txt/proj/kernel"),
    (r"logit_scale", "logit_scale"),
]

# Flax path -> array transform; first match wins.
hooks = [
    (r"img/patch_embed/kernel", conv_oihw_to_hwio),  # OIHW -> HWIO
    (r".*/kernel", transpose_linear),  # Linear [out, in] -> Dense [in, out]
]


def _sub_config(config: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    sub = config.get(key) or {}
    if not isinstance(sub, dict):
        raise CheckpointError(f"config.json: {key} must be an object, got {type(sub).__name__}.")
    return {name: sub.get(name, default) for name, default in defaults.items()}


def model_from_config(config: dict[str, Any], dtype: Any = jnp.float32) -> CLIP:
    """Build the CLIP module described by a HF CLIPModel config.json dict."""
    if config.get("model_type", "clip") != "clip":
        raise CheckpointError(
            f"config.json has model_type {config.get('model_type')!r}, not 'clip': "
            "load it with alpeft_jax.backbones.load, which picks the right converter."
        )
    v = _sub_config(config, "vision_config", _VISION_DEFAULTS)
    t = _sub_config(config, "text_config", _TEXT_DEFAULTS)
    if v["num_channels"] != 3:
        raise CheckpointError(f"config.json: vision_config.num_channels is {v['num_channels']}; only RGB (3).")
    for name, c in (("vision_config", v), ("text_config", t)):
        if c["hidden_size"] % c["num_attention_heads"]:
            raise CheckpointError(
                f"config.json: {name}.hidden_size {c['hidden_size']} is not divisible by "
                f"num_attention_heads {c['num_attention_heads']}; fix config.json to match the weights."
            )
    if v["image_size"] % v["patch_size"]:
        raise CheckpointError(
            f"config.json: vision_config.image_size {v['image_size']} is not a multiple of "
            f"patch_size {v['patch_size']}."
        )
    vision = VisionConfig(
        width=v["hidden_size"],
        depth=v["num_hidden_layers"],
        heads=v["num_attention_heads"],
        patch_size=v["patch_size"],
        image_size=v["image_size"],
        mlp_dim=v["intermediate_size"],
        activation=v["hidden_act"],
        ln_eps=float(v["layer_norm_eps"]),
    )
    text = TextConfig(
        width=t["hidden_size"],
        depth=t["num_hidden_layers"],
        heads=t["num_attention_heads"],
        vocab_size=t["vocab_size"],
        context_length=t["max_position_embeddings"],
        mlp_dim=t["intermediate_size"],
        activation=t["hidden_act"],
        ln_eps=float(t["layer_norm_eps"]),
        eos_token_id=int(t["eos_token_id"]),
    )
    for name, act in (("vision_config", vision.activation), ("text_config", text.activation)):
        if act not in ACTIVATIONS:
            raise CheckpointError(
                f"config.json: {name}.hidden_act {act!r} is not supported; supported: {', '.join(ACTIVATIONS)}."
            )
    return CLIP(
        vision,
        text,
        int(config.get("projection_dim", _PROJECTION_DIM)),
        dtype,
        float(config.get("logit_scale_init_value", _LOGIT_SCALE_INIT)),
    )


def _preprocessing(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean/std from preprocessor_config.json, else CLIP's."""
    pre = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(pre):
        return CLIP_MEAN, CLIP_STD
    try:
        with open(pre) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"Bad preprocessor_config.json in {path}: {e}") from None
    mean = tuple(float(x) for x in cfg.get("image_mean", CLIP_MEAN))
    std = tuple(float(x) for x in cfg.get("image_std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{pre}: image_mean/image_std must have 3 values, got {mean} / {std}.")
    return mean, std


def _tokenizer(path: str, text: TextConfig) -> Any:
    """The directory's CLIP BPE tokenizer; without tokenizer files, the standard one if the vocabulary is; else None."""
    has_bpe = all(os.path.exists(os.path.join(path, f)) for f in ("vocab.json", "merges.txt"))
    if not (has_bpe or os.path.exists(os.path.join(path, "tokenizer.json"))):
        if text.vocab_size != STANDARD_VOCAB_SIZE:
            return None
        from alpeft_jax.tokenizer import Tokenizer

        try:  # pads with EOT as the released HF CLIP checkpoints do
            return Tokenizer.default(context_length=text.context_length, pad_token_id=STANDARD_VOCAB_SIZE - 1)
        except FileNotFoundError:
            return None
    if importlib.util.find_spec("alpeft_jax.tokenizer") is None:
        return None
    try:
        return importlib.import_module("alpeft_jax.tokenizer").Tokenizer.from_directory(path)
    except ValueError as e:
        raise CheckpointError(f"Cannot build the tokenizer of {path}: {e}") from None


def expected_params(model: CLIP) -> Any:
    """Shapes/dtypes of the model's parameter tree, without allocating it."""
    return model.param_shapes()


def load(path: str, dtype: Any = jnp.float32) -> Backbone:
    """Load a HF `save_pretrained` CLIPModel directory as a CLIP `Backbone` (compute dtype `dtype`)."""
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"CLIP checkpoint directory {path} not found.")
    config = read_config(path)
    model = model_from_config(config, dtype)
    state = read_hf_directory(path)
    params = convert(state, expected_params(model), rules, hooks, source=path)
    mean, std = _preprocessing(path)
    return clip_backbone(model, params, mean, std, config, _tokenizer(path, model.text), path)


def clip_backbone(
    model: CLIP, params: Any, mean: Any, std: Any, config: dict[str, Any], tokenizer: Any, source: str
) -> Backbone:
    """A CLIP-family Backbone (ViT or ResNet image tower) over converted NumPy params."""
    return Backbone(
        family="clip",
        model=model,
        params=jax.tree_util.tree_map(jnp.asarray, params),
        image_size=model.vision.image_size,
        mean=mean,
        std=std,
        embed_dim=model.embed_dim,
        config=config,
        tokenizer=tokenizer,
        source=source,
    )
