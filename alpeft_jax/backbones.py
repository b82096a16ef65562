"""Pretrained backbones behind one API: `load(source)` -> `Backbone`.

    bb = backbones.load("openai/clip-vit-base-patch16")   # HF directory, hub id, state-dict file, or a name
    bb.encode_image(images)                               # float[B,H,W,3] preprocessed -> float[B,D]
    bb.encode_text(bb.tokenize(texts))                    # CLIP only
    bb.image_size, bb.mean, bb.std                        # images = (pixels / 255 - mean) / std

Every backbone model is a Flax Linen module whose methods return `(output, aux)`:
  * `encode_image(images, train=False) -> (embedding[B,D], aux)`; aux holds at least `pooled` (the
    pre-projection pooled feature) and, for transformers, `patch_tokens` [B,N,W];
  * CLIP also `encode_text(ids=None, *, embeddings=None, eot_index=None, train=False)`, `embed_tokens(ids)`,
    and `__call__(images, ids) -> (logits_per_image, aux)`;
  * backbones with an ImageNet head also `classify(images) -> (logits, aux)`.
The frozen weights are `bb.params` (collection `params`); adaptation (LoRA, prompts, heads) lives in
separate trees handled by `alpeft_jax.models.lora` / `prompts` / `heads`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.convert.common import CheckpointError, read_config
from alpeft_jax.models.backbone import Backbone

__all__ = ["Backbone", "CheckpointError", "load", "resolve"]


# Loader per checkpoint family: module path with a `load(path, dtype) -> Backbone` function.
_HF_MODEL_TYPES = {
    "clip": "alpeft_jax.convert.hf_clip",
    "dinov2": "alpeft_jax.convert.hf_dinov2",
    "dinov2_with_registers": "alpeft_jax.convert.hf_dinov2",
}
_NAMED = {
    # Named backbones shipped by pip packages (offline).
    "efficientnet-lite0": "alpeft_jax.convert.efficientnet",
}
_STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def resolve(source: str) -> str:
    """Turn a directory, file or Hugging Face hub id into a local path (cache first, then the network)."""
    source = os.path.expanduser(str(source))
    if os.path.exists(source):
        return source
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"Checkpoint '{source}' not found: no such file or directory.")
    from huggingface_hub import snapshot_download  # a dependency

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import time
    for local_only in (True, False):
        try:
            return snapshot_download(source, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir)
        except Exception:  # noqa: BLE001 - any hub/cache failure means "try the next way"
            continue
    raise CheckpointError(
        f"Cannot get '{source}': not a local path, not in the Hugging Face cache, and the hub is unreachable. "
        f"On a machine with network run `huggingface-cli download {source} --local-dir DIR`, copy DIR here "
        "and pass DIR as the source."
    )


def load(source: str, dtype: Any = jnp.float32) -> Backbone:
    """Load a backbone from a HF directory, hub id, state-dict file or a known name; `dtype` is the compute dtype."""
    key = str(source).lower()
    if key in _NAMED:
        return importlib.import_module(_NAMED[key]).load(key, dtype=dtype)
    path = resolve(source)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise CheckpointError(
                f"{path} has no config.json: pass a Hugging Face save_pretrained directory, "
                "a state-dict file (.safetensors/.pt) or a known name ({})".format(", ".join(_NAMED))
            )
        model_type = read_config(path).get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise CheckpointError(
                f"{path}: unsupported model_type {model_type!r} in config.json; "
                f"supported: {', '.join(sorted(_HF_MODEL_TYPES))}."
            )
        return importlib.import_module(_HF_MODEL_TYPES[model_type]).load(path, dtype=dtype)
    if path.endswith(_STATE_DICT_SUFFIXES):
        return importlib.import_module("alpeft_jax.convert.openai_clip").load(path, dtype=dtype)
    raise CheckpointError(
        f"Don't know how to load {path}: expected a directory with config.json or a .safetensors/.pt/.bin state dict."
    )


def weights_fingerprint(params: Any, samples: int = 64) -> str:
    """A cheap identity of a backbone's weights: every array's name, shape and dtype, and `samples` evenly spaced
    values of each (other weights, or the same weights in another dtype, give another)."""
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat = jnp.ravel(leaf)
        picks = np.unique(np.linspace(0, max(flat.size - 1, 0), min(samples, flat.size)).astype(np.int64))
        values = np.asarray(jax.device_get(flat[picks]))
        h.update(f"{jax.tree_util.keystr(path)}{np.shape(leaf)}{values.dtype}".encode())
        h.update(values.astype(np.float32).tobytes())
    return h.hexdigest()[:16]
