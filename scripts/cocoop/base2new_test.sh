#!/usr/bin/env bash
# Base-to-novel, testing the base-trained model on the new classes: base2new_test.sh DATASET SEED [KEY VALUE ...]
# LOADEP defaults to the config's last epoch (OPTIM.MAX_EPOCH), so CoOp configs need no hand edit.
USAGE="DATASET SEED [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
SUB=${SUB:-new}
DATASET=$1
SEED=$2
shift 2

COMMON_DIR=${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
run_eval "${OUTPUT_ROOT}/base2new/test_${SUB}/${COMMON_DIR}" "${OUTPUT_ROOT}/base2new/train_base/${COMMON_DIR}" \
  "$DATASET" "$SEED" \
  DATASET.NUM_SHOTS "$SHOTS" \
  DATASET.SUBSAMPLE_CLASSES "$SUB" \
  "$@"
