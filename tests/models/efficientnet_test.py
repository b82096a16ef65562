"""EfficientNet-Lite0: ImageNet predictions on real photos, parity with an independent PyTorch forward.

The reference below is written directly from the checkpoint's layout with torch.nn (unfolded BatchNorm in
eval mode, eps 1e-3, TF-style SAME padding by explicit F.pad, ReLU6, stride 2 at the stem and at blocks
1, 3, 5, 11) and loads the package's file with `torch.load`, independently of the Flax converter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from alpeft_jax import backbones  # noqa: E402
from alpeft_jax.convert import efficientnet as convert_efficientnet  # noqa: E402
from alpeft_jax.models import efficientnet as effnet  # noqa: E402

STRIDE2_BLOCKS = (1, 3, 5, 11)


def _same_pad(x, kernel: int, stride: int):
    """TF SAME padding: total = max((ceil(n/s)-1)*s + k - n, 0), the odd pixel after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class TorchConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d(eps=1e-3) [+ ReLU6], with explicit SAME padding."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.kernel, self.stride, self.act = kernel, stride, act

    def forward(self, x):
        y = self.bn(self.conv(_same_pad(x, self.kernel, self.stride)))
        return F.relu6(y) if self.act else y


class TorchMBConv(nn.Module):
    def __init__(self, cin, cexp, cout, kernel, stride):
        super().__init__()
        self.expand = TorchConvBN(cin, cexp, 1) if cexp != cin else None
        self.dw = TorchConvBN(cexp, cexp, kernel, stride, groups=cexp)
        self.project = TorchConvBN(cexp, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.dw(h))
        return h + x if self.skip else h


class TorchEfficientNetLite0(nn.Module):
    """Lite0 built from the shapes of a `_blocks.N._*_conv.weight` state dict."""

    def __init__(self, state):
        super().__init__()
        self.stem = TorchConvBN(3, 32, 3, 2)
        blocks, i = [], 0
        while f"_blocks.{i}._depthwise_conv.weight" in state:
            dw = state[f"_blocks.{i}._depthwise_conv.weight"]
            cout, cexp = state[f"_blocks.{i}._project_conv.weight"].shape[:2]
            expand = state.get(f"_blocks.{i}._expand_conv.weight")
            cin = cexp if expand is None else expand.shape[1]
            blocks.append(TorchMBConv(cin, cexp, cout, dw.shape[-1], 2 if i in STRIDE2_BLOCKS else 1))
            i += 1
        self.blocks = nn.ModuleList(blocks)
        self.head = TorchConvBN(state["_conv_head.weight"].shape[1], 1280, 1)
        self.fc = nn.Linear(1280, 1000)
        self._load(state)

    def _load(self, state):
        def put(cbn, conv, bn):
            cbn.conv.weight.data.copy_(state[f"{conv}.weight"])
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(cbn.bn, k).data.copy_(state[f"{bn}.{k}"])

        put(self.stem, "_conv_stem", "_bn0")
        for i, b in enumerate(self.blocks):
            if b.expand is not None:
                put(b.expand, f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0")
            put(b.dw, f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1")
            put(b.project, f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2")
        put(self.head, "_conv_head", "_bn1")
        self.fc.weight.data.copy_(state["_fc.weight"])
        self.fc.bias.data.copy_(state["_fc.bias"])

    def features(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def torch_reference():
    """The reference network with the package's weights loaded by `torch.load`, in eval mode."""
    path = convert_efficientnet.package_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return TorchEfficientNetLite0(state).eval()


@functools.cache
def _backbone():
    return backbones.load("efficientnet-lite0")


@functools.cache
def _reference():
    return torch_reference()


def _preprocess(img: np.ndarray, size: int = 224) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img)
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


def test_imagenet_top1_on_sample_photos():
    from sklearn.datasets import load_sample_images

    bb = _backbone()
    photos = load_sample_images()
    pixels = np.stack([_preprocess(img) for img in photos.images])
    x = (pixels / 255 - np.asarray(bb.mean)) / np.asarray(bb.std)
    np.testing.assert_allclose(x, (pixels - 127) / 128, atol=1e-5)
    logits = np.asarray(bb.classify(x))
    names = [f.rsplit("/", 1)[-1] for f in photos.filenames]
    assert dict(zip(names, logits.argmax(-1).tolist(), strict=True)) == {"china.jpg": 698, "flower.jpg": 985}
    assert bb.family == "efficientnet" and bb.image_size == 224 and bb.embed_dim == 1280


@pytest.mark.parametrize("size", [224, 97])  # 97: odd sizes exercise the asymmetric SAME padding
def test_logits_match_torch_reference(size):
    bb = _backbone()
    x = np.random.RandomState(size).randn(2, size, size, 3).astype(np.float32)
    with torch.no_grad():
        ref = _reference()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    for impl in ("shift", "grouped"):
        model = effnet.efficientnet_lite("lite0", depthwise=impl)
        got = np.asarray(jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, method="classify")[0])(bb.params, x))
        err = np.abs(got - ref).max()
        assert err <= 1e-4, f"{impl}: max |logit diff| {err:.2e}"  # measured ~1e-5
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero outputs


def test_pooled_feature_matches_torch_reference():
    bb = _backbone()
    x = np.random.RandomState(1).randn(2, 64, 64, 3).astype(np.float32)
    with torch.no_grad():
        ref = _reference().features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    emb, aux = bb.apply("encode_image", jnp.asarray(x))
    assert emb.shape == (2, 1280)
    np.testing.assert_allclose(np.asarray(emb), ref, atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(aux["pooled"]), np.asarray(emb))


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 9), (5, 1, 8), (3, 2, 9), (5, 2, 10), (5, 2, 7), (3, 2, 2)])
def test_depthwise_formulations_agree_with_torch(kernel, stride, size):
    rng = np.random.RandomState(kernel * 100 + size)
    x = rng.randn(2, size, size, 6).astype(np.float32)
    w = rng.randn(kernel, kernel, 6).astype(np.float32)
    shift = np.asarray(effnet.depthwise_conv(jnp.asarray(x), jnp.asarray(w), stride, "shift"))
    grouped = np.asarray(effnet.depthwise_conv(jnp.asarray(x), jnp.asarray(w), stride, "grouped"))
    xt = _same_pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), kernel, stride)
    wt = torch.from_numpy(w.transpose(2, 0, 1)[:, None])
    ref = F.conv2d(xt, wt, stride=stride, groups=6).numpy().transpose(0, 2, 3, 1)
    assert shift.shape == grouped.shape == ref.shape
    np.testing.assert_allclose(shift, ref, atol=1e-5)
    np.testing.assert_allclose(grouped, ref, atol=1e-5)
    with pytest.raises(ValueError, match="depthwise implementation"):
        effnet.depthwise_conv(jnp.asarray(x), jnp.asarray(w), stride, "fft")


def test_stem_blocks_head_compose_to_encode_image():
    bb = _backbone()
    model, params = bb.model, {"params": bb.params}
    assert model.num_blocks == 16

    def run(method, *static):
        return jax.jit(lambda p, h: model.apply(p, h, *static, method=method))

    x = jnp.asarray(np.random.RandomState(2).randn(2, 48, 48, 3).astype(np.float32))
    h = run("image_stem")(params, x)
    for start, stop in ((0, 5), (5, 11), (11, model.num_blocks)):
        h = run("image_blocks", start, stop)(params, h)
    pooled, aux = run("image_head")(params, h)
    emb, _ = run("encode_image")(params, x)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(emb), atol=1e-6)
    assert aux["feature_map"].shape == (2, 2, 2, 1280)
    with pytest.raises(ValueError, match="outside 0..16"):
        model.apply(params, h, 3, 17, method="image_blocks")


def test_cpu_batch_chunking_matches_reference():
    # 5 examples in chunks of 3 (padded to 6) through lax.map, against the torch reference.
    bb = _backbone()
    x = np.random.RandomState(3).randn(5, 40, 40, 3).astype(np.float32)
    with torch.no_grad():
        ref = _reference()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    per_example = 20 * 20 * 96 * 4
    for chunk_bytes in (3 * per_example, None):
        model = effnet.efficientnet_lite("lite0", cpu_chunk_bytes=chunk_bytes)
        if chunk_bytes is not None:
            assert model.bind({"params": bb.params})._chunk_size(jnp.asarray(x)) == 3
        got = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x, method="classify")[0])(bb.params, x)
        assert got.shape == (5, 1000)
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def test_pointwise_convs_are_dense_modules_named_for_lora():
    flat = jax.tree_util.tree_flatten_with_path(_backbone().params)[0]
    paths = {"/".join(k.key for k in path) for path, _ in flat}
    assert "blocks_0/project_conv/kernel" in paths and "blocks_0/expand_conv/kernel" not in paths
    assert {f"blocks_{i}/expand_conv/kernel" for i in range(1, 16)} <= paths
    assert _backbone().params["blocks_15"]["project_conv"]["kernel"].shape == (1152, 320)


@pytest.mark.parametrize(
    "variant,blocks,last",
    [("lite0", 16, 320), ("lite1", 21, 320), ("lite2", 21, 352), ("lite3", 24, 384), ("lite4", 30, 448)],
)
def test_variant_scaling(variant, blocks, last):
    # Block counts and widths of the TF EfficientNet-Lite reference (fixed stem 32 / head 1280, first and last
    # stage repeats unscaled).
    model = effnet.efficientnet_lite(variant)
    size = effnet.VARIANTS[variant][2]
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    assert model.num_blocks == blocks
    assert shapes["conv_stem"]["kernel"].shape == (3, 3, 3, 32)
    assert shapes[f"blocks_{blocks - 1}"]["project_conv"]["kernel"].shape[1] == last
    assert shapes["conv_head"]["kernel"].shape == (last, 1280)


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        effnet.efficientnet_lite("b0")
    with pytest.raises(backbones.CheckpointError, match="only efficientnet-lite0 ships"):
        convert_efficientnet.load("efficientnet-lite2")
