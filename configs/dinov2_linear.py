r"""PEAL's baseline: a linear probe on frozen DINOv2 features, entropy (or Featdist) + PCB.

    python -m alpeft_jax.main --config=configs/dinov2_linear.py --workdir=workdirs/peal_linear_eurosat_s1

The backbone is frozen, so pool and test features are computed once (cached in DIR/cache) and each round
trains only the K x D head on cached features (no augmentation). Hardware: one GPU, or a CPU.
Expected (paper, qualitative): below configs/dinov2_lora.py at equal labels; with frozen features, Featdist and
entropy may not beat random sampling.
Args: `featdist`, `runlocal`, `seed=N`, `dataset=NAME`, `variant=small|base|large|giant`.
"""

from alpeft_jax.config import apply_runlocal, base, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base()
    c.seed = int(args.get("seed", 1))
    c.backbone = f"facebook/dinov2-{args.get('variant', 'base')}"
    c.data.name = args.get("dataset", "eurosat/rgb")
    c.adapt.mode = "linear"
    c.adapt.head = "linear"
    c.train.augment = False
    c.train.calibration = "none"
    c.al.strategy = "featdist" if "featdist" in args else "entropy"
    c.name = f"dinov2-linear+{c.al.strategy}"
    if "runlocal" in args:
        apply_runlocal(c)
    return c
