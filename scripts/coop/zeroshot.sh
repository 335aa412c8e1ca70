#!/usr/bin/env bash
# Zero-shot CLIP on DATASET with the backbone of a CoOp config: zeroshot.sh DATASET CFG [KEY VALUE ...]
USAGE="DATASET CFG [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=ZeroshotCLIP
DATASET=$1
CFG=$2
shift 2

run_train "${OUTPUT_ROOT}/${TRAINER}/${CFG}/${DATASET}" \
  --trainer "$TRAINER" \
  --dataset-config-file "configs/datasets/${DATASET}.yaml" \
  --config-file "configs/trainers/CoOp/${CFG}.yaml" \
  --eval-only \
  "$@"
