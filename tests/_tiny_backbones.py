"""Tiny randomly initialised CLIP (real 49,408-token vocabulary) and DINOv2 backbones, shared by the tests."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax import backbones
from alpeft_jax.models import clip
from alpeft_jax.models.dinov2 import DinoV2
from alpeft_jax.tokenizer import Tokenizer


def random_params(shapes: Any, seed: int) -> Any:
    """NumPy-random parameters for a shape tree (no compilation): LayerNorm scales near 1, biases near 0."""
    rng = np.random.default_rng(seed)

    def leaf(path: tuple, s: jax.ShapeDtypeStruct) -> jax.Array:
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(s.shape)
        elif "bias" in name:
            value = 0.05 * rng.standard_normal(s.shape)
        elif "kernel" in name:
            fan_in = int(np.prod(s.shape[:-1]))
            value = rng.standard_normal(s.shape) / np.sqrt(fan_in)
        else:  # embeddings, positions, class / register / mask tokens
            value = 0.1 * rng.standard_normal(s.shape)
        return jnp.asarray(value, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def make_clip_backbone(
    text_width: int = 16,
    vision_width: int = 16,
    depth: int = 2,
    text_depth: int = 1,
    heads: int = 2,
    image_size: int = 16,
    patch_size: int = 8,
    embed_dim: int = 12,
    seed: int = 0,
    zeros: bool = False,
    logit_scale: float = 1 / 0.07,
) -> backbones.Backbone:
    """A CLIP backbone with the real CLIP tokenizer (vocab 49,408, context 77) and small towers."""
    vision = clip.VisionConfig(vision_width, depth, heads, patch_size, image_size)
    text = clip.TextConfig(width=text_width, depth=text_depth, heads=heads)
    model = clip.CLIP(vision, text, embed_dim)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    ids = jnp.zeros((1, text.context_length), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(seed), images, ids)["params"]
    if zeros:  # shapes only matter (e.g. parameter counts)
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    else:
        params = random_params(shapes, seed)
    params["logit_scale"] = jnp.asarray(np.log(logit_scale), jnp.float32)
    return backbones.Backbone(
        family="clip",
        model=model,
        params=params,
        image_size=image_size,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        embed_dim=embed_dim,
        tokenizer=Tokenizer.default(),
    )


def make_dinov2_backbone(
    width: int = 16, depth: int = 2, heads: int = 2, patch_size: int = 8, seed: int = 0
) -> backbones.Backbone:
    """A small DINOv2 backbone (16x16 images -> 2x2 patches)."""
    model = DinoV2(width=width, depth=depth, num_heads=heads, mlp_dim=2 * width, patch_size=patch_size, pos_grid=2)
    shapes = jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, 16, 16, 3), jnp.float32))["params"]
    params = random_params(shapes, seed)
    return backbones.Backbone(
        family="dinov2",
        model=model,
        params=params,
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        embed_dim=width,
    )
