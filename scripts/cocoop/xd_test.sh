#!/usr/bin/env bash
# Cross-dataset / domain generalisation, testing the ImageNet-trained model on DATASET: xd_test.sh DATASET SEED [KEY VALUE ...]
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
SOURCE=${SOURCE_DATASET:-imagenet}
DATASET=$1
SEED=$2
shift 2

MODEL_DIR=${OUTPUT_ROOT}/${SOURCE}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
LOADEP=${LOADEP:-$("$PYTHON" -m vlprompt.last_epoch "$MODEL_DIR" "configs/trainers/${TRAINER}/${CFG}.yaml")}

run_train "${OUTPUT_ROOT}/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}" \
  --seed "$SEED" \
  --trainer "$TRAINER" \
  --dataset-config-file "configs/datasets/${DATASET}.yaml" \
  --config-file "configs/trainers/${TRAINER}/${CFG}.yaml" \
  --model-dir "$MODEL_DIR" \
  --load-epoch "$LOADEP" \
  --eval-only \
  "$@"
