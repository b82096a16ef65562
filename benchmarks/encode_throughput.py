"""Images/s of our Flax image encoders against the same network in PyTorch, measured side by side.

    python benchmarks/encode_throughput.py [--cases efficientnet-lite0@224,efficientnet-lite0@112]
                                           [--batch 64] [--iters 5]

Each case builds both networks with the same weights and random f32 inputs [batch, size, size, 3], runs one
warm-up call each (compilation excluded), then alternates the two for `--iters` timed calls and reports the
median per-call time as images/s, with the ratio ours / reference. Alternating keeps the two exposed to the
same background load on a shared machine. A case is a name and a function returning one `Row`; add more by
appending to `CASES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Row:
    case: str
    ours: float  # images/s
    reference: float  # images/s
    reference_name: str

    @property
    def ratio(self) -> float:
        return self.ours / self.reference


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[argparse.Namespace], Row]


def time_side_by_side(ours: Callable[[], None], reference: Callable[[], None], iters: int) -> tuple[float, float]:
    """Median seconds per call of two callables, warmed up once and then alternated."""
    ours(), reference()
    t_ours, t_ref = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        reference()
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_ref.append(t2 - t1)
    return statistics.median(t_ours), statistics.median(t_ref)


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
        x = np.random.RandomState(0).randn(args.batch, size, size, 3).astype(np.float32)
        xj = jnp.asarray(x)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        encode = jax.jit(lambda p, x: bb.model.apply({"params": p}, x, method="encode_image")[0])

        def ours() -> None:
            encode(bb.params, xj).block_until_ready()

        def ref() -> None:
            with torch.inference_mode():
                reference.features(xt)

        t_ours, t_ref = time_side_by_side(ours, ref, args.iters)
        return Row(f"efficientnet-lite0@{size}", args.batch / t_ours, args.batch / t_ref, "torch.nn (eager)")

    return run


CASES: list[Case] = [
    Case("efficientnet-lite0@224", efficientnet_lite0(224)),
    Case("efficientnet-lite0@112", efficientnet_lite0(112)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    known = {c.name: c for c in CASES}
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")

    import torch

    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), batch {args.batch}, f32, median of {args.iters} alternated calls")
    print(f"{'case':<28}{'ours img/s':>12}{'reference img/s':>17}{'ratio':>8}  reference")
    for name in names:
        row = known[name].run(args)
        print(f"{row.case:<28}{row.ours:>12.1f}{row.reference:>17.1f}{row.ratio:>8.2f}  {row.reference_name}",
              flush=True)


if __name__ == "__main__":
    main()
