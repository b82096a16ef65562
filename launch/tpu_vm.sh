#!/usr/bin/env bash
# Run an alpeft_jax experiment on a Cloud TPU VM (single- or multi-host).
#
#   TPU_NAME=my-tpu ZONE=us-central2-b ACCELERATOR=v4-8 ./launch/tpu_vm.sh create
#   TPU_NAME=my-tpu ZONE=us-central2-b ./launch/tpu_vm.sh setup
#   TPU_NAME=my-tpu ZONE=us-central2-b CONFIG=configs/lora.py WORKDIR=gs://bucket/runs/lora_dtd_s1 \
#       ./launch/tpu_vm.sh run --config.data.dir=gs://bucket/tfds
#
# `run` starts the same command on every host (--worker=all); with more than one host it passes --distributed
# so that jax.distributed.initialize() runs first. Pool scoring then spans every chip of every host and all
# hosts select the same examples. WORKDIR must be shared by all hosts (a GCS bucket) for checkpoints/resume.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO=${REPO:-$(git config --get remote.origin.url || echo "")}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" \
      --version "$RUNTIME" ;;
  setup)
    ssh_all "git clone $REPO alpeft_jax 2>/dev/null || (cd alpeft_jax && git pull); cd alpeft_jax && \
      pip install -U pip && pip install 'jax[tpu]' -e . " ;;
  run)
    shift
    : "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
    HOSTS=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" --format='value(networkEndpoints.len())' || echo 1)
    DIST=""; [ "${HOSTS:-1}" -gt 1 ] && DIST="--distributed"
    ssh_all "cd alpeft_jax && python -m alpeft_jax.main --config=$CONFIG --workdir=$WORKDIR $DIST $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
