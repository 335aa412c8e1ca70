#!/usr/bin/env bash
# Base-to-novel, training on the base classes: base2new_train.sh DATASET SEED [KEY VALUE ...]
# TRAINER and CFG may be overridden (e.g. TRAINER=CoOp CFG=vit_b16_ctxv1) to run CoOp under this protocol.
USAGE="DATASET SEED [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
DATASET=$1
SEED=$2
shift 2

run_method "${OUTPUT_ROOT}/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}" "$DATASET" "$SEED" \
  DATASET.NUM_SHOTS "$SHOTS" \
  DATASET.SUBSAMPLE_CLASSES base \
  "$@"
