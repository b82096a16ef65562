"""CLIP ViT as two towers (`img`, `txt`) with a learned log-temperature, in Flax Linen.

    model = CLIP.from_variant("ViT-B/16", dtype=jnp.bfloat16)
    emb, aux = model.apply({"params": params}, images, method="encode_image")   # images NHWC
    txt, aux = model.apply({"params": params}, ids, method="encode_text")
    logits, aux = model.apply({"params": params}, images, ids)                # exp(logit_scale) * cos

Parameters are float32 whatever the compute `dtype`. Parameter tree:
  img/{patch_embed, cls, pos_embed, ln_pre, encoder/block_i/..., ln_post, proj}
  txt/{token_embed, pos_embed, encoder/block_i/..., ln_final, proj}
  logit_scale
Projected embeddings are returned in float32 (not L2-normalised); `patch_tokens` and the frozen-prefix
hidden states stay in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from alpeft_jax.models.transformer import ACTIVATIONS, Encoder

Dtype = Any
Aux = dict[str, jax.Array]

__all__ = [
    "CLIP",
    "CLIPTextTower",
    "CLIPVisionTower",
    "TextConfig",
    "VARIANTS",
    "VisionConfig",
    "eot_positions",
    "variant",
]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Architecture of the image tower."""

    width: int
    depth: int
    heads: int
    patch_size: int
    image_size: int
    mlp_dim: int = 0  # 0 means 4 * width
    activation: str = "quick_gelu"
    ln_eps: float = 1e-5

    @property
    def grid(self) -> int:
        """Number of patches along one side."""
        return self.image_size // self.patch_size

    @property
    def hidden(self) -> int:
        """MLP hidden size."""
        return self.mlp_dim or 4 * self.width


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Architecture of the text tower."""

    width: int = 512
    depth: int = 12
    heads: int = 8
    vocab_size: int = 49408
    context_length: int = 77
    mlp_dim: int = 0  # 0 means 4 * width
    activation: str = "quick_gelu"
    ln_eps: float = 1e-5
    eos_token_id: int = 49407  # 2 selects the legacy rule: pool at the argmax of the ids

    @property
    def hidden(self) -> int:
        """MLP hidden size."""
        return self.mlp_dim or 4 * self.width


# OpenAI CLIP ViT variants: (image tower, text tower, embedding size).
VARIANTS: dict[str, tuple[VisionConfig, TextConfig, int]] = {
    "B/32": (VisionConfig(768, 12, 12, 32, 224), TextConfig(512, 12, 8), 512),
    "B/16": (VisionConfig(768, 12, 12, 16, 224), TextConfig(512, 12, 8), 512),
    "L/14": (VisionConfig(1024, 24, 16, 14, 224), TextConfig(768, 12, 12), 768),
    "L/14@336": (VisionConfig(1024, 24, 16, 14, 336), TextConfig(768, 12, 12), 768),
}
_SIZES = {"BASE": "B", "LARGE": "L"}


def variant(name: str) -> tuple[VisionConfig, TextConfig, int]:
    """Decode a short name ("B/16", "ViT-L/14@336", "ViT-B-32", "vit-base-patch16") to its dims."""
    key = name.upper().strip()
    key = re.sub(r"^(OPENAI/)?(CLIP-)?VIT[-_/]?", "", key)
    m = re.fullmatch(r"(BASE|LARGE)-PATCH(\d+)(?:-(\d+))?", key)
    if m:
        key = f"{_SIZES[m.group(1)]}/{m.group(2)}" + (f"@{m.group(3)}" if m.group(3) else "")
    m = re.fullmatch(r"([BL])[-/](\d+)(?:[-@](\d+))?", key)
    if m:
        key = f"{m[1]}/{m[2]}" + (f"@{m[3]}" if m[3] else "")
    key = key.replace("@224", "")
    if key not in VARIANTS:
        raise ValueError(f"Unknown CLIP variant {name!r}; known: {', '.join(VARIANTS)} (e.g. 'ViT-B/16').")
    return VARIANTS[key]


def eot_positions(ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Index of the pooled (end-of-text) token per sequence, int32[B], following HF CLIPTextTransformer."""
    ids = jnp.asarray(ids).astype(jnp.int32)
    if eos_token_id == 2:  # legacy configs: the EOT token has the largest id
        return jnp.argmax(ids, axis=-1).astype(jnp.int32)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1).astype(jnp.int32)


def _check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}.")


class CLIPVisionTower(nn.Module):
    """ViT image tower: patchify, class token, positions, ln_pre, blocks, ln_post on the class token, proj."""

    config: VisionConfig
    embed_dim: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        """Declare the tower's parameters and submodules."""
        c = self.config
        _check_activation(c.activation)
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not a multiple of patch_size {c.patch_size}.")
        init = nn.initializers.normal(c.width**-0.5)
        self.patch_embed = nn.Conv(
            c.width,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        self.cls = self.param("cls", init, (c.width,), jnp.float32)
        self.pos_embed = self.param("pos_embed", init, (c.grid**2 + 1, c.width), jnp.float32)
        self.ln_pre = nn.LayerNorm(c.ln_eps, dtype=self.dtype, param_dtype=jnp.float32)
        self.encoder = Encoder(c.depth, c.heads, c.hidden, c.activation, c.ln_eps, dtype=self.dtype)
        self.ln_post = nn.LayerNorm(c.ln_eps, dtype=self.dtype, param_dtype=jnp.float32)
        self.proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.config.depth

    def image_stem(self, images: jax.Array) -> jax.Array:
        """Patch embedding + class token + positions + ln_pre: float[B,H,W,3] -> hidden [B,1+N,W]."""
        c = self.config
        check_images(images, c.image_size, "CLIP image tower")
        x = self.patch_embed(images.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, c.width)
        cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, c.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.astype(x.dtype)[None]
        return self.ln_pre(x)

    def image_blocks(self, hidden: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run transformer blocks `start..stop-1` (Python ints) on the hidden states."""
        stop = self.config.depth if stop is None else stop
        if not 0 <= start <= stop <= self.config.depth:
            raise ValueError(f"block range [{start}, {stop}) is outside 0..{self.config.depth}.")
        return self.encoder(hidden, start, stop)

    def image_head(self, hidden: jax.Array) -> tuple[jax.Array, Aux]:
        """ln_post on the class token and projection: hidden [B,1+N,W] -> (embedding float32[B,D], aux)."""
        pooled = self.ln_post(hidden[:, 0])
        emb = self.proj(pooled).astype(jnp.float32)
        return emb, {"pooled": pooled, "patch_tokens": hidden[:, 1:]}

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, Aux]:
        """Projected image embedding (not normalised) and aux {pooled, patch_tokens}."""
        del train  # CLIP has no dropout or batch statistics
        return self.image_head(self.image_blocks(self.image_stem(images)))


class CLIPTextTower(nn.Module):
    """Causal text transformer: token + position embedding, blocks, final LayerNorm, EOT pooling, proj."""

    config: TextConfig
    embed_dim: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        """Declare the tower's parameters and submodules."""
        c = self.config
        _check_activation(c.activation)
        self.token_embed = nn.Embed(
            c.vocab_size,
            c.width,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(0.02),
        )
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.01), (c.context_length, c.width), jnp.float32)
        self.encoder = Encoder(c.depth, c.heads, c.hidden, c.activation, c.ln_eps, causal=True, dtype=self.dtype)
        self.ln_final = nn.LayerNorm(c.ln_eps, dtype=self.dtype, param_dtype=jnp.float32)
        self.proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Token embeddings (without positions) of ids int[B,L] -> [B,L,W]."""
        return self.token_embed(jnp.asarray(ids).astype(jnp.int32))

    def __call__(
        self,
        ids: jax.Array | None = None,
        *,
        embeddings: jax.Array | None = None,
        eot_index: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, Aux]:
        """Projected text embedding float32[B,D] from ids int[B,L] or token embeddings [B,L,W] + eot_index."""
        del train  # no dropout
        c = self.config
        if embeddings is None:
            if ids is None:
                raise ValueError("encode_text needs token ids or token embeddings.")
            embeddings = self.embed_tokens(ids)
        if eot_index is None:
            if ids is None:
                raise ValueError("encode_text with embeddings needs eot_index: int[B] end-of-text positions.")
            eot_index = eot_positions(ids, c.eos_token_id)
        b, length = embeddings.shape[:2]
        if length > c.context_length:
            raise ValueError(f"Text length {length} exceeds context length {c.context_length}; truncate it.")
        x = embeddings.astype(self.dtype) + self.pos_embed[:length].astype(self.dtype)[None]
        x = self.ln_final(self.encoder(x))
        pooled = x[jnp.arange(b), jnp.asarray(eot_index).astype(jnp.int32)]
        emb = self.proj(pooled).astype(jnp.float32)
        return emb, {"pooled": pooled, "tokens": x}


def check_images(images: jax.Array, size: int, what: str) -> None:
    """Raise a clear error unless `images` is NHWC [B, size, size, 3]."""
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"{what} expects NHWC images [B,{size},{size},3], got {images.shape}; "
            "resize to the backbone's image_size and put channels last."
        )


# OpenAI CLIP's image normalisation (every released CLIP checkpoint uses it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIP(nn.Module):
    """CLIP two-tower model (ViT image tower); every method returns `(output, aux)`.

    Subclasses swap the image tower (`image_tower`): any tower with `image_stem`, `image_blocks`, `image_head`
    and `depth` serves (see `clip_resnet.CLIPResNet`).
    """

    vision: Any  # VisionConfig here; the subclass's own tower config otherwise
    text: TextConfig
    embed_dim: int
    dtype: Dtype = jnp.float32
    logit_scale_init: float = math.log(1 / 0.07)

    def image_tower(self) -> nn.Module:
        """The image tower module for `self.vision`."""
        return CLIPVisionTower(self.vision, self.embed_dim, self.dtype)

    def setup(self) -> None:
        """Declare both towers and the log-temperature."""
        self.img = self.image_tower()
        self.txt = CLIPTextTower(self.text, self.embed_dim, self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)

    def param_shapes(self) -> Any:
        """Shapes/dtypes of the parameter tree (`jax.eval_shape` of init), without allocating it."""
        size = self.vision.image_size
        images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        ids = jax.ShapeDtypeStruct((1, self.text.context_length), jnp.int32)
        return jax.eval_shape(self.init, jax.random.key(0), images, ids)["params"]

    @classmethod
    def from_variant(cls, name: str, dtype: Dtype = jnp.float32) -> CLIP:
        """The CLIP model of a named variant ("ViT-B/32", "B/16", "L/14", "L/14@336")."""
        vision, text, embed_dim = variant(name)
        return cls(vision, text, embed_dim, dtype)

    @property
    def num_image_blocks(self) -> int:
        """Number of transformer blocks of the image tower (the `stop` of a full `image_blocks`)."""
        return self.vision.depth

    @property
    def num_blocks(self) -> int:
        """Same as `num_image_blocks`, the name the other image backbones use."""
        return self.vision.depth

    @property
    def image_size(self) -> int:
        """Side of the square input images."""
        return self.vision.image_size

    def image_stem(self, images: jax.Array) -> jax.Array:
        """Frozen-prefix start: the image tower's stem (ViT: patches + class token + positions + ln_pre)."""
        return self.img.image_stem(images)

    def image_blocks(self, hidden: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run image blocks `start..stop-1` (Python ints) on hidden states."""
        return self.img.image_blocks(hidden, start, stop)

    def image_head(self, hidden: jax.Array) -> tuple[jax.Array, Aux]:
        """Final hidden states -> (projected image embedding, aux {pooled, patch_tokens})."""
        return self.img.image_head(hidden)

    def encode_image(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, Aux]:
        """Projected (not normalised) image embedding of NHWC images, aux {pooled, patch_tokens}."""
        del train
        return self.image_head(self.image_blocks(self.image_stem(images), 0, self.num_image_blocks))

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """Token embeddings [B,L,W] of ids, the input that learnable prompts edit."""
        return self.txt.embed_tokens(ids)

    def encode_text(
        self,
        ids: jax.Array | None = None,
        *,
        embeddings: jax.Array | None = None,
        eot_index: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, Aux]:
        """Projected (not normalised) text embedding of ids or token embeddings + eot_index; aux {pooled}."""
        return self.txt(ids, embeddings=embeddings, eot_index=eot_index, train=train)

    def __call__(self, images: jax.Array, ids: jax.Array, train: bool = False) -> tuple[jax.Array, Aux]:
        """logits_per_image [B_img, B_txt] = exp(logit_scale) * cosine; aux has the normalised embeddings."""
        img, img_aux = self.encode_image(images, train=train)
        txt, txt_aux = self.encode_text(ids, train=train)
        img_n = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt_n = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        scale = jnp.exp(self.logit_scale)
        logits = scale * img_n @ txt_n.T
        return logits, {
            "image_embeds": img_n,
            "text_embeds": txt_n,
            "logit_scale": scale,
            "image_pooled": img_aux["pooled"],
            "text_pooled": txt_aux["pooled"],
        }
