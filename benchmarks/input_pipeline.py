"""Images/s of the scoring (eval view) and training (augmented) input pipelines at 224 px.

    python benchmarks/input_pipeline.py [--images 300] [--batch 32] [--threads N]

Pools: a synthetic JPEG image folder (random 320-500 px photos-like noise images, written to a temporary
directory) and Fashion-MNIST train (28x28 grey, from the Debian package; skipped if absent). Each row times one
pass over the first ``--images`` examples after one warm-up batch; CLIP mean/std.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from alpeft_jax.data import eval_batches, get_source, train_batches

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def make_folder(root: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(320, 500, size=2)
        # smooth random image (JPEG of white noise is unrealistically large)
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        d = os.path.join(root, f"class_{i % 10}")
        os.makedirs(d, exist_ok=True)
        img.save(os.path.join(d, f"{i:05d}.jpg"), quality=90)


def time_pass(batches) -> tuple[float, int]:
    it = iter(batches)
    first = next(it)  # warm-up: thread pool start, first batch
    n = 0
    t0 = time.perf_counter()
    for b in it:
        n += int(b["_mask"].sum())
    dt = time.perf_counter() - t0
    del first
    return dt, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(tmp, args.images)
        pools = [("jpeg folder", get_source("folder", "train", data_dir=tmp))]
        try:
            pools.append(("fashion-mnist", get_source("fashion_mnist", "train")))
        except FileNotFoundError as e:
            print(f"skipping Fashion-MNIST: {e}")
        for pname, src in pools:
            idx = np.arange(min(args.images + args.batch, len(src)))
            common = dict(num_threads=args.threads)
            ev = eval_batches(src, idx, args.batch, args.size, MEAN, STD, **common)
            tr = train_batches(src, idx, args.batch, args.size, MEAN, STD, seed=0, epoch=0, **common)
            for mode, batches in (("eval (resize+crop)", ev), ("train (rrc+flip)", tr)):
                dt, n = time_pass(batches)
                rows.append((pname, mode, n, dt, n / dt))

    print(
        f"\ninput pipeline, {args.size} px, batch {args.batch}, threads {args.threads or 'default'}, "
        f"{os.cpu_count()} CPUs visible"
    )
    print(f"{'pool':<15} {'mode':<20} {'images':>7} {'seconds':>8} {'images/s':>9}")
    for pname, mode, n, dt, rate in rows:
        print(f"{pname:<15} {mode:<20} {n:>7d} {dt:>8.2f} {rate:>9.1f}")


if __name__ == "__main__":
    main()
