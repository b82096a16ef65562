"""CLIP with the ModifiedResNet image tower (RN50, RN101, RN50x4, ...) and the CLIP text tower, in Flax Linen.

    model = CLIPResNet.from_variant("RN50", dtype=jnp.bfloat16)
    emb, aux = model.apply({"params": params}, images, method="encode_image")   # images NHWC
    txt, aux = model.apply({"params": params}, ids, method="encode_text")
    logits, aux = model.apply({"params": params}, images, ids)                # exp(logit_scale) * cos

The image tower is OpenAI's ModifiedResNet: a three-convolution stem (3x3 stride 2, 3x3, 3x3, each with
BatchNorm and ReLU) and a 2x2 average pool; four stages of Bottleneck blocks whose strided downsampling is
anti-aliased (a 2x2 average pool before the last 1x1 convolution, and average pool + 1x1 convolution + BatchNorm
on the shortcut); and an attention-pooling head (the mean token is prepended, positions added, and multi-head
attention of that first token over all tokens, projected to the embedding). BatchNorm runs in inference mode
with its statistics stored as ordinary parameters, so the whole tower is one frozen `params` tree.

Parameter tree (residual blocks are numbered globally across the four stages):
  img/stem/{conv1,bn1,conv2,bn2,conv3,bn3}
  img/blocks_i/{conv1,bn1,conv2,bn2,conv3,bn3,[downsample/{conv,bn}]}
  img/attnpool/{pos_embed, attn/{q,k,v,out}}
  txt/... (as `alpeft_jax.models.clip.CLIPTextTower`), logit_scale
Projected embeddings are returned in float32 (not L2-normalised); for CLIP-ResNet the attention-pool output
*is* the embedding, so aux `pooled` equals it. `patch_tokens` is the final feature map as [B, H*W, C].
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from alpeft_jax.models.clip import CLIP, TextConfig, check_images

Dtype = Any
Aux = dict[str, jax.Array]

__all__ = ["CLIPResNet", "ResNetConfig", "ResNetImageTower", "VARIANTS", "variant"]

EXPANSION = 4  # Bottleneck output channels = 4 * planes
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of the ModifiedResNet image tower."""

    layers: tuple[int, ...]  # residual blocks per stage, 4 stages
    width: int = 64  # stem output channels; stage s has width * 2**s planes
    heads: int = 32  # attention-pool heads (OpenAI: width * 32 // 64)
    image_size: int = 224

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or any(int(n) < 1 for n in self.layers):
            raise ValueError(f"ResNet layers must be 4 positive block counts, got {self.layers}.")
        if self.image_size % 32:
            raise ValueError(f"ResNet image_size {self.image_size} must be a multiple of 32 (total stride).")
        if self.feature_dim % self.heads:
            raise ValueError(f"attention-pool width {self.feature_dim} is not divisible by {self.heads} heads.")

    @property
    def feature_dim(self) -> int:
        """Channels of the final feature map (input width of the attention pool)."""
        return self.width * 32

    @property
    def grid(self) -> int:
        """Side of the final feature map."""
        return self.image_size // 32

    @property
    def depth(self) -> int:
        """Total number of residual blocks."""
        return sum(self.layers)

    def block_specs(self) -> list[tuple[int, int, int]]:
        """`(in_channels, planes, stride)` of every residual block, numbered globally."""
        specs, inplanes = [], self.width
        for stage, count in enumerate(self.layers):
            planes = self.width * 2**stage
            for j in range(count):
                specs.append((inplanes, planes, 2 if stage > 0 and j == 0 else 1))
                inplanes = planes * EXPANSION
        return specs


# OpenAI CLIP ResNet variants: (image tower, text tower, embedding size).
VARIANTS: dict[str, tuple[ResNetConfig, TextConfig, int]] = {
    "RN50": (ResNetConfig((3, 4, 6, 3), 64, 32, 224), TextConfig(512, 12, 8, eos_token_id=2), 1024),
    "RN101": (ResNetConfig((3, 4, 23, 3), 64, 32, 224), TextConfig(512, 12, 8, eos_token_id=2), 512),
    "RN50x4": (ResNetConfig((4, 6, 10, 6), 80, 40, 288), TextConfig(640, 12, 10, eos_token_id=2), 640),
    "RN50x16": (ResNetConfig((6, 8, 18, 8), 96, 48, 384), TextConfig(768, 12, 12, eos_token_id=2), 768),
    "RN50x64": (ResNetConfig((3, 15, 36, 10), 128, 64, 448), TextConfig(1024, 12, 16, eos_token_id=2), 1024),
}


def variant(name: str) -> tuple[ResNetConfig, TextConfig, int]:
    """Decode a ResNet CLIP name ("RN50", "rn101", "RN50x4", "RN50-quickgelu") to its dims."""
    key = re.sub(r"-QUICKGELU$", "", name.upper().strip()).replace("X", "x")
    if key not in VARIANTS:
        raise ValueError(f"Unknown CLIP ResNet variant {name!r}; known: {', '.join(VARIANTS)}.")
    return VARIANTS[key]


class FrozenBatchNorm(nn.Module):
    """Inference-mode BatchNorm over the last axis; scale, bias, mean and var are all `params`."""

    eps: float = BN_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalise x [..., C] with the stored statistics."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        mul = scale * jax.lax.rsqrt(var + self.eps)  # folded in float32, applied in the compute dtype
        return x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping `size` x `size` average pool (PyTorch AvgPool2d(size), floor mode)."""
    return nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID") if size > 1 else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> [avgpool] -> 1x1 residual block with an avgpool + 1x1 conv shortcut when shapes change."""

    inplanes: int
    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        """Declare the convolutions and BatchNorms."""
        conv = lambda out, k: nn.Conv(
            out,
            (k, k),
            padding=[(k // 2, k // 2)] * 2,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        self.conv1, self.bn1 = conv(self.planes, 1), FrozenBatchNorm(dtype=self.dtype)
        self.conv2, self.bn2 = conv(self.planes, 3), FrozenBatchNorm(dtype=self.dtype)
        self.conv3, self.bn3 = conv(self.planes * EXPANSION, 1), FrozenBatchNorm(dtype=self.dtype)
        if self.has_downsample:
            self.downsample = _Downsample(self.planes * EXPANSION, self.stride, self.dtype)

    @property
    def has_downsample(self) -> bool:
        """Whether the shortcut is a projection (stride or channel change) rather than the identity."""
        return self.stride > 1 or self.inplanes != self.planes * EXPANSION

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC x."""
        h = nn.relu(self.bn1(self.conv1(x)))
        h = nn.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(_avg_pool(h, self.stride)))
        shortcut = self.downsample(x) if self.has_downsample else x
        return nn.relu(h + shortcut)


class _Downsample(nn.Module):
    """Anti-aliased projection shortcut: avgpool(stride), 1x1 conv, BatchNorm."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Project NHWC x to the block's output shape."""
        x = _avg_pool(x, self.stride)
        x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
        return FrozenBatchNorm(dtype=self.dtype, name="bn")(x)


class _Stem(nn.Module):
    """Three 3x3 convolutions (the first with stride 2), each BatchNorm + ReLU, then a 2x2 average pool."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC images -> NHWC features at 1/4 resolution."""
        for i, (out, stride) in enumerate(((self.width // 2, 2), (self.width // 2, 1), (self.width, 1)), 1):
            x = nn.Conv(
                out,
                (3, 3),
                strides=(stride, stride),
                padding=[(1, 1), (1, 1)],
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=f"conv{i}",
            )(x)
            x = nn.relu(FrozenBatchNorm(dtype=self.dtype, name=f"bn{i}")(x))
        return _avg_pool(x, 2)


class AttentionPool(nn.Module):
    """Attention pooling: the mean token, with positions, attends over all tokens; output of that first token."""

    num_heads: int
    out_dim: int
    grid: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Feature map [B,H,W,C] -> pooled embedding [B, out_dim] (compute dtype)."""
        b, h, w, c = x.shape
        if (h, w) != (self.grid, self.grid):
            raise ValueError(f"attention pool expects a {self.grid}x{self.grid} feature map, got {h}x{w}.")
        pos = self.param("pos_embed", nn.initializers.normal(c**-0.5), (self.grid**2 + 1, c), jnp.float32)
        tokens = x.reshape(b, h * w, c)
        tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1) + pos.astype(x.dtype)[None]
        head_dim = c // self.num_heads
        attn = _AttnProjections(c, self.out_dim, self.dtype, name="attn")
        q = attn.project("q", tokens[:, :1]).reshape(b, 1, self.num_heads, head_dim)
        k = attn.project("k", tokens).reshape(b, -1, self.num_heads, head_dim)
        v = attn.project("v", tokens).reshape(b, -1, self.num_heads, head_dim)
        y = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return attn.project("out", y.reshape(b, c))


class _AttnProjections(nn.Module):
    """The q/k/v/out Dense layers of the attention pool, named like the transformer blocks' `attn`."""

    width: int
    out_dim: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        """Declare the four projections."""
        dense = lambda features: nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32)
        self.q, self.k, self.v = dense(self.width), dense(self.width), dense(self.width)
        self.out = dense(self.out_dim)

    def project(self, name: str, x: jax.Array) -> jax.Array:
        """Apply projection `name` (q, k, v or out) to x."""
        return getattr(self, name)(x)


class ResNetImageTower(nn.Module):
    """ModifiedResNet image tower: stem, residual blocks `blocks_0..blocks_{N-1}`, attention-pool head."""

    config: ResNetConfig
    embed_dim: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        """Declare stem, blocks and head."""
        c = self.config
        self.stem = _Stem(c.width, self.dtype)
        for i, (inp, planes, stride) in enumerate(c.block_specs()):
            setattr(self, f"blocks_{i}", Bottleneck(inp, planes, stride, self.dtype))
        self.attnpool = AttentionPool(c.heads, self.embed_dim, c.grid, self.dtype)

    @property
    def depth(self) -> int:
        """Number of residual blocks."""
        return self.config.depth

    def image_stem(self, images: jax.Array) -> jax.Array:
        """Stem convolutions and pool: float[B,H,W,3] -> feature map [B,H/4,W/4,width]."""
        check_images(images, self.config.image_size, "CLIP ResNet image tower")
        return self.stem(images.astype(self.dtype))

    def image_blocks(self, hidden: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run residual blocks `start..stop-1` (Python ints, global numbering) on a feature map."""
        stop = self.depth if stop is None else stop
        for i in range(start, min(stop, self.depth)):
            hidden = getattr(self, f"blocks_{i}")(hidden)
        return hidden

    def image_head(self, hidden: jax.Array) -> tuple[jax.Array, Aux]:
        """Attention pool of the final feature map [B,h,w,C] -> (embedding float32[B,D], aux)."""
        pooled = self.attnpool(hidden)
        b, h, w, ch = hidden.shape
        return pooled.astype(jnp.float32), {"pooled": pooled, "patch_tokens": hidden.reshape(b, h * w, ch)}

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, Aux]:
        """Image embedding (not normalised) and aux {pooled, patch_tokens}."""
        del train  # inference-mode BatchNorm, no dropout
        return self.image_head(self.image_blocks(self.image_stem(images)))


class CLIPResNet(CLIP):
    """CLIP with a ModifiedResNet image tower (`img`) and the transformer text tower (`txt`)."""

    vision: ResNetConfig

    def image_tower(self) -> nn.Module:
        """The ModifiedResNet image tower."""
        return ResNetImageTower(self.vision, self.embed_dim, self.dtype)

    @classmethod
    def from_variant(cls, name: str, dtype: Dtype = jnp.float32) -> CLIPResNet:
        """The CLIP ResNet model of a named OpenAI variant ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")."""
        vision, text, embed_dim = variant(name)
        return cls(vision, text, embed_dim, dtype)
