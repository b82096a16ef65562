r"""C-PEAL, prompt-learning mode (CoOp, METHOD.md §3.1 mode A, §5 "OURS"): CLIP RN50 or ViT-B/16 on DTD.

    python -m alpeft_jax.main --config=configs/coop.py:rn50 --workdir=workdirs/coop_rn50_dtd_s1 \
        --config.backbone=/path/to/RN50.pt --config.data.dir=~/tfds
    python -m alpeft_jax.main --config=configs/coop.py:vit_b16 --workdir=workdirs/coop_b16_dtd_s1

16 class-specific context vectors per class (N(0, 0.02^2), class token at the end: K*16*512 trainable
parameters); the image tower is frozen, so pool and test image features are computed once and every round only
runs the text tower. Entropy + PCB, calibration loss weight 1, annealed, balanced; 10 rounds of K labels,
10 epochs, SGD 0.002 as the authors. Hardware: one GPU, or a CPU for small datasets.
Expected: as configs/lora.py; compare with `--config.train.calibration=none`, `--config.al.strategy=badge`.
Args: `rn50` (OpenAI RN50 state dict) | `vit_b16` (default), `runlocal`, `seed=N`, `dataset=NAME`.
"""

from alpeft_jax.config import apply_runlocal, base, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base()
    c.name = "coop+entropy+calib"
    c.seed = int(args.get("seed", 1))
    c.backbone = "RN50.pt" if "rn50" in args else "openai/clip-vit-base-patch16"
    c.data.name = args.get("dataset", "dtd")
    c.adapt.mode = "prompt"
    c.adapt.prompt.n_ctx = 16
    c.adapt.prompt.class_specific = True
    c.adapt.prompt.position = "end"
    c.train.augment = True
    if "runlocal" in args:
        apply_runlocal(c)
    return c
