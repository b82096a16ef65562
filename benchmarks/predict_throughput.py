"""Images/s of `python -m alpeft_jax.predict`'s model against the encode benchmark's image tower, side by side.

    python benchmarks/predict_throughput.py [--backbone efficientnet-lite0] [--size 224] [--batch 64]
                                            [--mode linear|lora] [--iters 5] [--images 256]

Three rows, timed interleaved (one warm-up call each, then the median of `--iters` calls), all f32:
  encode     the backbone's jitted `encode_image` on a preprocessed batch already on the device, as
             `benchmarks/encode_throughput.py` times it;
  predict    `TrainedModel.logits_of_batch` on the same batch as a host array: what `predict` runs per batch
             (the transfer to the mesh, the adapted image tower, the classifier, the logits back to the host);
  end to end `predict.predict_rows` on `--images` uint8 images of 320x240: decoding aside (the images are in
             memory), resizing, cropping and normalising in threads, one batch ahead of the model, plus the CSV rows.
The ratios are against `encode`; the issue's target is predict / encode >= 0.9 for the same backbone and batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encode_benchmark():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import encode_throughput

    return encode_throughput


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mode", default="linear", choices=("linear", "lora"))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()

    from alpeft_jax import predict
    from alpeft_jax.assemble import assemble
    from alpeft_jax.config import base
    from alpeft_jax.trained import TrainedModel

    c = base()
    c.backbone = args.backbone
    c.data.image_size = args.size
    c.adapt.mode = args.mode
    c.adapt.head = "linear"
    c.adapt.head_scale = 16.0
    if args.mode == "lora" and args.backbone.startswith("efficientnet"):
        c.adapt.lora.targets = r"blocks_15/(expand|project)_conv"
    names = [f"class_{i}" for i in range(10)]
    parts = assemble(c, names)
    model = TrainedModel(parts, parts.model.init(jax.random.key(0)), {"config": c.to_dict()}, batch_size=args.batch)
    bb = parts.backbone
    x = np.random.RandomState(0).randn(args.batch, args.size, args.size, 3).astype(np.float32)
    xj = jnp.asarray(x)
    encode = jax.jit(lambda p, x: bb.model.apply({"params": p}, x, method="encode_image")[0])
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (240, 320, 3), np.uint8) for _ in range(args.images)]
    items = [predict.Item(f"image{i}", (lambda im=im: im)) for i, im in enumerate(pixels)]

    bench = _encode_benchmark()
    times = bench.time_interleaved(
        {
            "encode": lambda: encode(bb.params, xj).block_until_ready(),
            "predict": lambda: model.logits_of_batch(x),
        },
        args.iters,
    )
    predict.predict_rows(model, items[: args.batch])  # warm-up
    t0 = time.perf_counter()
    predict.predict_rows(model, items)
    end_to_end = args.images / (time.perf_counter() - t0)
    encode_rate = args.batch / times["encode"]
    rows = [
        ("encode (encode_throughput.py)", encode_rate),
        ("predict: logits_of_batch", args.batch / times["predict"]),
        ("predict: end to end, uint8 in memory", end_to_end),
    ]
    print(f"{args.backbone}@{args.size}, {args.mode}, batch {args.batch}, {jax.default_backend()}, f32")
    print(f"{'':40s} {'images/s':>10s} {'/ encode':>9s}")
    for name, rate in rows:
        print(f"{name:40s} {rate:10.1f} {rate / encode_rate:9.2f}")


if __name__ == "__main__":
    main()
