#!/usr/bin/env bash
# Cross-dataset / domain generalisation, training on ImageNet (16 shots): xd_train.sh SEED [KEY VALUE ...]
USAGE="SEED [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
DATASET=${SOURCE_DATASET:-imagenet}
SEED=$1
shift 1

run_method "${OUTPUT_ROOT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}" "$DATASET" "$SEED" \
  DATASET.NUM_SHOTS "$SHOTS" \
  "$@"
