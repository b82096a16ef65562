"""The Label Studio oracle's settings: the run config's `label_studio` section, checked and normalised.

The defaults are the run config's (`config.base().label_studio`); this module only reads them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, cast, get_args

from alpeft_jax.schema import LabelStudioImages as Images  # the choices, declared once with the setting
from alpeft_jax.schema import LabelStudioMode as Mode
from alpeft_jax.schema import LabelStudioMultiple as Multiple
from alpeft_jax.schema import LabelStudioSkipped as Skipped


@dataclasses.dataclass(frozen=True)
class Settings:
    """The `label_studio.*` values the oracle reads (their meaning: the comments of `config.base()`)."""

    url: str  # without a trailing "/"
    project: str  # "" makes (or finds again) this run's project; the old integer default 0 reads as ""
    token_env: str
    images: Images
    thumbnail: int
    local_root: str  # absolute, or "" when not set
    image_url_prefix: str
    wait_seconds: float
    poll_seconds: float  # at least 0.05
    multiple: Multiple
    skipped: Skipped  # "exclude": a skipped task is a "can't tell" (label -1); "ask": it must be labelled
    request_timeout: float
    mode: Mode = "queries"  # pool: the whole pool imported once, every task's predictions and fields each round


def defaults() -> dict[str, Any]:
    """The run config's `label_studio` section as it is by default."""
    from alpeft_jax.config import base

    return base().label_studio.to_dict()


def resolve(options: Mapping[str, Any]) -> Settings:
    """The settings: `options` (None: the default) over the config's defaults; bad names and values raise."""
    known = defaults()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown label_studio settings {unknown}; known: {sorted(known)}.")
    s = {**known, **{k: v for k, v in options.items() if v is not None}}
    url = str(s["url"]).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"the Label Studio oracle needs --config.label_studio.url=http://HOST:PORT (got {s['url']!r})."
        )
    project = str(s["project"]).strip()
    if project in ("0", "None"):  # the old integer default
        project = ""
    images = str(s["images"])
    if images not in get_args(Images):
        raise ValueError(f"label_studio.images must be inline, local or url, got {images!r}.")
    if images == "local" and not s["local_root"]:
        raise ValueError(
            "label_studio.images=local needs --config.label_studio.local_root=DIR, the server's "
            "LOCAL_FILES_DOCUMENT_ROOT."
        )
    if images == "url" and not s["image_url_prefix"]:
        raise ValueError("label_studio.images=url needs --config.label_studio.image_url_prefix=http://...")
    multiple = str(s["multiple"])
    if multiple not in get_args(Multiple):
        raise ValueError(f"label_studio.multiple must be latest or majority, got {multiple!r}.")
    skipped = str(s["skipped"])
    if skipped not in get_args(Skipped):
        raise ValueError(f"label_studio.skipped must be exclude or ask, got {skipped!r}.")
    mode = str(s["mode"])
    if mode not in get_args(Mode):
        raise ValueError(f"label_studio.mode must be queries or pool, got {mode!r}.")
    return Settings(
        url=url,
        project=project,
        token_env=str(s["token_env"]),
        images=cast(Images, images),
        thumbnail=int(s["thumbnail"]),
        local_root=os.path.abspath(os.path.expanduser(str(s["local_root"]))) if s["local_root"] else "",
        image_url_prefix=str(s["image_url_prefix"]),
        wait_seconds=float(s["wait_seconds"]),
        poll_seconds=max(0.05, float(s["poll_seconds"])),
        multiple=cast(Multiple, multiple),
        skipped=cast(Skipped, skipped),
        request_timeout=float(s["request_timeout"]),
        mode=cast(Mode, mode),
    )
