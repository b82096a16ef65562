"""Class names and prompt templates per dataset, read from the JSON files in ``data/assets``.

Each asset file describes one dataset: its aliases, the TFDS name, where the CoOp layout keeps images and the
``split_zhou_*.json`` file, the class names as CoOp-style prompts use them (in TFDS label order), a ``rename``
table from source-side names (TFDS names, folder names, names stored in CoOp split files) to those prompt names,
the prompt templates and, for datasets no package downloads, where they come from (``download``). Datasets
without an asset file use ``default.json`` ("a photo of a {}.").
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["dataset_info", "known_datasets", "class_names", "coop_names", "templates", "prompts", "download_hint"]


@functools.cache
def _load_all() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Read every asset file once; return (key -> info, alias -> key)."""
    infos: dict[str, dict[str, Any]] = {}
    aliases: dict[str, str] = {}
    folder = resources.files("alpeft_jax.data").joinpath("assets")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        key = entry.name[: -len(".json")]
        info = json.loads(entry.read_text(encoding="utf-8"))
        infos[key] = info
        for alias in [key, *info.get("aliases", [])]:
            aliases[_norm(alias)] = key
    return infos, aliases


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def known_datasets() -> list[str]:
    """Names of the datasets that have an asset file (besides the default)."""
    return [k for k in _load_all()[0] if k != "default"]


def dataset_info(name: str) -> dict[str, Any]:
    """The asset record for a dataset name or alias; the default record for unknown names."""
    infos, aliases = _load_all()
    key = aliases.get(_norm(name))
    if key is None:
        key = aliases.get(_norm(name.split("/")[0]), "default")
    return infos[key]


def class_names(name: str) -> list[str]:
    """CoOp-style class names of a known dataset, in TFDS label order."""
    info = dataset_info(name)
    if not info["class_names"]:
        raise KeyError(
            f"no class-name list stored for dataset {name!r}; known: {', '.join(known_datasets())}. "
            "Take the names from the source (source.class_names) instead."
        )
    return list(info["class_names"])


def coop_names(name: str, names: list[str]) -> list[str]:
    """Map source-side class names (TFDS, folder or CoOp split-file names) to the prompt names CoOp uses."""
    rename = dataset_info(name).get("rename", {})
    return [rename.get(n, n) for n in names]


def download_hint(name: str) -> str:
    """Where a known dataset that no package fetches comes from and how to lay it out ('' if not recorded)."""
    return str(dataset_info(name).get("download", ""))


def templates(name: str) -> list[str]:
    """Prompt templates of a dataset (with one ``{}`` for the class name); the default for unknown names."""
    return list(dataset_info(name)["templates"])


def prompts(names: list[str], template: str = "a photo of a {}.") -> list[str]:
    """Fill a template with each class name, underscores replaced by spaces."""
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
    return [template.format(n.replace("_", " ")) for n in names]
