r"""PEAL (METHOD.md §1.2, §4.2): DINOv2 with LoRA (`mode=lora`) against a linear probe (`mode=linear`).

    python -m alpeft_jax.main --config=configs/peal.py --workdir=workdirs/peal/eurosat/lora_entropy_s1
    python -m alpeft_jax.main --config=configs/peal.py:mode=linear --workdir=workdirs/peal/eurosat/linear_entropy_s1
    python -m alpeft_jax.main --config=configs/peal.py:dataset=colorectal_histology,strategy=featdist \
        --workdir=workdirs/peal/histology/lora_featdist_s1
    python -m alpeft_jax.main --config=configs/peal.py:dataset=aptos,mode=linear,seed=2 \
        --workdir=workdirs/peal/aptos/linear_entropy_s2 --config.data.dir=/data/aptos

`mode=lora`: LoRA (r=4, alpha/sqrt(r), dropout 0.25) on q, k, v of every block plus a linear head, trained from
fresh adapters every round with augmentation. `mode=linear`: the backbone is frozen, so pool and test features
are computed once (cached in DIR/cache) and each round trains only the K x D head (no augmentation). Entropy
(or `strategy=featdist|random`) + PCB; no calibration loss (PEAL has none). The PEAL paper does not state its
LoRA rank, rounds, budgets or optimiser (METHOD.md §4.2, §7): these follow C-PEAL (10 rounds of K labels,
10 epochs, SGD 0.002, batch 32).
Data, with the first 80% of the dataset's one split as the pool and the last 20% as the test set (TFDS slicing,
deterministic): `eurosat` (TFDS `eurosat/rgb`, 27,000 images, 10 classes: pool 21,600, test 5,400),
`colorectal_histology` (TFDS, 5,000 tiles, 8 classes: pool 4,000, test 1,000), `aptos` (APTOS 2019 as an
image folder DIR/<diagnosis 0-4>/<image>, 3,662 images, 5 grades; --config.data.dir=DIR; the 80/20 cut is taken
from a fixed shuffle of the sorted files). Weights: `facebook/dinov2-<variant>` (Hugging Face hub id or cache;
the pre-flight check prints the download command when it is missing).
Hardware: one GPU (`mode=linear` also runs on a CPU: one feature pass over pool and test, then seconds per round).
Expected (paper, qualitative, METHOD.md §6.2): LoRA above the linear probe at equal labels on all three
datasets; with the linear probe, Featdist and entropy may not beat random sampling.
Args: `mode=lora|linear`, `dataset=eurosat|colorectal_histology|aptos`, `strategy=entropy|featdist|random`,
`variant=base|small|large|giant`, `seed=N`, `runlocal`.
"""

from alpeft_jax.config import (
    DINOV2_BACKBONES,
    PEAL_DATASETS,
    apply_runlocal,
    base,
    parse_arg,
    run_name,
    set_peal_data,
)

ARGS = {
    "mode": ("lora", "linear"),
    "dataset": tuple(PEAL_DATASETS),
    "strategy": ("entropy", "featdist", "random"),
    "variant": ("base", "small", "large", "giant"),
    "seed": 1,
    "runlocal": False,
}


def get_config(arg=None):
    a = parse_arg(arg, ARGS, __file__)
    c = base()
    c.seed = a["seed"]
    c.backbone = DINOV2_BACKBONES[a["variant"]].source
    set_peal_data(c, a["dataset"])
    c.data.coop_names = False
    c.adapt.mode = a["mode"]
    c.adapt.head = "linear"
    if a["mode"] == "lora":
        c.adapt.lora.rank = 4
        c.adapt.lora.dropout = 0.25
        c.train.augment = True
    else:
        c.train.augment = False  # train on the cached features
    c.train.calibration = "none"
    c.al.strategy = a["strategy"]
    if a["runlocal"]:
        apply_runlocal(c)
    c.name = f"{a['mode']}:" + run_name(c)
    return c
