r"""C-PEAL, LoRA mode (METHOD.md §3.1 mode B, §5 "OURS" + --peft): CLIP ViT-B/16 on DTD.

    python -m alpeft_jax.main --config=configs/lora.py --workdir=workdirs/lora_dtd_s1 --config.data.dir=~/tfds

LoRA r=4, alpha=4 (scale alpha/sqrt(r) = 2), dropout 0.25 on q, k, v of every block of both towers
(368,640 trainable parameters); frozen "X"*16 + class-name prompts; entropy sampling + PCB over a gamma=0.1
candidate pool; calibration loss weight 1, annealed, balanced; 10 rounds of K=47 labels, 10 epochs per round,
SGD lr 0.002 momentum 0.9 wd 5e-4, cosine with one warm-up epoch at 1e-5; batch 32; random resized crop + flip.
Hardware: one GPU (a round is a few seconds of training and one scoring pass over 2,820 images).
Needs: the checkpoint `openai/clip-vit-base-patch16` (HF cache or a directory via --config.backbone) and DTD
prepared for TFDS (`tfds build dtd --data_dir DIR`) or the CoOp split (`--config.data.name=coop:dtd`).
Expected: per-round accuracy rising from about the zero-shot level; the papers' numbers are not public
(METHOD.md §6), so compare against `--config.train.calibration=none` and `--config.al.strategy=badge|coreset`.
Args: `runlocal`, `seed=N`, `dataset=NAME`.
"""

from alpeft_jax.config import apply_runlocal, base, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base()
    c.name = "lora+entropy+calib"
    c.seed = int(args.get("seed", 1))
    c.backbone = "openai/clip-vit-base-patch16"
    c.data.name = args.get("dataset", "dtd")
    c.adapt.mode = "lora"
    c.adapt.lora.towers = "both"
    if "runlocal" in args:
        apply_runlocal(c)
    return c
