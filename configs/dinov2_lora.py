r"""PEAL: DINOv2 with LoRA on q, k, v of every block plus a linear head, entropy (or Featdist) + PCB.

    python -m alpeft_jax.main --config=configs/dinov2_lora.py --workdir=workdirs/peal_lora_eurosat_s1
    python -m alpeft_jax.main --config=configs/dinov2_lora.py:featdist --workdir=workdirs/peal_lora_fd_s1

Backbone `facebook/dinov2-base` (HF cache or directory); dataset EuroSAT RGB via TFDS (`eurosat/rgb`; also
`colorectal_histology`, or your own APTOS folder with --config.data.name=folder --config.data.dir=...).
The PEAL paper does not state its LoRA rank, rounds or optimiser (METHOD.md §4.2, §7): these defaults follow
C-PEAL (r=4, 10 rounds of K labels, 10 epochs, SGD 0.002). Hardware: one GPU.
Expected (paper, qualitative): LoRA beats the linear probe (configs/dinov2_linear.py) at equal labels.
Args: `featdist`, `runlocal`, `seed=N`, `dataset=NAME`, `variant=small|base|large|giant`.
"""

from alpeft_jax.config import apply_runlocal, base, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base()
    c.seed = int(args.get("seed", 1))
    c.backbone = f"facebook/dinov2-{args.get('variant', 'base')}"
    c.data.name = args.get("dataset", "eurosat/rgb")
    c.adapt.mode = "lora"
    c.adapt.head = "linear"
    c.adapt.lora.dropout = 0.25
    c.train.calibration = "none"
    c.al.strategy = "featdist" if "featdist" in args else "entropy"
    c.name = f"dinov2-lora+{c.al.strategy}"
    if "runlocal" in args:
        apply_runlocal(c)
    return c
