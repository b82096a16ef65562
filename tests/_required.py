"""What some tests need beyond the test extra: open_clip (the CLIP parity reference) and Fashion-MNIST.

A bare `pytest` skips a test whose reference or data is missing; `make test` and CI (ALPEFT_REQUIRE_ALL=1 or CI set)
fail it instead, naming the install command, so a missing install step cannot pass as a quiet skip.
"""

import importlib.util
import os

import pytest

STRICT = any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("ALPEFT_REQUIRE_ALL", "CI"))

# open_clip_torch goes in without its dependencies: its torchvision would replace the CPU torch with a CUDA build.
OPEN_CLIP = "open_clip_torch (the parity tests' reference) is not installed: run `make install`"
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST = f"Fashion-MNIST ({FMNIST_DIR}) is not installed: run `make fmnist` (Debian package dataset-fashion-mnist)"


def require(present: bool, message: str, module: bool = False) -> None:
    """Skip the test (or its whole module) unless `present`; under `make test` and CI, fail it with `message`."""
    if present:
        return
    if STRICT:
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=module)


def require_open_clip(module: bool = False) -> None:
    """The installed open_clip package, or a skip (a failure under `make test` and CI)."""
    require(importlib.util.find_spec("open_clip") is not None, OPEN_CLIP, module=module)


def require_fashion_mnist(module: bool = False) -> None:
    """The Debian package's Fashion-MNIST files, or a skip (a failure under `make test` and CI)."""
    present = os.path.exists(os.path.join(FMNIST_DIR, "train-images-idx3-ubyte.gz"))
    require(present, FMNIST, module=module)
