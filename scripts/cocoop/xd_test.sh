#!/usr/bin/env bash
# Cross-dataset / domain generalisation, testing the ImageNet-trained model on DATASET: xd_test.sh DATASET SEED [KEY VALUE ...]
USAGE="DATASET SEED [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
SOURCE=${SOURCE_DATASET:-imagenet}
DATASET=$1
SEED=$2
shift 2

run_eval "${OUTPUT_ROOT}/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}" \
  "${OUTPUT_ROOT}/${SOURCE}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}" "$DATASET" "$SEED" "$@"
