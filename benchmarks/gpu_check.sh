#!/usr/bin/env bash
# The GPU half of the benchmarks in one run (at most ~9.5 minutes on one H100/H200), from the repository root:
#
#     PYTHONPATH=. OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. CLIP ViT-B/16 image tower, batch 256: ours f32/bf16 (and the attention kernel it compiled to) beside
#    transformers' PyTorch eager (SDPA) and torch.compile, plus the bf16 matmul peak.
# 2. ViT-B/32, DINOv2-B/14, ViT-L/14 the same way, without torch.compile.
# 3. Selection at N = 1M, D = 512 from arrays in device memory: entropy/coreset/BADGE (K = 100, budget 1000),
#    then TypiClust and ProbCover (K = 10, budget 100, first call only).
# 4. Data-parallel training steps/s and pool-scoring img/s on the GPU (benchmarks/scaling.py, ViT-S/16 + LoRA).
# 5. The float16 + dynamic loss scaling toy test (XLA's CPU backend has no float16 matmuls, so CI skips it).
# Each step has its own time limit (560 s in all, under the device tool's 600 s per call), so one slow step
# cannot starve the rest; outputs go to $OUT.
set -u
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
step() {  # step NAME SECONDS COMMAND...
    local name=$1 secs=$2
    shift 2
    echo "== $name (limit ${secs} s): $*" | tee "$out/$name.txt"
    local t0=$SECONDS
    timeout "$secs" "$@" 2>&1 | tee -a "$out/$name.txt"
    echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)" \
    2>&1 | tee -a "$out/gpu.txt"
step encode_b16 190 python benchmarks/encode_throughput.py --cases clip-vit-b16@224 --device-report \
    --batch 256 --iters 10
step encode_rest 90 python benchmarks/encode_throughput.py --cases clip-vit-b32@224,dinov2-b14@224,clip-vit-l14@224 \
    --device-report --no-torch-compile --batch 256 --iters 10
step select_1m 120 python benchmarks/selection.py --n 1000000 --k 100 --budget 1000 \
    --strategies entropy coreset badge --no-peer --on-device --timeout 40
step select_1m_clusters 95 python benchmarks/selection.py --n 1000000 --k 10 --budget 100 \
    --strategies typiclust probcover --no-peer --on-device --single-call --timeout 45
step scaling 35 python benchmarks/scaling.py --devices 1 --model vit --batch 64 --pool 2048 --chunk 256 --steps 10
step float16 30 python -m pytest -q -p no:cacheprovider tests/train_test.py -k "float16 or loss_scal"
