"""LoRA as a separate parameter tree over any frozen Flax Linen model.

The backbone code knows nothing of LoRA. A LoRA tree mirrors the module paths of the targets
(``img/encoder/block_3/attn/q`` -> ``{"a": [in, r], "b": [r, out]}``, nested like the params);
`apply` runs the model under a Flax method interceptor that adds ``scale * dropout(x) @ a @ b`` to the
output of every targeted ``nn.Dense`` (and 1×1 ``nn.Conv``). The
frozen weights are never touched; `merge` folds the update into a copy of them for fast scoring.

    cfg = LoraConfig(rank=4, alpha=4.0, dropout=0.25, scale_mode="sqrt", targets=(r".*/attn/(q|k|v)",))
    lora = init(rng, params, cfg)                       # A kaiming-uniform, B = 0: output == base output
    y = apply(model, params, lora, cfg, images, method="encode_image", rng=key, train=True)
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from alpeft_jax import schema
from alpeft_jax.utils import flatten, unflatten

LoraTree = dict[str, Any]  # nested like the params: {..., "attn": {"q": {"a": [in, r], "b": [r, out]}}}

# Default targets: q, k, v of every attention block, in both CLIP towers or the DINOv2 encoder.
QKV = r".*/attn/(q|k|v)"
TOWER_TARGETS = {
    "both": (QKV,),
    "vision": (r"img/.*/attn/(q|k|v)",),  # CLIP image tower (DINOv2 and CNNs have no "img" prefix: use "both")
    "text": (r"txt/.*/attn/(q|k|v)",),
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale, dropout and target modules (regexes over module paths) of a LoRA adaptation.

    The defaults are `config.base().adapt.lora`'s (declared in `alpeft_jax.schema`); `targets` defaults to q, k, v
    of every attention block, what the driver makes of `adapt.lora.targets=""` with `towers=both`.
    """

    rank: int = schema.default("adapt.lora.rank")
    alpha: float = schema.default("adapt.lora.alpha")
    dropout: float = schema.default("adapt.lora.dropout")
    # "sqrt": alpha / sqrt(rank) (rsLoRA, as the authors ran it); "linear": alpha / rank.
    scale_mode: str = schema.default("adapt.lora.scale_mode")
    targets: tuple[str, ...] = TOWER_TARGETS[schema.default("adapt.lora.towers")]

    def __post_init__(self) -> None:
        problems = schema.validate(self, "adapt.lora")
        if not self.targets:
            problems.append("adapt.lora.targets: LoRA needs at least one target regex")
        schema.raise_problems(problems)

    @property
    def scale(self) -> float:
        """The factor multiplying the low-rank update."""
        return self.alpha / (math.sqrt(self.rank) if self.scale_mode == "sqrt" else self.rank)


def target_modules(params: Mapping[str, Any], targets: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Module paths whose `kernel` matches a target regex, with the kernel shape; errors if none match."""
    found = {}
    for name, leaf in flatten(params).items():
        if not name.endswith("/kernel"):
            continue
        module = name[: -len("/kernel")]
        if any(re.fullmatch(t, module) for t in targets):
            shape = tuple(leaf.shape)
            if len(shape) == 4 and shape[:2] != (1, 1):
                raise ValueError(f"LoRA target {module} is a {shape[:2]} conv; only 1x1 are supported.")
            if len(shape) not in (2, 4):
                raise ValueError(f"LoRA target {module} has kernel {shape}; expected Dense or 1x1 Conv.")
            found[module] = shape
    if not found:
        raise ValueError(
            f"LoRA targets {list(targets)} matched no Dense/Conv kernel. Module paths look like "
            f"{_examples(params)}; fix lora.targets."
        )
    return found


def _examples(params: Mapping[str, Any], n: int = 3) -> list[str]:
    names = [k[: -len("/kernel")] for k in flatten(params) if k.endswith("/kernel")]
    return names[:n]


def init(rng: jax.Array, params: Mapping[str, Any], config: LoraConfig) -> LoraTree:
    """Fresh LoRA factors for every target: A ~ kaiming-uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)), B = 0."""
    flat = {}
    modules = target_modules(params, config.targets)
    for i, (module, shape) in enumerate(sorted(modules.items())):
        d_in, d_out = shape[-2], shape[-1]
        bound = 1.0 / math.sqrt(d_in)
        flat[module + "/a"] = jax.random.uniform(
            jax.random.fold_in(rng, i), (d_in, config.rank), jnp.float32, -bound, bound
        )
        flat[module + "/b"] = jnp.zeros((config.rank, d_out), jnp.float32)
    return unflatten(flat)


def modules(lora: LoraTree) -> dict[str, dict[str, jax.Array]]:
    """The LoRA tree as `{module_path: {"a", "b"}}`."""
    out: dict[str, dict[str, jax.Array]] = {}
    for name, leaf in flatten(lora).items():
        module, _, which = name.rpartition("/")
        out.setdefault(module, {})[which] = leaf
    return out


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, jax.Array] | None:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, Mapping) and "a" in node and "b" in node else None


def num_params(tree: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _path_seed(module: str) -> int:
    return zlib.crc32(module.encode()) & 0x7FFFFFFF


def interceptor(
    lora: LoraTree,
    config: LoraConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> Callable[..., Any]:
    """A Flax method interceptor adding the LoRA update to targeted Dense/1x1-Conv calls."""
    use_dropout = train and config.dropout > 0.0
    if use_dropout and rng is None:
        raise ValueError("LoRA dropout in training needs an rng.")

    def intercept(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.Conv)):
            return next_fun(*args, **kwargs)
        factors = _lookup(lora, tuple(module.path))
        if factors is None:
            return next_fun(*args, **kwargs)
        path = "/".join(module.path)
        y = next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        if use_dropout and rng is not None:  # rng is checked above
            keep = 1.0 - config.dropout
            mask = jax.random.bernoulli(jax.random.fold_in(rng, _path_seed(path)), keep, x.shape)
            x = jnp.where(mask, x / keep, 0).astype(x.dtype)
        a, b = factors["a"].astype(x.dtype), factors["b"].astype(x.dtype)
        if x.shape[-1] != a.shape[0] or (*x.shape[:-1], b.shape[-1]) != y.shape:
            raise ValueError(
                f"LoRA target {path} maps {x.shape} to {y.shape}: only Dense and 1x1 Conv layers with stride 1, "
                "no padding and no feature groups can be adapted; remove it from lora.targets."
            )
        delta = (x @ a) @ b
        return y + (config.scale * delta).astype(y.dtype)

    return intercept


def apply(
    model: nn.Module,
    params: Any,
    lora: LoraTree | None,
    config: LoraConfig | None,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    rng: jax.Array | None = None,
    train: bool = False,
    **kwargs: Any,
) -> Any:
    """`model.apply({'params': params}, *args, method=method)` with the LoRA update on the targeted layers."""
    if method is not None:
        kwargs["method"] = method
    if not lora:
        return model.apply({"params": params}, *args, **kwargs)
    if config is None:
        raise ValueError("LoRA factors were given without their LoraConfig; pass the config they were made with.")
    with nn.intercept_methods(interceptor(lora, config, rng, train)):
        return model.apply({"params": params}, *args, **kwargs)


def delta(factors: Mapping[str, jax.Array], config: LoraConfig, shape: tuple[int, ...]) -> jax.Array:
    """The dense update `scale * A @ B` shaped like the target kernel."""
    return (config.scale * factors["a"] @ factors["b"]).reshape(shape)


def merge(params: Any, lora: LoraTree, config: LoraConfig, sign: float = 1.0) -> Any:
    """A copy of `params` with the LoRA update folded into the target kernels (sign=-1 unmerges)."""
    flat = dict(flatten(params))
    for module, factors in modules(lora).items():
        name = module + "/kernel"
        if name not in flat:
            raise ValueError(f"LoRA module {module} has no kernel in these params (wrong backbone?).")
        k = flat[name]
        flat[name] = (k + sign * delta(factors, config, k.shape).astype(k.dtype)).astype(k.dtype)
    return unflatten(flat)


def unmerge(params: Any, lora: LoraTree, config: LoraConfig) -> Any:
    """Remove a merged LoRA update from `params`."""
    return merge(params, lora, config, sign=-1.0)
