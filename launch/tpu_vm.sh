#!/usr/bin/env bash
# Run alpeft_jax experiments on a Cloud TPU VM, one host or a pod slice. The steps live in launch/tpu.py.
#
#   export TPU_NAME=al-v4 ZONE=us-central2-b ACCELERATOR=v4-8      # or v5litepod-16, v5p-8, v6e-8, ...
#   ./launch/tpu_vm.sh create [--spot]     # pod slices go through a queued resource; `status` shows when ACTIVE
#   ./launch/tpu_vm.sh setup               # HEAD of this checkout (or REPO=<git url>) + Python 3.11 + jax[tpu]
#   CONFIG=configs/lora.py WORKDIR=gs://BUCKET/runs/lora_s1 \
#       ./launch/tpu_vm.sh run --config.data.dir=gs://BUCKET/tfds --config.name="lora s1"
#   CONFIG=configs/coop.py WORKDIR=gs://BUCKET/sweeps/coop_dtd ./launch/tpu_vm.sh sweep --args=dataset=dtd \
#       --strategies=random,entropy,badge,coreset,ours --seeds=1,2,3   # every cell in turn, then summary.md
#   ./launch/tpu_vm.sh status | logs [-f] | stop
#   ./launch/tpu_vm.sh fetch [WORKDIR...]  # results, report table and plot into workdirs/fetched/$TPU_NAME
#   ./launch/tpu_vm.sh delete
#
# DRY_RUN=1 prints every command instead of running it. `run` starts the same command on every worker in the
# background (a log per worker, ~/alpeft_logs) and adds --distributed when the slice has more than one host.
set -euo pipefail
here=${BASH_SOURCE[0]%/*}
[ "$here" != "${BASH_SOURCE[0]}" ] || here=.
exec python3 "$here/tpu.py" "$@"
