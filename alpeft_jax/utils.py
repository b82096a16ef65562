"""Pytree helpers shared by the models, the converters and the driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import traverse_util


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a nested dict to `{'a/b/c': leaf}`."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten`."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
