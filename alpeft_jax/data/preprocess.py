"""Host-side image preprocessing per backbone (NumPy + PIL), float32 NHWC output.

- Evaluation / pool scoring: resize the shorter side to ``R`` (bicubic, PIL; ``R = round(S x resize ratio)``: ``S``
  for CLIP and EfficientNet, ``S x 256/224`` for DINOv2 as the Hugging Face DINOv2 processor), centre crop ``S x S``
  (offset rounded as torchvision for CLIP, floored as the Hugging Face processor for DINOv2).
- Training: random resized crop (area scale 0.08-1, aspect ratio 3/4-4/3, up to 10 attempts, then a centre crop
  clipped to the ratio range) resized to ``S x S`` (bicubic), then a horizontal flip with probability 0.5.
- Normalisation: ``(pixels / 255 - mean) / std`` with the backbone's mean and std.

The random choices come from a ``numpy.random.Generator``; ``example_rng(seed, epoch, example_id)`` gives one
that depends only on those three integers, so augmentation is reproducible per (epoch, example id) whatever
the order or thread that processes the example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = [
    "PreprocessSpec",
    "resolve_spec",
    "to_pil",
    "normalize",
    "resize_shorter",
    "center_crop",
    "eval_image",
    "eval_pixels",
    "random_resized_crop_params",
    "train_image",
    "example_rng",
]

BICUBIC = Image.Resampling.BICUBIC


CropOffset = Literal["round", "floor"]


@dataclass(frozen=True)
class PreprocessSpec:
    """Input size and normalisation of a backbone: images = (pixels / 255 - mean) / std at size x size.

    The evaluation view resizes the shorter side to ``resize`` (0: ``image_size``) before the centre crop, whose
    offset ``(side - size) / 2`` is rounded ("round", torchvision) or floored ("floor", Hugging Face processors).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int = 0
    crop: CropOffset = "round"

    @property
    def resize_to(self) -> int:
        """The shorter side before the evaluation crop."""
        return self.resize or self.image_size


def resolve_spec(
    image_size: Any, mean: Any = None, std: Any = None, *, resize_ratio: float | None = None, crop: str | None = None
) -> PreprocessSpec:
    """Build a spec from (size, mean, std) or from an object with ``image_size``, ``mean``, ``std`` attributes
    (and optionally ``eval_resize`` and ``crop_offset``, as a `Backbone`); the evaluation resize is
    ``round(size x resize_ratio)``."""
    if all(hasattr(image_size, a) for a in ("image_size", "mean", "std")):
        obj = image_size
        resize_ratio = getattr(obj, "eval_resize", 1.0) if resize_ratio is None else resize_ratio
        crop = getattr(obj, "crop_offset", "round") if crop is None else crop
        image_size, mean, std = obj.image_size, obj.mean if mean is None else mean, obj.std if std is None else std
    resize_ratio = 1.0 if resize_ratio is None else float(resize_ratio)
    crop = crop or "round"
    if crop not in ("round", "floor"):
        raise ValueError(f"crop offset must be 'round' or 'floor', got {crop!r}")
    if not resize_ratio >= 1.0:
        raise ValueError(f"the evaluation resize ratio must be >= 1 (resize, then crop inside), got {resize_ratio}")
    if mean is None or std is None:
        raise ValueError(
            "preprocessing needs the backbone's mean and std: pass mean=..., std=... or a Backbone "
            "(anything with image_size, mean, std attributes)"
        )
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    m = tuple(float(x) for x in np.broadcast_to(np.asarray(mean, np.float64), (3,)))
    s = tuple(float(x) for x in np.broadcast_to(np.asarray(std, np.float64), (3,)))
    if min(s) <= 0:
        raise ValueError(f"std must be positive, got {s}")
    resize = int(round(size * resize_ratio))
    return PreprocessSpec(size, m, s, 0 if resize == size else resize, crop)  # type: ignore[arg-type]


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An RGB PIL image from a uint8 HxW, HxWx1 or HxWx3 array (or a PIL image of any mode)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels 0..255, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an image of shape [H, W], [H, W, 1] or [H, W, 3], got {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def normalize(pixels: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """``(pixels / 255 - mean) / std`` as float32, channels last."""
    x = np.asarray(pixels, np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` (bicubic), keeping the aspect ratio."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), BICUBIC)


def center_crop(img: Image.Image, size: int, offset: str = "round") -> Image.Image:
    """The central ``size x size`` window (the image must be at least that large); ``offset`` rounds or floors
    ``(side - size) / 2``."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"centre crop {size} larger than image {w}x{h}; resize first")
    if offset == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_image(image: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Evaluation view: resize shorter side, centre crop, normalise -> float32[S, S, 3]."""
    img = center_crop(resize_shorter(to_pil(image), spec.resize_to), spec.image_size, spec.crop)
    return normalize(np.asarray(img), spec.mean, spec.std)


def eval_pixels(image: np.ndarray | Image.Image, size: int, resize: int = 0, offset: str = "round") -> np.ndarray:
    """Evaluation view without normalisation -> uint8[S, S, 3] (shorter side to ``resize`` or S, then the crop)."""
    return np.asarray(center_crop(resize_shorter(to_pil(image), resize or size), size, offset))


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A crop window ``(top, left, h, w)`` of random area fraction and aspect ratio inside an image."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centred window whose aspect ratio is clipped into the allowed range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_image(
    image: np.ndarray | Image.Image,
    spec: PreprocessSpec,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> np.ndarray:
    """Training view: random resized crop (bicubic) + horizontal flip p=0.5, normalised -> float32[S, S, 3]."""
    img = to_pil(image)
    top, left, h, w = random_resized_crop_params(img.size[1], img.size[0], rng, scale, ratio)
    size = spec.image_size
    out = img.crop((left, top, left + w, top + h)).resize((size, size), BICUBIC)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(np.asarray(out), spec.mean, spec.std)


def example_rng(seed: int, epoch: int, example_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, example id)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, int(example_id) & 0xFFFFFFFF])
