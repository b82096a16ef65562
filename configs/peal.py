r"""PEAL (METHOD.md §1.2, §4.2): DINOv2 with LoRA (`mode=lora`) against a linear probe (`mode=linear`).

    python -m alpeft_jax.main --config=configs/peal.py --workdir=workdirs/peal/eurosat/lora_entropy_s1
    python -m alpeft_jax.main --config=configs/peal.py:mode=linear --workdir=workdirs/peal/eurosat/linear_entropy_s1
    python -m alpeft_jax.main --config=configs/peal.py:dataset=colorectal_histology,strategy=featdist \
        --workdir=workdirs/peal/histology/lora_featdist_s1
    python -m alpeft_jax.main --config=configs/peal.py:dataset=aptos,mode=linear,seed=2 \
        --workdir=workdirs/peal/aptos/linear_entropy_s2 --config.data.dir=/data/aptos

`mode=lora`: LoRA (r=4, alpha/sqrt(r), dropout 0.25) on q, k, v of every block plus a linear head, trained from
fresh adapters every round. `mode=linear`: the backbone is frozen, so pool and test features are computed once
(cached in DIR/cache) and each round trains only the K x D head. Both arms train on the same views: no
augmentation by default (the linear probe then reads its cached features); `augment` gives both random resized
crop + flip (the linear probe then runs the frozen backbone every step). Entropy (or `strategy=featdist|random`)
+ PCB; no calibration loss (PEAL has none).
The paper's settings: DINOv2 with LoRA against a linear probe, entropy / Featdist / random with PCB, the three
datasets, and 0.03% trainable parameters. Ours (the paper does not state them, METHOD.md §4.2, §7): the rank and
targets of the default LoRA, the 80/20 pool/test split, DINOv2-base, and C-PEAL's schedule (10 rounds of K
labels, 10 epochs, SGD 0.002, batch 32).
`lora=paper` matches the paper's 0.03%: rank 1 on q, k, v of the last half of the blocks. For DINOv2-base
(86,580,480 parameters; width 768, 12 blocks) a rank-r update of a 768x768 projection has r x (768 + 768)
parameters, so: the default r=4 on q, k, v of 12 blocks = 4 x 1,536 x 3 x 12 = 221,184 = 0.255%; `lora=paper`
(r=1 on q, k, v of blocks 6-11) = 1 x 1,536 x 3 x 6 = 27,648 = 0.032% (the linear head's K x 768 + K, 7,690 for
EuroSAT, comes on top in both arms). The run's summary logs both shares.
Data, with the first 80% of the dataset's one split as the pool and the last 20% as the test set (TFDS slicing,
deterministic; our choice, the paper does not state its split): `eurosat` (TFDS `eurosat/rgb`, 27,000 images,
10 classes: pool 21,600, test 5,400),
`colorectal_histology` (TFDS, 5,000 tiles, 8 classes: pool 4,000, test 1,000), `aptos` (APTOS 2019 as an
image folder DIR/<diagnosis 0-4>/<image>, 3,662 images, 5 grades; --config.data.dir=DIR; the 80/20 cut is taken
from a fixed shuffle of the sorted files). Weights: `facebook/dinov2-<variant>` (Hugging Face hub id or cache;
the pre-flight check prints the download command when it is missing).
Hardware: one GPU (`mode=linear` also runs on a CPU: one feature pass over pool and test, then seconds per round).
Expected (paper, qualitative, METHOD.md §6.2): LoRA above the linear probe at equal labels on all three
datasets; with the linear probe, Featdist and entropy may not beat random sampling.
Args: `mode=lora|linear`, `dataset=eurosat|colorectal_histology|aptos`, `strategy=entropy|featdist|random`,
`variant=base|small|large|giant`, `lora=default|paper`, `augment`, `seed=N`, `runlocal`.
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

DINOV2_DEPTH = {"small": 12, "base": 12, "large": 24, "giant": 40}

ARGS = {
    "mode": ("lora", "linear"),
    "dataset": tuple(PEAL_DATASETS),
    "strategy": ("entropy", "featdist", "random"),
    "variant": ("base", "small", "large", "giant"),
    "lora": ("default", "paper"),
    "augment": False,
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
        if a["lora"] == "paper":  # ~0.03% of the backbone: rank 1 on q, k, v of the last half of the blocks
            depth = DINOV2_DEPTH[a["variant"]]
            c.adapt.lora.rank = 1
            c.adapt.lora.targets = f"encoder/block_({'|'.join(map(str, range(depth // 2, depth)))})/attn/(q|k|v)"
    c.train.augment = a["augment"]  # the same for both arms; off: the linear probe trains on cached features
    c.train.calibration = "none"
    c.al.strategy = a["strategy"]
    if a["runlocal"]:
        apply_runlocal(c)
    paper = a["mode"] == "lora" and a["lora"] == "paper"
    c.name = f"{a['mode']}{'_paper' if paper else ''}:" + run_name(c)
    return c
