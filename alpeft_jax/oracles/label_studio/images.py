"""What a task's image field holds: a PNG data URI, a file served by Label Studio's local storage, or a URL."""

from __future__ import annotations

import base64
import io
import os
import urllib.parse
from typing import Any

import numpy as np
from PIL import Image

from alpeft_jax.oracles.base import LabelFileError
from alpeft_jax.oracles.label_studio.settings import Settings

LOCAL_PREFIX = "/data/local-files/?d="


def task_image(ex: dict[str, Any], ident: int, settings: Settings, run_key: str) -> str:
    """The image field of example `ex` (dataset id `ident`) under `settings.images`."""
    path = ex.get("path")
    if settings.images == "url" and path:
        return settings.image_url_prefix + str(path).lstrip("/")
    if settings.images == "local":
        return LOCAL_PREFIX + urllib.parse.quote(local_file(ex, ident, settings.local_root, run_key))
    return inline_png(ex["image"], settings.thumbnail)


def inline_png(image: Any, thumbnail: int) -> str:
    """A PNG data URI of the image, its longest side at most `thumbnail` pixels."""
    img = Image.fromarray(np.asarray(image, np.uint8))
    img.thumbnail((thumbnail, thumbnail))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def local_path(image_field: str) -> str:
    """The path relative to the local-files root that a `local` image field points at."""
    return urllib.parse.unquote(image_field.split("?d=", 1)[1])


def local_file(ex: dict[str, Any], ident: int, local_root: str, run_key: str) -> str:
    """The image's path relative to `local_root`, writing a PNG there for images without a file."""
    path = ex.get("path")
    if not path:
        path = os.path.join(local_root, "alpeft_jax", run_key, f"{ident}.png")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(np.asarray(ex["image"], np.uint8)).save(path + ".tmp.png")
            os.replace(path + ".tmp.png", path)
    path = os.path.abspath(str(path))
    rel = os.path.relpath(path, local_root)
    if rel.startswith("..") or os.path.dirname(rel) in ("", "."):
        raise LabelFileError(
            f"image {path} is not in a folder under label_studio.local_root={local_root}; start Label "
            "Studio with LOCAL_FILES_DOCUMENT_ROOT (and local_root) set to a parent of the data's folder, or "
            "use --config.label_studio.images=inline."
        )
    return rel
