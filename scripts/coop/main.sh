#!/usr/bin/env bash
# CoOp few-shot training, seeds 1-3: main.sh DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]
USAGE="DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]"
source "$(dirname "$0")/../common.sh"
TRAINER=CoOp
DATASET=$1
CFG=$2    # config file
CTP=$3    # class token position (end, middle or front)
NCTX=$4   # number of context tokens
SHOTS=$5  # number of shots (1, 2, 4, 8, 16)
CSC=$6    # class-specific context (False or True)
shift 6

for SEED in ${SEEDS:-1 2 3}; do
  run_method "${OUTPUT_ROOT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}" "$DATASET" "$SEED" \
    TRAINER.COOP.N_CTX "$NCTX" \
    TRAINER.COOP.CSC "$CSC" \
    TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" \
    DATASET.NUM_SHOTS "$SHOTS" \
    "$@"
done
