"""OpenAI / open_clip CLIP state dicts (ResNet and ViT) -> `CLIPResNet` or `CLIP` + converted params.

    bb = openai_clip.load("RN50.pt")                  # OpenAI TorchScript archive (needs torch) or a state dict
    bb = openai_clip.load("open_clip_model.safetensors")   # + open_clip_config.json beside it, if there is one

Files: `.safetensors` (read without torch), `.pt/.pth/.bin` plain state dicts (read by the restricted
unpickler of `torch_pickle`, without torch), and OpenAI's TorchScript archives (`torch.jit.load`, only
with the `convert` extra installed). A `{"state_dict": ...}` wrapper and a DDP `module.` prefix are unwrapped.

The architecture is read from the tensor shapes as OpenAI's `build_model` does: a ResNet image tower
when `visual.layer1.*` exists (blocks per stage, width, attention-pool grid; image size = grid * 32;
attention-pool heads = width * 32 // 64), a ViT when `visual.transformer.*` exists (width, depth, patch,
grid; heads = width // 64); text width, depth, vocabulary and context from the text tensors (heads =
width // 64) and the embedding size from `text_projection`. An open_clip model config beside the weights
(`<name>.json` or `open_clip_config.json`, its `model_cfg` or the config itself) supplies the head counts,
the activation (`quick_gelu`, else exact GELU; OpenAI weights without a config use QuickGELU) and the
normalisation (`preprocess_cfg` mean/std); its sizes must agree with the tensors.

Conversion is strict (`alpeft_jax.convert.common.convert`): renames by `rules`, fused attention
`in_proj_weight`/`in_proj_bias` split into q/k/v by hooks, OIHW convolutions to HWIO, Linear weights
transposed (`text_projection` and `visual.proj` are already `[width, embed]`, used as `x @ P`).
Dropped on purpose: BatchNorm `num_batches_tracked`, `attn_mask`, and the `input_resolution`,
`context_length`, `vocab_size` entries of OpenAI's archives.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from alpeft_jax.convert import torch_pickle
from alpeft_jax.convert.common import (
    CheckpointError,
    conv_oihw_to_hwio,
    convert,
    read_safetensors,
    transpose_linear,
)
from alpeft_jax.convert.hf_clip import clip_backbone
from alpeft_jax.models.backbone import Backbone
from alpeft_jax.models.clip import CLIP, CLIP_MEAN, CLIP_STD, TextConfig, VisionConfig
from alpeft_jax.models.clip_resnet import CLIPResNet, ResNetConfig

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "hooks_for",
    "infer_model",
    "load",
    "read_config_beside",
    "read_state_dict",
    "rules_for",
]

HEAD_WIDTH = 64  # OpenAI: heads = width // 64 (ResNet attention pool: width * 32 // 64)
_VOCAB_SIZE = 49408  # the standard CLIP BPE vocabulary

Array = np.ndarray
Model = CLIP | CLIPResNet


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zips holding `<root>/constants.pkl` and `<root>/code/`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_torchscript(path: str) -> dict[str, Array]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a TorchScript archive (OpenAI's CLIP release format) and needs torch: "
            "pip install 'alpeft_jax[convert]', or save its state_dict() as .safetensors."
        ) from None
    try:
        sd = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception as e:  # torch raises RuntimeError subclasses of many kinds for bad archives.
        raise CheckpointError(f"Cannot read TorchScript archive {path}: {type(e).__name__}: {e}") from None
    return {k: v.detach().float().numpy() if v.dtype.is_floating_point else v.numpy() for k, v in sd.items()}


def read_state_dict(path: str) -> dict[str, Array]:
    """Tensors of a `.safetensors`, `.pt/.pth/.bin` state dict or TorchScript archive, as `{name: ndarray}`."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"CLIP checkpoint {path} not found: no such file.")
    if path.endswith(".safetensors"):
        state = read_safetensors(path)
    elif _is_torchscript(path):
        state = _read_torchscript(path)
    else:
        state = torch_pickle.load_state_dict(path)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    # open_clip's CustomTextCLIP keeps the text tower under `text.`; the layout below it is the same.
    return {k[len("text.") :] if k.startswith("text.") else k: v for k, v in state.items()}


def read_config_beside(path: str) -> dict[str, Any] | None:
    """The open_clip config next to a weights file (`<name>.json`, else `open_clip_config.json`), or None."""
    beside = os.path.join(os.path.dirname(path), "open_clip_config.json")
    for candidate in (os.path.splitext(path)[0] + ".json", beside):
        if os.path.isfile(candidate):
            try:
                with open(candidate) as f:
                    cfg = json.load(f)
            except ValueError as e:
                raise CheckpointError(f"Bad open_clip config {candidate}: {e}") from None
            if not isinstance(cfg, dict) or not (
                isinstance(cfg.get("model_cfg"), dict) or "vision_cfg" in cfg or "text_cfg" in cfg
            ):
                raise CheckpointError(
                    f"{candidate} is not an open_clip config: expected a `model_cfg` object or "
                    "`vision_cfg`/`text_cfg`; remove or fix the file."
                )
            return {**cfg, "_path": candidate}
    return None


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


def _get(state: Mapping[str, Array], name: str, source: str) -> Array:
    if name not in state:
        raise CheckpointError(f"{source}: tensor {name} is missing; pass a complete OpenAI/open_clip CLIP state dict.")
    return state[name]


def _count(state: Mapping[str, Array], prefix: str) -> int:
    """Number of distinct `<prefix><index>.` entries (blocks of a stage or transformer)."""
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


# open_clip config fields this loader cannot honour, with their neutral values.
_UNSUPPORTED_VISION = {
    "timm_model_name": None,
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "pool_type": "tok",
    "pos_embed_type": "learnable",
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_UNSUPPORTED_TEXT = {
    "hf_model_name": None,
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}


def _check_supported(sub: Mapping[str, Any], unsupported: Mapping[str, Any], where: str) -> None:
    for key, neutral in unsupported.items():
        value = sub.get(key, neutral)
        if value != neutral and not (neutral is None and value in ({}, "")):
            raise CheckpointError(
                f"{where}.{key} = {value!r} is not supported by this loader (only OpenAI-style CLIP: "
                f"{key} = {neutral!r}); use a plain CLIP ResNet/ViT checkpoint."
            )


def _heads(width: int, sub: Mapping[str, Any], where: str) -> int:
    """Head count: `heads` or `width // head_width` from the config, else width // 64."""
    if "heads" in sub:
        heads = int(sub["heads"])
    else:
        heads = width // int(sub.get("head_width", HEAD_WIDTH))
    if heads < 1 or width % heads:
        raise CheckpointError(
            f"{where}: width {width} gives {heads} attention heads (width // {sub.get('head_width', HEAD_WIDTH)}), "
            "which does not divide it; put the open_clip model config (with `heads`/`head_width`) beside the "
            "weights as <name>.json or open_clip_config.json."
        )
    return heads


def _agree(where: str, name: str, config_value: Any, found: Any) -> None:
    if name in ("image_size", "patch_size") and isinstance(config_value, (list, tuple)):
        if len(set(config_value)) != 1:
            raise CheckpointError(f"{where}.{name} = {config_value!r} is not square; only square inputs are supported.")
        config_value = config_value[0]
    if config_value is not None and tuple(np.atleast_1d(config_value)) != tuple(np.atleast_1d(found)):
        raise CheckpointError(
            f"{where}.{name} = {config_value!r} but the weights have {found!r}; the config does not belong to "
            "these weights (fix or remove it)."
        )


def infer_model(
    state: Mapping[str, Array],
    config: Mapping[str, Any] | None = None,
    dtype: Any = jnp.float32,
    source: str = "checkpoint",
) -> Model:
    """Build the CLIP module (ResNet or ViT image tower) that an OpenAI/open_clip state dict describes."""
    cfg_path = (config or {}).get("_path", "")
    model_cfg = dict((config or {}).get("model_cfg", config or {}))
    vcfg, tcfg = dict(model_cfg.get("vision_cfg") or {}), dict(model_cfg.get("text_cfg") or {})
    _check_supported(vcfg, _UNSUPPORTED_VISION, f"{cfg_path}: vision_cfg")
    _check_supported(tcfg, _UNSUPPORTED_TEXT, f"{cfg_path}: text_cfg")
    if model_cfg.get("init_logit_bias") is not None:
        raise CheckpointError(f"{cfg_path}: init_logit_bias marks a SigLIP-style model; only CLIP is supported.")
    activation = "quick_gelu" if config is None or model_cfg.get("quick_gelu", False) else "gelu"

    embed_dim = int(_get(state, "text_projection", source).shape[1])
    _agree(f"{cfg_path}: model_cfg", "embed_dim", model_cfg.get("embed_dim"), embed_dim)
    t_width = int(_get(state, "ln_final.weight", source).shape[0])
    t_layers = _count(state, "transformer.resblocks.")
    t_mlp = int(_get(state, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0])
    context = int(_get(state, "positional_embedding", source).shape[0])
    vocab = int(_get(state, "token_embedding.weight", source).shape[0])
    for name, found in (("width", t_width), ("layers", t_layers), ("context_length", context), ("vocab_size", vocab)):
        _agree(f"{cfg_path}: text_cfg", name, tcfg.get(name), found)
    text = TextConfig(
        width=t_width,
        depth=t_layers,
        heads=_heads(t_width, tcfg, f"{source}: text tower"),
        vocab_size=vocab,
        context_length=context,
        mlp_dim=t_mlp,
        activation=activation,
        eos_token_id=2,  # OpenAI pools at argmax(ids)
    )

    if "visual.layer1.0.conv1.weight" in state:
        layers = tuple(_count(state, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        width = int(state["visual.layer1.0.conv1.weight"].shape[0])
        n_pos = int(_get(state, "visual.attnpool.positional_embedding", source).shape[0])
        grid = round(math.sqrt(n_pos - 1))
        if grid**2 + 1 != n_pos:
            raise CheckpointError(
                f"{source}: visual.attnpool.positional_embedding has {n_pos} rows, not grid**2 + 1; "
                "the file is corrupt."
            )
        _agree(f"{cfg_path}: vision_cfg", "layers", vcfg.get("layers"), layers)
        _agree(f"{cfg_path}: vision_cfg", "width", vcfg.get("width"), width)
        _agree(f"{cfg_path}: vision_cfg", "image_size", vcfg.get("image_size"), grid * 32)
        heads = _heads(width * 32, vcfg, f"{source}: ResNet attention pool")
        try:
            resnet = ResNetConfig(layers, width, heads, grid * 32)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
        return CLIPResNet(resnet, text, embed_dim, dtype)
    if "visual.conv1.weight" in state and any(k.startswith("visual.transformer.resblocks.") for k in state):
        conv = state["visual.conv1.weight"]
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        n_pos = int(_get(state, "visual.positional_embedding", source).shape[0])
        grid = round(math.sqrt(n_pos - 1))
        if grid**2 + 1 != n_pos:
            raise CheckpointError(
                f"{source}: visual.positional_embedding has {n_pos} rows, not grid**2 + 1; the file is corrupt."
            )
        depth = _count(state, "visual.transformer.resblocks.")
        mlp = int(_get(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0])
        for name, found in (("layers", depth), ("width", width), ("patch_size", patch), ("image_size", grid * patch)):
            _agree(f"{cfg_path}: vision_cfg", name, vcfg.get(name), found)
        vision = VisionConfig(
            width=width,
            depth=depth,
            heads=_heads(width, vcfg, f"{source}: ViT image tower"),
            patch_size=patch,
            image_size=grid * patch,
            mlp_dim=mlp,
            activation=activation,
        )
        return CLIP(vision, text, embed_dim, dtype)
    raise CheckpointError(
        f"{source}: unknown CLIP architecture, neither a ResNet image tower (visual.layer1.*) nor a ViT "
        "(visual.conv1.weight + visual.transformer.*); pass an OpenAI/open_clip CLIP state dict."
    )


# --------------------------------------------------------------------------------------------------
# Rules and hooks
# --------------------------------------------------------------------------------------------------


def _transformer_rules(ckpt: str, ours: str) -> list[tuple[str, str | None]]:
    """Renames of OpenAI `ResidualAttentionBlock`s under `ckpt` (escaped) to our blocks under `ours`."""
    layer = rf"{ckpt}\.resblocks\.(\d+)\."
    block = rf"{ours}/block_\1"
    return [
        (rf"{layer}attn\.in_proj_weight", rf"{block}/attn/in_proj/kernel"),  # split into q/k/v by a hook
        (rf"{layer}attn\.in_proj_bias", rf"{block}/attn/in_proj/bias"),
        (rf"{layer}attn\.out_proj\.weight", rf"{block}/attn/out/kernel"),
        (rf"{layer}attn\.out_proj\.bias", rf"{block}/attn/out/bias"),
        (rf"{layer}ln_(1|2)\.weight", rf"{block}/ln\2/scale"),
        (rf"{layer}ln_(1|2)\.bias", rf"{block}/ln\2/bias"),
        (rf"{layer}mlp\.c_fc\.weight", rf"{block}/mlp/fc1/kernel"),
        (rf"{layer}mlp\.c_fc\.bias", rf"{block}/mlp/fc1/bias"),
        (rf"{layer}mlp\.c_proj\.weight", rf"{block}/mlp/fc2/kernel"),
        (rf"{layer}mlp\.c_proj\.bias", rf"{block}/mlp/fc2/bias"),
    ]


def _bn_rules(ckpt: str, ours: str) -> list[tuple[str, str | None]]:
    """BatchNorm2d `ckpt` (escaped) -> our FrozenBatchNorm `ours`; `num_batches_tracked` is dropped."""
    return [
        (rf"{ckpt}\.weight", f"{ours}/scale"),
        (rf"{ckpt}\.bias", f"{ours}/bias"),
        (rf"{ckpt}\.running_mean", f"{ours}/mean"),
        (rf"{ckpt}\.running_var", f"{ours}/var"),
        (rf"{ckpt}\.num_batches_tracked", None),
    ]


_TEXT_RULES: list[tuple[str, str | None]] = [
    *_transformer_rules("transformer", "txt/encoder"),
    (r"token_embedding\.weight", "txt/token_embed/embedding"),
    (r"positional_embedding", "txt/pos_embed"),
    (r"ln_final\.weight", "txt/ln_final/scale"),
    (r"ln_final\.bias", "txt/ln_final/bias"),
    (r"text_projection", "txt/proj/kernel"),
    (r"logit_scale", "logit_scale"),
    (r"(.*\.)?attn_mask", None),  # the causal mask buffer: rebuilt by the model
    (r"input_resolution|context_length|vocab_size", None),  # OpenAI archive metadata, read from the shapes
]

_VIT_RULES: list[tuple[str, str | None]] = [
    *_transformer_rules(r"visual\.transformer", "img/encoder"),
    (r"visual\.class_embedding", "img/cls"),
    (r"visual\.positional_embedding", "img/pos_embed"),
    (r"visual\.conv1\.weight", "img/patch_embed/kernel"),
    (r"visual\.ln_pre\.weight", "img/ln_pre/scale"),
    (r"visual\.ln_pre\.bias", "img/ln_pre/bias"),
    (r"visual\.ln_post\.weight", "img/ln_post/scale"),
    (r"visual\.ln_post\.bias", "img/ln_post/bias"),
    (r"visual\.proj", "img/proj/kernel"),
]


def _resnet_rules(layers: tuple[int, ...]) -> list[tuple[str, str | None]]:
    """Renames of a ModifiedResNet with `layers` blocks per stage (blocks numbered globally in our tree)."""
    out: list[tuple[str, str | None]] = []
    for i in (1, 2, 3):
        out.append((rf"visual\.conv{i}\.weight", f"img/stem/conv{i}/kernel"))
        out += _bn_rules(rf"visual\.bn{i}", f"img/stem/bn{i}")
    g = 0
    for stage, count in enumerate(layers, 1):
        for j in range(count):
            src, dst = rf"visual\.layer{stage}\.{j}", f"img/blocks_{g}"
            for i in (1, 2, 3):
                out.append((rf"{src}\.conv{i}\.weight", f"{dst}/conv{i}/kernel"))
                out += _bn_rules(rf"{src}\.bn{i}", f"{dst}/bn{i}")
            out.append((rf"{src}\.downsample\.0\.weight", f"{dst}/downsample/conv/kernel"))
            out += _bn_rules(rf"{src}\.downsample\.1", f"{dst}/downsample/bn")
            g += 1
    out += [
        (r"visual\.attnpool\.positional_embedding", "img/attnpool/pos_embed"),
        (r"visual\.attnpool\.(q|k|v)_proj\.weight", r"img/attnpool/attn/\1/kernel"),
        (r"visual\.attnpool\.(q|k|v)_proj\.bias", r"img/attnpool/attn/\1/bias"),
        (r"visual\.attnpool\.c_proj\.weight", "img/attnpool/attn/out/kernel"),
        (r"visual\.attnpool\.c_proj\.bias", "img/attnpool/attn/out/bias"),
    ]
    return out


def rules_for(model: Model) -> list[tuple[str, str | None]]:
    """Checkpoint name -> Flax path rules for `model` (first match wins; None drops the tensor)."""
    vision = _resnet_rules(model.vision.layers) if isinstance(model, CLIPResNet) else _VIT_RULES
    return [*vision, *_TEXT_RULES]


def _split_qkv(attn: str, kind: str) -> Callable[[Array], dict[str, Array]]:
    """Hook splitting a fused `in_proj_weight` [3W, W] (or `in_proj_bias` [3W]) into q/k/v under `attn`."""

    def split(x: Array) -> dict[str, Array]:
        if x.shape[0] % 3 or (kind == "kernel" and (x.ndim != 2 or x.shape[0] != 3 * x.shape[1])):
            raise CheckpointError(
                f"{attn}/in_proj/{kind}: fused q/k/v tensor of shape {tuple(x.shape)} is not "
                f"{'[3*W, W]' if kind == 'kernel' else '[3*W]'}; the checkpoint is corrupt or not CLIP."
            )
        parts = np.split(x, 3, axis=0)
        return {
            f"{attn}/{n}/{kind}": transpose_linear(p) if kind == "kernel" else p
            for n, p in zip("qkv", parts, strict=True)
        }

    return split


def hooks_for(model: Model) -> list[tuple[str, Callable[[Array], Array | dict[str, Array]]]]:
    """Flax path -> array transforms for `model` (first match wins)."""
    towers = [("txt/encoder", model.text.depth)]
    if isinstance(model, CLIP):
        towers.append(("img/encoder", model.vision.depth))
    out: list[tuple[str, Callable[[Array], Array | dict[str, Array]]]] = [
        (r"(img|txt)/proj/kernel", np.ascontiguousarray),  # already [width, embed]
    ]
    for enc, depth in towers:
        for i in range(depth):
            attn = f"{enc}/block_{i}/attn"
            out += [(re.escape(f"{attn}/in_proj/{kind}"), _split_qkv(attn, kind)) for kind in ("kernel", "bias")]
    out += [
        (r"img/patch_embed/kernel|img/(stem|blocks_\d+)/(.*/)?conv\d?/kernel", conv_oihw_to_hwio),
        (r".*/kernel", transpose_linear),  # Linear [out, in] -> Dense [in, out]
    ]
    return out


def _preprocessing(config: Mapping[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = (config or {}).get("preprocess_cfg") or {}
    mean = tuple(float(x) for x in pre.get("mean", CLIP_MEAN))
    std = tuple(float(x) for x in pre.get("std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        where = (config or {}).get("_path")
        raise CheckpointError(f"{where}: preprocess_cfg mean/std need 3 values, got {mean} / {std}.")
    return mean, std


def _tokenizer(text: TextConfig) -> Any:
    """OpenAI-format CLIP tokenizer (pads with 0) for the standard vocabulary, else None."""
    if text.vocab_size != _VOCAB_SIZE:
        return None
    from alpeft_jax.tokenizer import Tokenizer

    try:
        return Tokenizer.default(context_length=text.context_length)
    except FileNotFoundError:
        return None


def load(path: str, dtype: Any = jnp.float32) -> Backbone:
    """Load an OpenAI/open_clip CLIP state dict or TorchScript archive as a CLIP `Backbone` (compute `dtype`)."""
    path = os.path.expanduser(str(path))
    state = read_state_dict(path)
    config = read_config_beside(path)
    model = infer_model(state, config, dtype, source=path)
    params = convert(state, model.param_shapes(), rules_for(model), hooks_for(model), source=path)
    mean, std = _preprocessing(config)
    architecture = "resnet" if isinstance(model, CLIPResNet) else "vit"
    info = {
        "vision": model.vision,
        "text": model.text,
        "embed_dim": model.embed_dim,
        "model_type": "openai_clip",
        "architecture": architecture,
    }
    return clip_backbone(model, params, mean, std, info, _tokenizer(model.text), path)
