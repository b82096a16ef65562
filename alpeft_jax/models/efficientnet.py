"""EfficientNet-Lite (Lite0-Lite4) in Flax Linen, inference form with BatchNorm folded into the convolutions.

Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6, and the stem (32 channels), the head (1280)
and the first and last stages' repeats are not scaled. Every convolution carries a bias because the
checkpoint's BatchNorm (eps 1e-3, running statistics) is folded into kernel and bias at load time;
strided convolutions pad TF-style SAME (more padding after than before), as the weights were trained.

Parameter names: `conv_stem`, `blocks_{i}/{expand_conv,depthwise_conv,project_conv}`, `conv_head`, `fc`.
The pointwise (1x1) convolutions are `nn.Dense` modules over the channel axis (kernel [C_in, C_out]; XLA's
CPU matmul is faster than its 1x1 convolution), so adaptation rules like `.*/(expand|project)_conv` reach
them. Depthwise convolution uses shifted multiply-adds on CPU (XLA's grouped convolution is an order of
magnitude slower there) and `lax.conv_general_dilated(feature_group_count=C)` on GPU/TPU.

Methods return `(output, aux)`; the frozen prefix can be run piecewise for feature caching:
    h = image_stem(x); h = image_blocks(h, 0, k); ...; image_blocks(h, k, num_blocks); image_head(h)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Dtype = Any

# name -> (width multiplier, depth multiplier, input resolution)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, output channels).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor` (never down by more than 10%)."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def block_specs(width: float = 1.0, depth: float = 1.0) -> list[tuple[int, int, int, int]]:
    """Per MBConv block `(kernel, stride, expand_ratio, out_channels)` for the given multipliers."""
    specs = []
    for i, (repeats, kernel, stride, expand, out) in enumerate(_STAGES):
        n = repeats if i in (0, len(_STAGES) - 1) else int(math.ceil(depth * repeats))
        for j in range(n):
            specs.append((kernel, stride if j == 0 else 1, expand, round_filters(out, width)))
    return specs


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6)."""
    return jnp.clip(x, 0, 6)


def depthwise_implementation() -> str:
    """Depthwise formulation for the default backend: 'shift' on CPU, 'grouped' on accelerators."""
    return "shift" if jax.default_backend() == "cpu" else "grouped"


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, implementation: str) -> jax.Array:
    """Depthwise 2-D convolution of NHWC `x` with `kernel` [k, k, C], TF-style SAME padding."""
    k = kernel.shape[0]
    if implementation == "grouped":
        return lax.conv_general_dilated(
            x, kernel[:, :, None, :], (stride, stride), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        )  # fmt: skip
    if implementation != "shift":
        raise ValueError(f"depthwise implementation {implementation!r}: use 'shift', 'grouped' or 'auto'.")
    _, h, w, _ = x.shape
    pads = lax.padtype_to_pads((h, w), (k, k), (stride, stride), "SAME")
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    out = jnp.zeros((), x.dtype)
    for i in range(k):
        for j in range(k):
            window = lax.slice(
                xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, xp.shape[3]),
                (1, stride, stride, 1),
            )  # fmt: skip
            term = window * kernel[i, j]
            out = term if i == j == 0 else out + term
    return out


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with bias; params `kernel` [k, k, C] and `bias` [C]."""

    kernel_size: int
    stride: int = 1
    implementation: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC -> NHWC (spatial dims divided by stride, rounded up)."""
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=()),
                            (self.kernel_size, self.kernel_size, c), jnp.float32)  # fmt: skip
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        impl = depthwise_implementation() if self.implementation == "auto" else self.implementation
        y = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, impl)
        return y + bias.astype(self.dtype)


def _pointwise(dense: nn.Module, x: jax.Array) -> jax.Array:
    """1x1 convolution as a Dense over channels on the flattened [B*H*W, C] view (a plain matmul for XLA)."""
    return dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (no squeeze-excite): expand 1x1, depthwise k x k, project 1x1, residual."""

    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    depthwise: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC -> NHWC."""
        conv = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        c = x.shape[-1]
        h = x
        if self.expand_ratio != 1:
            h = relu6(_pointwise(conv(c * self.expand_ratio, "expand_conv"), h))
        h = DepthwiseConv(self.kernel_size, self.stride, self.depthwise, self.dtype, name="depthwise_conv")(h)
        h = _pointwise(conv(self.out_channels, "project_conv"), relu6(h))
        if self.stride == 1 and c == self.out_channels:
            h = h + x
        return h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone with its ImageNet classifier; BatchNorm folded into conv biases.

    On CPU the public methods run the batch in chunks of about `cpu_chunk_bytes` of the largest activation
    (a `lax.map` over sub-batches), so each layer's activations stay in the cache; `None` disables this.
    """

    width: float = 1.0
    depth: float = 1.0
    num_classes: int = 1000
    depthwise: str = "auto"  # "auto" (by backend) | "shift" | "grouped"
    cpu_chunk_bytes: int | None = 8 << 20
    dtype: Dtype = jnp.float32

    @property
    def specs(self) -> list[tuple[int, int, int, int]]:
        """`(kernel, stride, expand_ratio, out_channels)` of every MBConv block."""
        return block_specs(self.width, self.depth)

    @property
    def num_blocks(self) -> int:
        """Number of MBConv blocks (16 for Lite0)."""
        return len(self.specs)

    def setup(self) -> None:
        """Create the stem, the MBConv blocks, the head convolution and the classifier."""
        self.conv_stem = nn.Conv(STEM_CHANNELS, (3, 3), (2, 2), "SAME", dtype=self.dtype, param_dtype=jnp.float32)
        self.blocks = [
            MBConv(k, s, e, c, self.depthwise, self.dtype, name=f"blocks_{i}")
            for i, (k, s, e, c) in enumerate(self.specs)
        ]
        self.conv_head = nn.Dense(HEAD_CHANNELS, dtype=self.dtype, param_dtype=jnp.float32)
        self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    @property
    def segment_bounds(self) -> tuple[int, ...]:
        """Block indices where a CPU chunking segment starts: each stride-2 block after the first, plus the end.

        Segment 0 is the stem with blocks [0, bounds[1]); later segments run at lower resolution and take
        larger sub-batches. Only block outputs (not the 6x expanded activations) cross segment boundaries.
        """
        strided = [i for i, spec in enumerate(self.specs) if spec[1] == 2]
        return (0, *strided[1:], self.num_blocks)

    # Public methods: on CPU each segment is run over sub-batches (`_chunked`); elsewhere in one piece.

    def image_stem(self, images: jax.Array) -> jax.Array:
        """Preprocessed images float[B,H,W,3] -> stem activations [B,H/2,W/2,32]."""
        return self._chunked(EfficientNetLite._image_stem, images)

    def image_blocks(self, hidden: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run MBConv blocks `start..stop-1` on `hidden`."""
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"block range [{start}, {stop}) is outside 0..{self.num_blocks}.")
        cuts = sorted({start, stop, *(b for b in self.segment_bounds if start < b < stop)})
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            hidden = self._chunked(EfficientNetLite._image_blocks, hidden, a, b)
        return hidden

    def image_head(self, hidden: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Last block's output -> (pooled 1280-d feature, aux with `pooled` and `feature_map`)."""
        return self._chunked(EfficientNetLite._image_head, hidden)

    def encode_image(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Images -> (pooled feature [B,1280], aux). BatchNorm is frozen, so `train` changes nothing here."""
        del train
        bounds = self.segment_bounds
        hidden = self._chunked(EfficientNetLite._stem_and_blocks, images, bounds[1])
        for a, b in zip(bounds[1:-2], bounds[2:-1], strict=True):
            hidden = self._chunked(EfficientNetLite._image_blocks, hidden, a, b)
        return self._chunked(EfficientNetLite._blocks_and_head, hidden, bounds[-2])

    def classify(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Images -> (ImageNet logits [B, num_classes], aux with `pooled`)."""
        pooled, aux = self.encode_image(images)
        return self.fc(pooled), aux

    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Same as `classify` (used by `init`)."""
        return self.classify(images)

    def _image_stem(self, images: jax.Array) -> jax.Array:
        return relu6(self.conv_stem(images.astype(self.dtype)))

    def _image_blocks(self, hidden: jax.Array, start: int, stop: int) -> jax.Array:
        for block in self.blocks[start:stop]:
            hidden = block(hidden)
        return hidden

    def _image_head(self, hidden: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        fmap = relu6(_pointwise(self.conv_head, hidden))
        pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        return pooled, {"pooled": pooled, "feature_map": fmap}

    def _stem_and_blocks(self, images: jax.Array, stop: int) -> jax.Array:
        return self._image_blocks(self._image_stem(images), 0, stop)

    def _blocks_and_head(self, hidden: jax.Array, start: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self._image_head(self._image_blocks(hidden, start, self.num_blocks))

    def _chunk_size(self, x: jax.Array) -> int | None:
        """Sub-batch size for CPU cache blocking, or None to run the whole batch at once."""
        if self.cpu_chunk_bytes is None or jax.default_backend() != "cpu" or self.is_initializing():
            return None
        # Largest activation per example: 96 channels at half resolution after the stem, else ~6x the input.
        b, h, w, c = x.shape
        per_example = h * w * (24 if c == 3 else 6 * c) * jnp.dtype(self.dtype).itemsize
        limit = max(1, self.cpu_chunk_bytes // per_example)
        if limit >= b:
            return None
        divisor = max(d for d in range(1, limit + 1) if b % d == 0)
        return divisor if 2 * divisor >= limit else -(-b // -(-b // limit))  # else balanced, padded chunks

    def _chunked(self, method: Any, x: jax.Array, *args: Any) -> Any:
        """`method(self, x, *args)`, run as a `lax.map` over sub-batches when `_chunk_size` asks for it."""
        chunk = self._chunk_size(x)
        if chunk is None:
            return method(self, x, *args)
        b = x.shape[0]
        n = -(-b // chunk)
        xs = jnp.pad(x, [(0, n * chunk - b)] + [(0, 0)] * (x.ndim - 1)).reshape(n, chunk, *x.shape[1:])
        module, variables = self.clone(parent=None), self.variables
        out = lax.map(lambda xc: module.apply(variables, xc, *args, method=method), xs)
        return jax.tree.map(lambda y: y.reshape(n * chunk, *y.shape[2:])[:b], out)


def efficientnet_lite(variant: str = "lite0", **kwargs: Any) -> EfficientNetLite:
    """Build `EfficientNetLite` for a variant name ('lite0'..'lite4' or 'efficientnet-lite0'...)."""
    key = variant.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}.")
    width, depth, _ = VARIANTS[key]
    return EfficientNetLite(width=width, depth=depth, **kwargs)
