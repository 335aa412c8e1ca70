#!/usr/bin/env bash
# Linear-probe CLIP, seeds 1-3: main.sh DATASET CFG SHOTS [KEY VALUE ...]
# CFG names configs/trainers/LinearProbeCLIP/<CFG>.yaml (rn50 as CoOp's lpclip, or vit_b16). The few-shot
# split is the one CoOp trains on for the same SHOTS and seed, so the two are compared on the same images.
# All five shot counts: for SHOTS in 1 2 4 8 16; do bash scripts/lpclip/main.sh oxford_pets rn50 $SHOTS; done
USAGE="DATASET CFG SHOTS [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=LinearProbeCLIP
DATASET=$1
CFG=$2
SHOTS=$3
shift 3

for SEED in ${SEEDS:-1 2 3}; do
  run_method "${OUTPUT_ROOT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}" "$DATASET" "$SEED" \
    DATASET.NUM_SHOTS "$SHOTS" \
    "$@"
done
