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

import dataclasses
import functools
import importlib
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from alpeft_jax.convert.common import CheckpointError, read_config

__all__ = ["Backbone", "CheckpointError", "load", "resolve"]


@dataclasses.dataclass(eq=False)
class Backbone:
    """A frozen pretrained model, its weights and its preprocessing facts."""

    family: str  # "clip" | "dinov2" | "efficientnet"
    model: nn.Module
    params: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int  # size of encode_image's output
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: Any = None  # alpeft_jax.tokenizer.Tokenizer for CLIP
    source: str = ""

    @property
    def dtype(self) -> Any:
        """Compute dtype of the model."""
        return getattr(self.model, "dtype", jnp.float32)

    @property
    def has_text(self) -> bool:
        """Whether the backbone has a text tower (CLIP)."""
        return hasattr(self.model, "encode_text")

    @property
    def has_classifier(self) -> bool:
        """Whether the backbone has its own classification head."""
        return hasattr(self.model, "classify")

    def apply(self, method: str, *args: Any, params: Any = None, **kwargs: Any) -> Any:
        """Run `model.<method>` jitted with the frozen (or given) params; returns `(output, aux)`."""
        return _jitted(self.model, method)(self.params if params is None else params, *args, **kwargs)

    def encode_image(self, images: Any, params: Any = None) -> jax.Array:
        """Image embedding of preprocessed images float[B,H,W,3] -> float[B,D]."""
        return self.apply("encode_image", jnp.asarray(images, self.dtype), params=params)[0]

    def encode_text(self, tokens: Any, params: Any = None) -> jax.Array:
        """Text embedding of token ids int[B,L] -> float[B,D] (CLIP only)."""
        if not self.has_text:
            raise ValueError(f"{self.family} backbone has no text tower; use a CLIP checkpoint.")
        return self.apply("encode_text", jnp.asarray(tokens, jnp.int32), params=params)[0]

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """CLIP BPE token ids, int32[B, context_length], SOT/EOT added, truncated with EOT kept."""
        if self.tokenizer is None:
            raise ValueError(f"{self.family} backbone has no tokenizer; use a CLIP checkpoint.")
        return self.tokenizer(texts)

    def classify(self, images: Any, params: Any = None) -> jax.Array:
        """Logits of the backbone's own classifier head (e.g. 1000 ImageNet classes)."""
        if not self.has_classifier:
            raise ValueError(f"{self.family} backbone has no classifier head.")
        return self.apply("classify", jnp.asarray(images, self.dtype), params=params)[0]


@functools.cache
def _jitted(model: nn.Module, method: str) -> Any:
    def fn(params: Any, *args: Any, **kwargs: Any) -> Any:
        return model.apply({"params": params}, *args, method=method, **kwargs)

    return jax.jit(fn)


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
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        snapshot_download = None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import time
    if snapshot_download is not None:
        for local_only in (True, False):
            try:
                return snapshot_download(
                    source, allow_patterns=patterns, local_files_only=local_only, cache_dir=cache_dir
                )
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
        f"Don't know how to load {path}: expected a directory with config.json or a "
        ".safetensors/.pt/.bin state dict."
    )
