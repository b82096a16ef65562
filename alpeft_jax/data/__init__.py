"""Data layer: pool sources, per-backbone preprocessing, prefetching batch pipelines, class names and prompts.

The names below load on first use, so `alpeft_jax.data.classnames` or `.splits` (what configs and the
pre-flight checks read) come without the batch pipeline's imports.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "class_names": "classnames",
    "coop_names": "classnames",
    "dataset_info": "classnames",
    "prompts": "classnames",
    "templates": "classnames",
    "Batches": "pipeline",
    "as_arrays": "pipeline",
    "epoch_order": "pipeline",
    "eval_batches": "pipeline",
    "num_batches": "pipeline",
    "train_batches": "pipeline",
    "PreprocessSpec": "preprocess",
    "eval_image": "preprocess",
    "resolve_spec": "preprocess",
    "train_image": "preprocess",
    "ArraySource": "sources",
    "CorruptImageError": "sources",
    "FileListSource": "sources",
    "MissingDataError": "sources",
    "Source": "sources",
    "TfdsSource": "sources",
    "coop_split": "sources",
    "csv_manifest": "sources",
    "digits": "sources",
    "fashion_mnist": "sources",
    "fingerprint_of": "sources",
    "get_source": "sources",
    "image_folder": "sources",
    "inspect_source": "sources",
    "source_kind": "sources",
}

__all__ = sorted(_WHERE)


_MODULES = ("classnames", "pipeline", "preprocess", "sources", "splits")


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"alpeft_jax.data.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'alpeft_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alpeft_jax.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))
