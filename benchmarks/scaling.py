"""Data-parallel scaling: training steps/s and pool-scoring images/s on 1, 2, 4, 8 devices, side by side.

    python benchmarks/scaling.py [--devices 1 2 4 8] [--model efficientnet|vit] [--batch 64] [--steps 10]

Each device count runs in its own process (on CPU with `--xla_force_host_platform_device_count=D`; on an
accelerator host with the first D devices), through the same code the driver uses: `Trainer.train_step` on global
batches split over the mesh's `data` axis, `PoolScorer.score` over a pool of `--pool` images in chunks of
`--chunk`. Models: `efficientnet` = EfficientNet-Lite0 (ImageNet weights) with LoRA on blocks 13-15 and a linear
head at 64 px, trained on images; `vit` = a ViT-S/16-sized DINOv2 tower (random weights) with LoRA on q/v at
224 px. Timings are medians of `--steps` calls after a warm-up call (compilation excluded). The table gives each
count's throughput and its ratio to one device; on CPU the fake devices share the same cores, so the point there
is that every device gets work (the ratio stays near 1), not speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, ROOT)
    from alpeft_jax import backbones
    from alpeft_jax.models.adapted import AdaptConfig, AdaptedModel
    from alpeft_jax.models.lora import LoraConfig
    from alpeft_jax.parallel import Sharder, make_mesh
    from alpeft_jax.scoring import PoolScorer
    from alpeft_jax.train import TrainConfig, Trainer

    devices = jax.devices()[: args.worker]
    sharder = Sharder(make_mesh(devices))
    names = [f"c{i}" for i in range(10)]
    if args.model == "efficientnet":
        bb = backbones.load("efficientnet-lite0")
        lora = LoraConfig(rank=4, alpha=4.0, dropout=0.0, targets=(r"blocks_1[3-5]/(expand|project)_conv",))
        size = 64
    else:
        import tempfile

        import torch
        import transformers

        cfg = transformers.Dinov2Config(
            num_hidden_layers=12, hidden_size=384, num_attention_heads=6, mlp_ratio=4, image_size=224, patch_size=16
        )
        torch.manual_seed(0)
        path = tempfile.mkdtemp()
        transformers.Dinov2Model(cfg).save_pretrained(path)
        bb = backbones.load(path)
        lora = LoraConfig(rank=4, alpha=4.0, dropout=0.0, targets=(r".*/attn/(q|v)",))
        size = 224
    bb.params = sharder.replicate(bb.params)
    model = AdaptedModel(bb, names, AdaptConfig(mode="lora", lora=lora, head="linear"))
    tc = TrainConfig(epochs=2, batch_size=args.batch, calibration="cpeal", loss_scale="none")
    trainer = Trainer(model, tc, "images", sharder)
    g = np.random.default_rng(0)
    x = g.normal(size=(args.batch, size, size, 3)).astype(np.float32)
    batch = {"inputs": x, "label": g.integers(0, 10, args.batch).astype(np.int32), "_mask": np.ones(args.batch, bool)}
    state = trainer.init(jax.random.key(0))
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch, 1)
        jax.block_until_ready(m["loss"])
        if i:
            times.append(time.perf_counter() - t0)
    train = 1.0 / statistics.median(times)
    scorer = PoolScorer(model, "images", chunk_size=args.chunk, sharder=sharder)
    pool = g.normal(size=(args.pool, size, size, 3)).astype(np.float32)

    def batches() -> object:
        for s in range(0, args.pool, args.chunk):
            part = pool[s : s + args.chunk]
            yield {
                "inputs": part,
                "label": np.full(len(part), -1, np.int32),
                "pos": np.arange(s, s + len(part)),
                "_mask": np.ones(len(part), bool),
            }

    scorer.score(state["trainable"], batches(), args.pool)  # warm-up (compilation)
    stimes = []
    for _ in range(max(1, args.steps // 3)):
        t0 = time.perf_counter()
        scorer.score(state["trainable"], batches(), args.pool)
        stimes.append(time.perf_counter() - t0)
    return {
        "devices": len(devices),
        "platform": devices[0].platform,
        "train_steps_s": train,
        "train_img_s": train * args.batch,
        "score_img_s": args.pool / statistics.median(stimes),
        "per_device_batch": args.batch / len(devices),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--model", choices=["efficientnet", "vit"], default="efficientnet")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--pool", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    on_cpu = jax.default_backend() == "cpu"
    rows = []
    for d in args.devices:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))  # runs from a checkout
        if on_cpu:  # fake CPU devices sharing this machine's cores
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={d}".strip()
            env["JAX_PLATFORMS"] = "cpu"
        elif d > len(jax.devices()):
            print(f"{d} devices: only {len(jax.devices())} here, skipped")
            continue
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            str(d),
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--chunk",
            str(args.chunk),
            "--pool",
            str(args.pool),
            "--steps",
            str(args.steps),
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{d} devices failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[0][len("RESULT ") :]))
    if not rows:
        sys.exit(1)
    base = rows[0]
    print(
        f"model {args.model}, global batch {args.batch}, pool {args.pool} in chunks of {args.chunk}, "
        f"platform {base['platform']}"
    )
    print("| devices | per-device batch | train steps/s | train img/s | vs 1st | scoring img/s | vs 1st |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['per_device_batch']:.0f} | {r['train_steps_s']:.2f} | {r['train_img_s']:.1f} | "
            f"{r['train_img_s'] / base['train_img_s']:.2f}x | {r['score_img_s']:.1f} | "
            f"{r['score_img_s'] / base['score_img_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()
