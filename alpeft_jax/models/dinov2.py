"""DINOv2 vision transformer (with optional register tokens), numerically equal to transformers' `Dinov2Model`.

    model = dinov2("B/14")                                 # or DinoV2(width=..., depth=..., ...)
    emb, aux = model.apply({"params": p}, images)          # images float[B,H,W,3] (NHWC), any H, W
    aux["pooled"], aux["patch_tokens"], aux["cls_token"]   # layernormed class token / patch tokens

Any input resolution works: the position grid is resampled bicubically exactly as transformers does
(`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`, with `antialias=True` for the
register variant), using the PyTorch cubic kernel (a = -0.75; a = -0.5 on the antialiased path). The
resampling is two small matrices computed in NumPy at trace time and applied with one einsum in float32.

Frozen-prefix contract (feature caching): `encode_image == image_head(image_blocks(image_stem(x), 0, n))`
with `n = model.num_blocks`; `image_blocks(h, start, stop)` runs a slice of the encoder.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from alpeft_jax.models.transformer import ACTIVATIONS, Encoder

__all__ = ["VARIANTS", "DinoV2", "bicubic_resize_matrix", "decode_variant", "dinov2", "resample_grid", "swiglu_hidden"]

Dtype = Any

# Short name -> (width, depth, heads); all use mlp_ratio 4, g uses the SwiGLU MLP.
VARIANTS: dict[str, tuple[int, int, int]] = {
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "g": (1536, 40, 24),
}


def swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    """Hidden size of DINOv2's SwiGLU MLP: two thirds of `int(width * mlp_ratio)`, rounded up to a multiple of 8."""
    return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def decode_variant(variant: str) -> dict[str, Any]:
    """Decode a short name such as "B/14" or "g/14" into `DinoV2` fields (pretrained 518 px, 37x37 grid)."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or not patch.isdigit():
        raise ValueError(f"Unknown DINOv2 variant {variant!r}: use one of {', '.join(k + '/14' for k in VARIANTS)}.")
    width, depth, heads = VARIANTS[name]
    swiglu = name == "g"
    patch_size = int(patch)
    return dict(
        width=width,
        depth=depth,
        num_heads=heads,
        mlp_dim=swiglu_hidden(width) if swiglu else 4 * width,
        swiglu=swiglu,
        patch_size=patch_size,
        pos_grid=518 // patch_size,
    )


def dinov2(variant: str, **overrides: Any) -> DinoV2:
    """A `DinoV2` module for a short variant name, with field overrides (e.g. `num_registers=4, dtype=...`)."""
    return DinoV2(**{**decode_variant(variant), **overrides})


# --------------------------------------------------------------------------------------------------
# Position-grid resampling with PyTorch's bicubic kernel
# --------------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with parameter `a`, evaluated at x (support [-2, 2])."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=256)
def bicubic_resize_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """Matrix float64[out, in] equal to torch's 1-D bicubic interpolate (align_corners=False, size given).

    Without antialias: source x = (i + 0.5) * in/out - 0.5, taps floor(x)-1 .. floor(x)+2 clamped to the
    edge, kernel a = -0.75. With antialias: the kernel (a = -0.5) is widened by the downscale factor, taps
    outside the input are dropped and each row is renormalised to sum to one. (torch's CPU antialiased
    kernel is degenerate when the *other* output side is 1 -- every row reuses row 0's weights; this
    function gives the correct resampling there.)
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if not antialias:
        src = (rows + 0.5) * scale - 0.5
        base = np.minimum(np.floor(src), in_size - 1)
        t = np.clip(src - base, 0.0, 1.0)
        for k in range(4):  # tap offsets -1, 0, 1, 2
            w = _cubic(t - (k - 1), -0.75)
            idx = np.clip(base.astype(np.int64) + k - 1, 0, in_size - 1)
            np.add.at(m, (rows, idx), w)
        m.flags.writeable = False
        return m
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    for i in rows:
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _cubic((j - center + 0.5) * inv, -0.5)
        total = w.sum()
        m[i, lo:hi] = w / total if total != 0 else w
    m.flags.writeable = False
    return m


def resample_grid(grid: jax.Array, out_h: int, out_w: int, antialias: bool = False) -> jax.Array:
    """Resample a [G_h, G_w, C] grid to [out_h, out_w, C] with torch-equal bicubic interpolation, in float32."""
    gh, gw, _ = grid.shape
    grid = grid.astype(jnp.float32)
    if (gh, gw) == (out_h, out_w):
        return grid
    mh = jnp.asarray(bicubic_resize_matrix(gh, out_h, antialias), jnp.float32)
    mw = jnp.asarray(bicubic_resize_matrix(gw, out_w, antialias), jnp.float32)
    return jnp.einsum("hi,wj,ijc->hwc", mh, mw, grid, precision=jax.lax.Precision.HIGHEST)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class DinoV2(nn.Module):
    """DINOv2 ViT: patch embedding, class (+ register) tokens, resampled positions, pre-LN blocks, final LN.

    Parameters: `patch_embed/{kernel,bias}`, `cls_token` [1,1,W], `pos_embed` [1,G*G+1,W], `mask_token`
    [1,W], `reg_tokens` [1,R,W], `encoder/block_i/{ln1,attn/{q,k,v,out},ls1,ln2,mlp/...,ls2}`, `norm`.
    """

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # for SwiGLU: the gated hidden size (see `swiglu_hidden`)
    patch_size: int = 14
    pos_grid: int = 37  # side of the pretrained position grid (config.image_size // patch_size)
    num_registers: int = 0
    swiglu: bool = False
    layer_scale: bool = True
    use_mask_token: bool = True
    ln_eps: float = 1e-6
    activation: str = "gelu"
    pos_antialias: bool = False  # transformers' register model resamples positions with antialias=True
    dtype: Dtype = jnp.float32

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks (the `stop` of a full `image_blocks` pass)."""
        return self.depth

    @property
    def num_image_blocks(self) -> int:
        """Same as `num_blocks`, the name CLIP's image tower uses."""
        return self.depth

    def setup(self) -> None:
        """Declare parameters and submodules."""
        if self.width % self.num_heads:
            raise ValueError(f"DINOv2 width {self.width} is not divisible by num_heads {self.num_heads}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}.")
        p, w = self.patch_size, self.width
        self.patch_embed = nn.Conv(
            w, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, param_dtype=jnp.float32
        )
        self.cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, w), jnp.float32)
        self.pos_embed = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, self.pos_grid**2 + 1, w), jnp.float32
        )
        if self.use_mask_token:
            self.mask_token = self.param("mask_token", nn.initializers.zeros, (1, w), jnp.float32)
        if self.num_registers:
            self.reg_tokens = self.param("reg_tokens", nn.initializers.zeros, (1, self.num_registers, w), jnp.float32)
        self.encoder = Encoder(
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.activation,
            self.ln_eps,
            self.layer_scale,
            self.swiglu,
            False,
            self.dtype,
        )
        self.norm = nn.LayerNorm(self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32)

    def image_stem(self, images: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Token sequence [B, 1+R+N, W] before the blocks: patches (masked), class, registers, positions."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DINOv2 expects NHWC images float[B,H,W,3], got shape {images.shape}.")
        if images.shape[1] < self.patch_size or images.shape[2] < self.patch_size:
            raise ValueError(f"Images {images.shape[1:3]} are smaller than one {self.patch_size}px patch.")
        x = self.patch_embed(images.astype(self.dtype))
        b, gh, gw, w = x.shape
        x = x.reshape(b, gh * gw, w)
        if mask is not None:
            if not self.use_mask_token:
                raise ValueError("This DINOv2 has no mask token (use_mask_token=False); do not pass a mask.")
            if mask.shape != (b, gh * gw):
                raise ValueError(f"mask must be bool[{b}, {gh * gw}] (one per patch), got {mask.shape}.")
            x = jnp.where(mask[..., None], self.mask_token.astype(x.dtype)[None], x)
        grid = self.pos_embed[0, 1:].reshape(self.pos_grid, self.pos_grid, w)
        patch_pos = resample_grid(grid, gh, gw, self.pos_antialias).reshape(1, gh * gw, w)
        x = x + patch_pos.astype(x.dtype)
        cls = (self.cls_token + self.pos_embed[:, :1]).astype(x.dtype)
        parts = [jnp.broadcast_to(cls, (b, 1, w))]
        if self.num_registers:
            parts.append(jnp.broadcast_to(self.reg_tokens.astype(x.dtype), (b, self.num_registers, w)))
        return jnp.concatenate([*parts, x], axis=1)

    def image_blocks(self, hidden: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run transformer blocks `start..stop-1` on the token sequence."""
        return self.encoder(hidden, start, stop)

    def image_head(self, hidden: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Final LayerNorm; returns the normed class token and aux {pooled, cls_token, patch_tokens, ...}."""
        h = self.norm(hidden)
        cls = h[:, 0]
        aux = {
            "pooled": cls,
            "cls_token": cls,
            "register_tokens": h[:, 1 : 1 + self.num_registers],
            "patch_tokens": h[:, 1 + self.num_registers :],
        }
        return cls, aux

    def encode_image(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Pooled image feature (= transformers' `pooler_output`) of NHWC images; `mask` bool[B,N] masks patches.

        `train` is accepted for the shared backbone signature; DINOv2 inference has no dropout.
        """
        del train
        return self.image_head(self.image_blocks(self.image_stem(images, mask)))

    def __call__(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Same as `encode_image`."""
        return self.encode_image(images, train=train, mask=mask)
