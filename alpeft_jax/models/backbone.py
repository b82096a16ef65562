"""`Backbone`: a frozen pretrained model, its weights and preprocessing facts (a leaf module: no project imports)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


@dataclasses.dataclass(eq=False)
class Backbone:
    """A frozen pretrained model, its weights and its preprocessing facts."""

    family: str  # "clip" | "dinov2" | "efficientnet"
    model: nn.Module
    params: Any
    image_size: int
    mean: tuple[float, ...]  # per RGB channel
    std: tuple[float, ...]
    embed_dim: int  # size of encode_image's output
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: Any = None  # alpeft_jax.tokenizer.Tokenizer for CLIP
    source: str = ""
    eval_resize: float = 1.0  # evaluation view: shorter side = round(image_size x eval_resize), then the centre crop
    crop_offset: str = "round"  # the crop's offset (side - size) / 2: "round" (torchvision) or "floor" (HF processors)

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
