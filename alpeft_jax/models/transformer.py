"""Transformer building blocks shared by the CLIP towers and DINOv2.

Parameter names are uniform across families so that adaptation rules are too: every block is
`ln1, attn/{q,k,v,out}, [ls1], ln2, mlp/{fc1,fc2} | mlp/{w12,w3}, [ls2]`. LoRA targets q, k, v with the
regex `.*/attn/(q|k|v)` whatever the checkpoint called them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from absl import logging
from flax import linen as nn

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as PyTorch's default."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": gelu_exact,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


_CUDNN_REFUSALS: set[str] = set()  # reasons already logged


AttentionImpl = Literal["xla", "cudnn"]


def attention_implementation() -> AttentionImpl:
    """Attention kernel for the default backend: cuDNN flash attention on GPU, XLA elsewhere."""
    return "cudnn" if jax.default_backend() == "gpu" else "xla"


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool, impl: AttentionImpl) -> jax.Array:
    """`jax.nn.dot_product_attention` over [B, N, heads, head_dim]; on the host CPU one image at a time."""
    if impl == "cudnn":
        try:  # the kernel's checks run while tracing: no cuDNN, an old one, or an unsupported shape
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
        except (RuntimeError, ValueError) as e:  # an unsupported shape raises a subclass of RuntimeError
            if str(e) not in _CUDNN_REFUSALS:
                _CUDNN_REFUSALS.add(str(e))
                logging.warning("cuDNN fused attention unavailable (%s); using XLA's attention instead.", e)
            impl = "xla"
    if impl == "xla" and jax.default_backend() == "cpu" and q.shape[0] > 1:
        # Per image the [heads, N, N] scores stay cache-resident on XLA:CPU: a lone ViT-B/16 block runs ~15%
        # faster, a whole DINOv2-B/14 tower at 224 px ~10%, a CLIP ViT-B/16 tower 1-3% (batch 16).
        return jax.lax.map(
            lambda t: jax.nn.dot_product_attention(*(a[None] for a in t), is_causal=causal, implementation=impl)[0],
            (q, k, v),
        )
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections."""

    num_heads: int
    dtype: Dtype = jnp.float32
    causal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Self-attention over [B, N, W]."""
        b, n, w = x.shape
        if w % self.num_heads:
            raise ValueError(f"width {w} is not divisible by {self.num_heads} heads")
        head_dim = w // self.num_heads
        dense = lambda name: nn.Dense(w, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        q, k, v = (dense(name)(x).reshape(b, n, self.num_heads, head_dim) for name in ("q", "k", "v"))
        impl: AttentionImpl = attention_implementation()
        if impl == "cudnn" and (self.dtype not in (jnp.bfloat16, jnp.float16) or head_dim % 8):
            impl = "xla"  # cuDNN fused attention needs half precision and head_dim % 8 == 0
        y = _attend(q, k, v, self.causal, impl)
        return dense("out")(y.reshape(b, n, w))


class Mlp(nn.Module):
    """Two-layer MLP `fc2(act(fc1(x)))`."""

    hidden: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the MLP."""
        h = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(x)
        h = ACTIVATIONS[self.activation](h)
        return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(h)


class SwiGLU(nn.Module):
    """SwiGLU MLP as in DINOv2 ViT-g: `w3(silu(x1) * x2)` with `[x1, x2] = w12(x)`."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the gated MLP."""
        h = nn.Dense(2 * self.hidden, dtype=self.dtype, param_dtype=jnp.float32, name="w12")(x)
        x1, x2 = jnp.split(h, 2, axis=-1)
        return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="w3")(jax.nn.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel learned scale (DINOv2)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Scale the channels of x."""
        gamma = self.param("scale", nn.initializers.constant(1.0), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)), with optional layer-scale."""

    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    ln_eps: float = 1e-5
    layer_scale: bool = False
    swiglu: bool = False
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to [B, N, W]."""
        ln = lambda name: nn.LayerNorm(self.ln_eps, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        h = Attention(self.num_heads, self.dtype, self.causal, name="attn")(ln("ln1")(x))
        if self.layer_scale:
            h = LayerScale(name="ls1")(h)
        x = x + h
        if self.swiglu:
            h = SwiGLU(self.mlp_dim, self.dtype, name="mlp")(ln("ln2")(x))
        else:
            h = Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(ln("ln2")(x))
        if self.layer_scale:
            h = LayerScale(name="ls2")(h)
        return x + h


class Encoder(nn.Module):
    """A stack of `Block`s named `block_0..block_{n-1}`; `start`/`stop` run a slice (frozen-prefix caching)."""

    depth: int
    num_heads: int
    mlp_dim: int
    activation: str = "gelu"
    ln_eps: float = 1e-5
    layer_scale: bool = False
    swiglu: bool = False
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        """Run blocks `start..stop-1` on [B, N, W]."""
        stop = self.depth if stop is None else stop
        for i in range(self.depth):
            block = Block(
                self.num_heads,
                self.mlp_dim,
                self.activation,
                self.ln_eps,
                self.layer_scale,
                self.swiglu,
                self.causal,
                self.dtype,
                name=f"block_{i}",
            )
            if start <= i < stop:
                x = block(x)
        return x
