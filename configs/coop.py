r"""C-PEAL, prompt-learning mode (CoOp, METHOD.md §3.1 mode A, §5): CLIP on the CoOp split of a C-PEAL dataset.

    python -m alpeft_jax.main --config=configs/coop.py:ours --workdir=workdirs/coop/dtd_rn50/ours_s1
    python -m alpeft_jax.main --config=configs/coop.py --workdir=workdirs/coop/dtd_rn50/entropy_s1
    python -m alpeft_jax.main --config=configs/coop.py --workdir=workdirs/coop/dtd_rn50/coreset_s1 \
        --config.al.strategy=coreset
    python -m alpeft_jax.main --config=configs/coop.py:dataset=flowers102,backbone=vit_b16,ours,seed=3 \
        --workdir=workdirs/coop/flowers_b16/ours_s3 --config.data.dir=~/tensorflow_datasets

The authors' released script (`scripts/run_r50_dtd.sh`): RN50 on DTD, `ours` = entropy sampling + the
calibration loss (weight 1, annealed, balanced) against the baselines random, entropy, BADGE and Coreset, which
run without it (`--config.al.strategy=...`). 16 class-specific context vectors per class (N(0, 0.02^2), class
token at the end: K*16*512 trainable parameters, 385,024 on DTD); the image tower is frozen, so pool and test
image features are computed once and every round only runs the text tower. PCB over int(0.1 * pool)
candidates; 10 rounds of K labels (round 0 random), 10 epochs per round from fresh prompts, SGD 0.002 as the
authors; seeds 1, 2, 3. EuroSAT's prompts use the class names of CoOp's split file unchanged, as the authors' code.
`ours` is the calibration loss as the authors' script runs it; `train.calibration=cpeal` alone means the same
recipe. The reference's bare `--secondary_calib_loss` flag is `--config.train.calibration_weight=0.01
--config.train.calibration_anneal=false --config.train.calibration_weighting=none`. The learning-loss baseline
(`--config.al.strategy=learning_loss`) trains with no calibration term, as the reference.
PCB off (the papers' ablation rows): `nopcb` keeps the last K of the candidates in the strategy's order, as the
reference's `--disable_pcb` (`idx[-K:]`: the K most uncertain for entropy; for BADGE, Coreset, margin and
learning loss a different set from their own top K, which `--config.al.pcb=false` alone picks).
Precision: the authors ran prompt learning in pure fp16 (CLIP's fp16 weights, no loss scaler): on a GPU
`--config.dtype=float16` reproduces those numerics (float16 compute over float32 master weights, with a dynamic loss
scale that carries across rounds; skipped overflow steps are counted per round as `skipped_steps` in results.jsonl).
The default float32 is exact but rounds differently; `--config.dtype=bfloat16` (TPUs) keeps float32's range
(no loss scaling) with 8 mantissa bits instead of float16's 11, so logits, entropies and hence tie-breaking picks
can differ from the authors' at the last digits, not systematically.

Data: as configs/lora.py (`layout=tfds`: CoOp's split_zhou file over TFDS records, the file in
--config.data.dir; `layout=coop`: CoOp's folders under --config.data.dir=DATA). Weights: `rn50` (default) and
`rn101` from weights/clip-rn50 (-rn101), `vit_b32` / `vit_b16` from the Hugging Face hub ids; the pre-flight
check prints the download command for whichever is missing.
Hardware: one GPU (DTD: ten rounds of text-tower training at most 470 labels: minutes); a CPU runs `runlocal`.
Expected: pool / test / K as in configs/lora.py; per-round accuracy rising from about the zero-shot level. The
paper's numbers are not public (METHOD.md §6); its claims: `ours` matches or beats BADGE and Coreset at a
fraction of their selection time.
Args: `ours`, `nopcb`, `dataset=dtd|eurosat|caltech101|oxford_pets|flowers102|fgvc_aircraft|stanford_cars`,
`layout=auto|tfds|coop`, `backbone=rn50|rn101|vit_b32|vit_b16`, `seed=N`, `runlocal`.
"""

from alpeft_jax.config import (
    CLIP_BACKBONES,
    CPEAL_DATASETS,
    apply_runlocal,
    base,
    parse_arg,
    run_name,
    set_cpeal_data,
)

ARGS = {
    "dataset": tuple(CPEAL_DATASETS),
    "layout": ("auto", "tfds", "coop"),
    "backbone": ("rn50", "rn101", "vit_b32", "vit_b16"),
    "ours": False,
    "nopcb": False,
    "seed": 1,
    "runlocal": False,
}


def get_config(arg=None):
    a = parse_arg(arg, ARGS, __file__)
    c = base()
    c.seed = a["seed"]
    c.backbone = CLIP_BACKBONES[a["backbone"]].source
    layout = a["layout"]
    if layout == "auto":
        layout = "tfds" if CPEAL_DATASETS[a["dataset"]][1] else "coop"
    set_cpeal_data(c, a["dataset"], layout)
    c.adapt.mode = "prompt"
    c.adapt.prompt.n_ctx = 16
    c.adapt.prompt.class_specific = True
    c.adapt.prompt.init = ""
    c.adapt.prompt.position = "end"
    c.train.augment = True
    c.al.strategy = "entropy"
    if a["ours"]:
        c.train.calibration = "cpeal"
        c.train.calibration_weight = 1.0
        c.train.calibration_anneal = True
        c.train.calibration_weighting = "balanced"
    if a["nopcb"]:  # the papers' ablation without PCB, selecting as the reference code does (idx[-K:])
        c.al.pcb = False
        c.al.authors_quirk = True
    if a["runlocal"]:
        apply_runlocal(c)
    c.name = "prompt:" + run_name(c)
    return c
