"""Preprocessing against an independent PIL reference, and random-resized-crop properties."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from alpeft_jax.data import preprocess as pp

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # china.jpg 427x640, flower.jpg 427x640


def _reference_eval(arr: np.ndarray, size: int, mean, std) -> np.ndarray:
    """Shorter side -> size (bicubic, the longer side truncated), centre crop, (x/255 - mean)/std."""
    img = Image.fromarray(arr)
    w, h = img.size
    scale = size / min(w, h)
    new = (size, int(h * scale)) if w <= h else (int(w * scale), size)
    img = img.resize(new, Image.BICUBIC)
    left = round((new[0] - size) / 2)
    top = round((new[1] - size) / 2)
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float64) / 255.0
    return (x - np.array(mean)) / np.array(std)


@pytest.mark.parametrize("size", [224, 97])
def test_eval_matches_pil_reference(size):
    for photo in _photos():
        ours = pp.eval_image(photo, pp.resolve_spec(size, CLIP_MEAN, CLIP_STD))
        ref = _reference_eval(photo, size, CLIP_MEAN, CLIP_STD)
        assert ours.shape == (size, size, 3) and ours.dtype == np.float32
        diff = float(np.abs(ours - ref).max())
        print(f"eval preprocessing at {size}px vs PIL reference: max abs diff {diff:.2e}")
        assert diff < 1e-5


def test_spec_from_backbone_like_object_and_errors():
    bb = SimpleNamespace(image_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    spec = pp.resolve_spec(bb)
    assert spec == pp.PreprocessSpec(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    px = np.full((4, 6, 3), 51, np.uint8)  # 51/255 = 0.2
    np.testing.assert_allclose(
        pp.normalize(px, bb.mean, bb.std)[0, 0], [(0.2 - 0.5) / 0.2, (0.2 - 0.4) / 0.25, (0.2 - 0.3) / 0.3], rtol=1e-6
    )
    with pytest.raises(ValueError, match="mean and std"):
        pp.resolve_spec(224)
    with pytest.raises(ValueError, match="uint8"):
        pp.eval_image(np.zeros((4, 4, 3), np.float32), spec)


def test_grey_input_is_expanded():
    g = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = pp.eval_image(g, pp.resolve_spec(56, 0.5, 0.5))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    ref = _reference_eval(np.repeat(g[..., None], 3, -1), 56, (0.5,) * 3, (0.5,) * 3)
    assert np.abs(out - ref).max() < 1e-5


def test_random_resized_crop_bounds_and_determinism():
    h, w = 427, 640
    areas, ratios = [], []
    for s in range(400):
        top, left, ch, cw = pp.random_resized_crop_params(h, w, np.random.default_rng(s))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
        assert pp.random_resized_crop_params(h, w, np.random.default_rng(s)) == (top, left, ch, cw)
    areas, ratios = np.array(areas), np.array(ratios)
    # rounding to whole pixels moves area and ratio slightly past the nominal bounds
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 * 0.97 and ratios.max() <= 4 / 3 * 1.03
    assert areas.min() < 0.15 and areas.max() > 0.8  # the whole range is used
    assert np.log(ratios).std() > 0.08


def test_random_resized_crop_fallback_is_centred_and_ratio_clipped():
    # an impossible scale range forces the fallback after 10 attempts
    rng = np.random.default_rng(0)
    assert pp.random_resized_crop_params(100, 400, rng, scale=(2.0, 3.0)) == (0, (400 - 133) // 2, 100, 133)
    assert pp.random_resized_crop_params(400, 100, rng, scale=(2.0, 3.0)) == ((400 - 133) // 2, 0, 133, 100)
    assert pp.random_resized_crop_params(100, 110, rng, scale=(2.0, 3.0)) == (0, 0, 100, 110)


def test_train_image_is_crop_resize_flip_of_the_input():
    photo = _photos()[1]
    spec = pp.resolve_spec(64, CLIP_MEAN, CLIP_STD)
    n_flipped = 0
    for s in range(12):
        out = pp.train_image(photo, spec, pp.example_rng(3, 1, s))
        assert out.shape == (64, 64, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out, pp.train_image(photo, spec, pp.example_rng(3, 1, s)))
        # independent reference: same random draws, crop + bicubic resize in PIL, optional mirror
        rng = pp.example_rng(3, 1, s)
        top, left, ch, cw = pp.random_resized_crop_params(photo.shape[0], photo.shape[1], rng)
        flip = rng.random() < 0.5
        ref_img = Image.fromarray(photo).crop((left, top, left + cw, top + ch)).resize((64, 64), Image.BICUBIC)
        ref = (np.asarray(ref_img, np.float64) / 255 - CLIP_MEAN) / CLIP_STD
        if flip:
            ref = ref[:, ::-1]
            n_flipped += 1
        assert np.abs(out - ref).max() < 1e-5
    assert 0 < n_flipped < 12
    a = pp.train_image(photo, spec, pp.example_rng(3, 1, 0))
    b = pp.train_image(photo, spec, pp.example_rng(3, 2, 0))
    assert not np.allclose(a, b)  # another epoch, another view


def test_crop_sizes_follow_the_scale_bounds_statistically():
    # Square image: an attempt (area A ~ U(0.08, 1), log ratio t ~ U(-a, a)) fits iff A <= exp(-|t|); after 10
    # misses the fallback takes the whole image. Expected area fraction by quadrature over t:
    a = math.log(4 / 3)
    t = np.linspace(-a, a, 200001)
    cap = np.exp(-np.abs(t))
    p_fit = np.mean((cap - 0.08) / 0.92)
    mean_fit = np.mean((cap**2 - 0.08**2) / (2 * 0.92)) / p_fit
    miss = (1 - p_fit) ** 10
    expected = mean_fit * (1 - miss) + 1.0 * miss
    fr = [np.prod(pp.random_resized_crop_params(1000, 1000, np.random.default_rng(s))[2:]) / 1e6 for s in range(2000)]
    assert abs(np.mean(fr) - expected) < 0.015, (np.mean(fr), expected)
    lr = [
        math.log(c[3] / c[2])
        for c in (pp.random_resized_crop_params(1000, 1000, np.random.default_rng(s)) for s in range(2000))
    ]
    assert abs(np.mean(lr)) < 0.02  # log-uniform ratio is symmetric around 1


def test_eval_resize_ratio_and_crop_offset():
    spec = pp.resolve_spec(224, 0.5, 0.5, resize_ratio=256 / 224, crop="floor")
    assert (spec.resize_to, spec.crop) == (256, "floor")
    assert pp.resolve_spec(224, 0.5, 0.5).resize_to == 224  # CLIP and EfficientNet: resize to the crop
    img = np.random.default_rng(0).integers(0, 256, (301, 451, 3), dtype=np.uint8)  # resized to 256 x 383
    floor_view = pp.eval_pixels(img, 224, 256, "floor")  # left offset (383 - 224) // 2 = 79
    round_view = pp.eval_pixels(img, 224, 256, "round")  # round(79.5) = 80
    assert floor_view.shape == round_view.shape == (224, 224, 3)
    np.testing.assert_array_equal(floor_view[:, 1:], round_view[:, :-1])
    with pytest.raises(ValueError, match="resize ratio must be >= 1"):
        pp.resolve_spec(224, 0.5, 0.5, resize_ratio=0.9)
    with pytest.raises(ValueError, match="'round' or 'floor'"):
        pp.resolve_spec(224, 0.5, 0.5, crop="ceil")
