#!/usr/bin/env bash
# Evaluate ImageNet-trained CoOp (16 shots, 16 ctx) on DATASET, seeds 1-3: eval.sh DATASET CFG [KEY VALUE ...]
# The model is looked for under output/imagenet/CoOp/<CFG>_16shots/...; LOADEP (default 50) picks the epoch.
USAGE="DATASET CFG [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=CoOp
SHOTS=16
NCTX=16
CSC=False
CTP=end
DATASET=$1
CFG=$2
shift 2
LOADEP=${LOADEP:-50}

for SEED in ${SEEDS:-1 2 3}; do
  COMMON=${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}
  run_method "${OUTPUT_ROOT}/evaluation/${COMMON}/${DATASET}/seed${SEED}" "$DATASET" "$SEED" \
    --model-dir "${OUTPUT_ROOT}/imagenet/${COMMON}/seed${SEED}" \
    --load-epoch "$LOADEP" \
    --eval-only \
    TRAINER.COOP.N_CTX "$NCTX" \
    TRAINER.COOP.CSC "$CSC" \
    TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" \
    "$@"
done
