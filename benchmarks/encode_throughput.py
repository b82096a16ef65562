"""Images/s of our Flax image encoders against the same network in PyTorch, measured side by side.

    python benchmarks/encode_throughput.py [--cases efficientnet-lite0@224,clip-vit-b16@224,...|transformers]
                                           [--batch N] [--iters 5] [--device-report] [--torch-compile]

Each case builds both networks with the same architecture and random f32 inputs [batch, size, size, 3], runs
one warm-up call each (compilation excluded), then alternates the implementations for `--iters` timed calls
and reports the median per-call time as images/s, with the ratio ours / reference. Alternating keeps them
exposed to the same background load on a shared machine. A case is a name and a function returning one `Row`
(or a list of them); add more by appending to `CASES`. `--cases transformers` selects the three transformer cases,
`--cases device` adds CLIP ViT-L/14 (too slow for the default CPU run).

EfficientNet cases use the ImageNet weights on both sides. Transformer cases (CLIP ViT-B/32 and ViT-B/16 image
towers, DINOv2-B/14, all at 224 px) use random weights: ours from `model.init`, the reference a transformers
`CLIPVisionModelWithProjection` / `Dinov2Model` built from a config of the same size (SDPA attention). They
also report our achieved GFLOP/s (model FLOPs counted analytically: 2 per multiply-add of every matmul,
including the patch embedding and the projection, plus 2*2*N^2*W per block for attention) and its share of
the matmul peak: the better of jitted square matmuls of side 2048 and 4096 (4096/8192 on an accelerator) in
the same dtype, timed interleaved with the models, and the "ceiling": the ratio ours / reference at 100% of
that peak, an upper bound no implementation of the same FLOPs can pass on the machine. `--batch` defaults
to 64 for EfficientNet and to 16 (CPU) / 128 (accelerator) for the transformers.

On a GPU, one command gives the full report (ours f32 + bf16, the attention kernel our towers compiled to,
PyTorch eager f32/bf16 with SDPA and `torch.compile` in the same dtype):

    python benchmarks/encode_throughput.py --cases device --device-report --iters 10

On CPU `--device-report` adds the bf16 rows and skips `torch.compile` unless `--torch-compile` is given.
Note that XLA runs f32 matmuls on GPU with TF32 by default while PyTorch does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

# JAX and PyTorch share one accelerator here: allocate on demand instead of JAX's default 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Row:
    case: str
    ours: float  # images/s
    reference: float  # images/s
    reference_name: str
    dtype: str = "f32"
    gflop_per_image: float | None = None  # model FLOPs of one image (for GFLOP/s and the share of peak)
    peak: float | None = None  # matmul peak in GFLOP/s, same dtype, timed alongside
    attention: str = ""  # attention kernel our model compiled to

    @property
    def ratio(self) -> float:
        return self.ours / self.reference

    @property
    def gflops(self) -> float | None:
        return None if self.gflop_per_image is None else self.ours * self.gflop_per_image

    @property
    def ceiling(self) -> float | None:
        """The ratio ours / reference would reach at 100% of the measured matmul peak."""
        if self.gflop_per_image is None or not self.peak:
            return None
        return self.peak / self.gflop_per_image / self.reference


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[argparse.Namespace], Row | list[Row]]


def time_interleaved(fns: dict[str, Callable[[], None]], iters: int) -> dict[str, float]:
    """Median seconds per call of each callable: one warm-up call each, then `iters` rounds calling each in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def time_side_by_side(ours: Callable[[], None], reference: Callable[[], None], iters: int) -> tuple[float, float]:
    """Median seconds per call of two callables, warmed up once and then alternated."""
    t = time_interleaved({"ours": ours, "reference": reference}, iters)
    return t["ours"], t["reference"]


def _load_test_module(relpath: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (ImageNet weights from the pip package) vs the torch.nn reference of the tests
# --------------------------------------------------------------------------------------------------


def efficientnet_lite0(size: int) -> Callable[[argparse.Namespace], Row]:
    def run(args: argparse.Namespace) -> Row:
        import torch

        from alpeft_jax import backbones

        bb = backbones.load("efficientnet-lite0")
        reference = _load_test_module("tests/models/efficientnet_test.py", "efficientnet_reference").torch_reference()
        batch = args.batch or 64
        x = np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)
        xj = jnp.asarray(x)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        encode = jax.jit(lambda p, x: bb.model.apply({"params": p}, x, method="encode_image")[0])

        def ours() -> None:
            encode(bb.params, xj).block_until_ready()

        def ref() -> None:
            with torch.inference_mode():
                reference.features(xt)

        t_ours, t_ref = time_side_by_side(ours, ref, args.iters)
        return Row(f"efficientnet-lite0@{size}", batch / t_ours, batch / t_ref, "torch.nn eager")

    return run


# --------------------------------------------------------------------------------------------------
# Transformer image towers (random weights) vs transformers' PyTorch models of the same size
# --------------------------------------------------------------------------------------------------

JAX_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def on_accelerator() -> bool:
    """Whether JAX runs on a GPU/TPU rather than the host CPU."""
    return jax.default_backend() != "cpu"


def _torch_device() -> str:
    import torch

    return "cuda" if on_accelerator() and torch.cuda.is_available() else "cpu"


def _torch_sync() -> None:
    import torch

    if _torch_device() == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass(frozen=True)
class ViTShape:
    """What the FLOP count needs: width, depth, MLP hidden, patch, extra tokens, projection size."""

    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch: int
    extra_tokens: int  # class (+ register) tokens
    proj_dim: int  # 0: no projection

    def gflop_per_image(self, image_size: int) -> float:
        """Model GFLOPs of one image: every matmul at 2 FLOPs per multiply-add, attention 2*2*N^2*W per block."""
        patches = (image_size // self.patch) ** 2
        n, w = patches + self.extra_tokens, self.width
        stem = 2 * patches * 3 * self.patch**2 * w
        block = 2 * n * (4 * w * w + 2 * w * self.mlp_dim) + 2 * 2 * n * n * w
        return (stem + self.depth * block + 2 * w * self.proj_dim) / 1e9


@functools.cache
def matmul_timers(dtype: str) -> dict[int, tuple[Callable[[], None], float]]:
    """Timed callables of jitted square matmuls (side -> (call, FLOPs per call)): 2048/4096 on CPU, 4096/8192 else."""
    mm = jax.jit(jnp.matmul)
    timers = {}
    for n in (4096, 8192) if on_accelerator() else (2048, 4096):
        a = jax.random.normal(jax.random.key(0), (n, n), JAX_DTYPES[dtype])
        b = jax.random.normal(jax.random.key(1), (n, n), JAX_DTYPES[dtype])
        mm(a, b).block_until_ready()
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        reps = max(1, int(0.05 / max(time.perf_counter() - t0, 1e-6)))  # enough queued calls to hide dispatch

        def call(a=a, b=b, reps=reps) -> None:
            out = None
            for _ in range(reps):
                out = mm(a, b)
            out.block_until_ready()

        timers[n] = (call, 2.0 * n**3 * reps)
    return timers


def _attention_kind(compiled_text: str) -> str:
    """Attention kernel visible in our compiled HLO: cuDNN fused attention or XLA's dots + softmax."""
    from alpeft_jax.models.transformer import attention_implementation

    found = "cudnn" if "cudnn$fmha" in compiled_text else "xla"  # custom call __cudnn$fmha...
    return f"{found} (asked {attention_implementation()})"


def _ours(family: str, variant: str, dtype: str, batch: int, size: int):
    """Compiled encode of our tower with random weights, its params and input, and the attention kernel used."""
    from alpeft_jax.models import clip, dinov2

    if family == "clip":
        vision, _, embed = clip.variant(variant)
        model = clip.CLIPVisionTower(vision, embed, JAX_DTYPES[dtype])

        def encode(p, x):
            return model.apply({"params": p}, x)[0]
    else:
        model = dinov2.dinov2(variant, dtype=JAX_DTYPES[dtype])

        def encode(p, x):
            return model.apply({"params": p}, x, method="encode_image")[0]

    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))["params"]
    x = jax.random.normal(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    compiled = jax.jit(encode).lower(params, x).compile()
    return compiled, params, x, _attention_kind(compiled.as_text())


def _theirs(family: str, variant: str, dtype: str, size: int):
    """transformers model of the same size with random weights, in eval mode on the torch device and dtype."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    from alpeft_jax.models import clip, dinov2

    if family == "clip":
        vision, _, embed = clip.variant(variant)
        config = CLIPVisionConfig(
            hidden_size=vision.width,
            intermediate_size=vision.hidden,
            num_hidden_layers=vision.depth,
            num_attention_heads=vision.heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            projection_dim=embed,
            hidden_act=vision.activation,
        )
        cls = CLIPVisionModelWithProjection
    else:
        d = dinov2.decode_variant(variant)
        if d["swiglu"]:
            raise ValueError(f"DINOv2 {variant} uses the SwiGLU MLP; this benchmark covers the GELU variants S/B/L.")
        config = Dinov2Config(
            hidden_size=d["width"],
            num_hidden_layers=d["depth"],
            num_attention_heads=d["num_heads"],
            mlp_ratio=d["mlp_dim"] // d["width"],
            patch_size=d["patch_size"],
            image_size=d["pos_grid"] * d["patch_size"],
        )
        cls = Dinov2Model
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation="sdpa")
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return model.eval().to(device=_torch_device(), dtype=torch_dtype)


def _shape(family: str, variant: str) -> ViTShape:
    from alpeft_jax.models import clip, dinov2

    if family == "clip":
        v, _, embed = clip.variant(variant)
        return ViTShape(v.width, v.depth, v.heads, v.hidden, v.patch_size, 1, embed)
    d = dinov2.decode_variant(variant)
    return ViTShape(d["width"], d["depth"], d["num_heads"], d["mlp_dim"], d["patch_size"], 1, 0)


def _compare(
    name: str, family: str, variant: str, dtype: str, batch: int, size: int, args: argparse.Namespace
) -> list[Row]:
    """Rows of one dtype: our tower, transformers eager (and compiled) and the matmul peak timed interleaved."""
    import torch

    compiled, params, x, attention = _ours(family, variant, dtype, batch, size)
    model = _theirs(family, variant, dtype, size)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    xt = xt.to(device=_torch_device(), dtype=next(model.parameters()).dtype)

    def ours() -> None:
        compiled(params, x).block_until_ready()

    def call(m: Callable) -> Callable[[], None]:
        def fn() -> None:
            with torch.inference_mode():
                m(pixel_values=xt)
            _torch_sync()

        return fn

    fns = {"ours": ours, "torch eager (sdpa)": call(model)}
    if not args.no_torch_compile and (args.torch_compile or (args.device_report and _torch_device() == "cuda")):
        fns["torch.compile (sdpa)"] = call(torch.compile(model))
    matmuls = matmul_timers(dtype)
    fns.update({f"matmul {n}": fn for n, (fn, _) in matmuls.items()})
    t = time_interleaved(fns, args.iters)
    side, peak = max(((n, flop / t[f"matmul {n}"] / 1e9) for n, (_, flop) in matmuls.items()), key=lambda e: e[1])
    gflop = _shape(family, variant).gflop_per_image(size)
    return [
        Row(name, batch / t["ours"], batch / t[ref], f"{ref}; peak: {side}^2 matmul", dtype, gflop, peak, attention)
        for ref in fns
        if ref.startswith("torch")
    ]


def vit(name: str, family: str, variant: str, size: int = 224) -> Callable[[argparse.Namespace], list[Row]]:
    """Case runner: our tower vs transformers eager (and torch.compile) per dtype, with GFLOP/s and share of peak."""

    def run(args: argparse.Namespace) -> list[Row]:
        batch = args.batch or (128 if on_accelerator() else 16)
        dtypes = ("f32", "bf16") if args.device_report else ("f32",)
        return [row for dtype in dtypes for row in _compare(name, family, variant, dtype, batch, size, args)]

    return run


CASES: list[Case] = [
    Case("efficientnet-lite0@224", efficientnet_lite0(224)),
    Case("efficientnet-lite0@112", efficientnet_lite0(112)),
    Case("clip-vit-b32@224", vit("clip-vit-b32@224", "clip", "B/32")),
    Case("clip-vit-b16@224", vit("clip-vit-b16@224", "clip", "B/16")),
    Case("dinov2-b14@224", vit("dinov2-b14@224", "dinov2", "B/14")),
    Case("clip-vit-l14@224", vit("clip-vit-l14@224", "clip", "L/14")),
]
TRANSFORMERS = ["clip-vit-b32@224", "clip-vit-b16@224", "dinov2-b14@224"]
GROUPS = {"transformers": TRANSFORMERS, "device": [*TRANSFORMERS, "clip-vit-l14@224"]}
DEFAULT = ["efficientnet-lite0@224", "efficientnet-lite0@112", *TRANSFORMERS]  # ViT-L/14: accelerators only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases", default=",".join(DEFAULT), help=f"comma-separated case names or groups ({', '.join(GROUPS)})"
    )
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per call (default: 64 EfficientNet; 16 CPU / 128 accelerator for transformers)",
    )
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument(
        "--device-report",
        action="store_true",
        help="transformers also in bf16; torch.compile on GPU; for a GPU/TPU run",
    )
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile, even on CPU")
    ap.add_argument("--no-torch-compile", action="store_true", help="never time torch.compile (saves its compile time)")
    args = ap.parse_args()
    known = {c.name: c for c in CASES}
    names = [m for n in args.cases.split(",") if n.strip() for m in GROUPS.get(n.strip(), [n.strip()])]
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join([*known, *GROUPS])}")
    if args.batch is not None and args.batch < 1 or args.iters < 1:
        ap.error("--batch and --iters must be positive")

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    load = "n/a" if not hasattr(os, "getloadavg") else " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind}), torch {torch.__version__} "
        f"({_torch_device()}, {torch.get_num_threads()} threads), median of {args.iters} interleaved calls, "
        f"load average {load}"
    )
    print(
        f"{'case':<24}{'dtype':>6}{'ours img/s':>12}{'ref img/s':>11}{'ratio':>7}{'GFLOP/s':>9}{'peak':>8}"
        f"{'%peak':>7}{'ceiling':>8}  {'attention':<20} reference"
    )
    for name in names:
        result = known[name].run(args)
        for row in result if isinstance(result, list) else [result]:
            flops = " " * 32
            if row.gflops is not None and row.peak:
                flops = f"{row.gflops:>9.1f}{row.peak:>8.1f}{100 * row.gflops / row.peak:>6.1f}%{row.ceiling:>8.2f}"
            print(
                f"{row.case:<24}{row.dtype:>6}{row.ours:>12.1f}{row.reference:>11.1f}{row.ratio:>7.2f}{flops}  "
                f"{row.attention or '-':<20} {row.reference_name}",
                flush=True,
            )
    if hasattr(os, "getloadavg"):
        print("load average after:", " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
