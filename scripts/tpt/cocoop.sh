#!/usr/bin/env bash
# TPT starting from CoCoOp's per-image context (the reference's test_tpt_cocoop.sh):
#   cocoop.sh CFG SETS MODEL_DIR [KEY VALUE ...]   (MODEL_DIR and LOADEP as in coop.sh)
#   TRAINER.TPT.COCOOP_RAW_FEATURE True feeds the meta-net the unnormalised feature, as the reference code.
#   e.g. DATA=/data LOADEP=10 bash scripts/tpt/cocoop.sh vit_b16 finegrained output/imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed1
USAGE="CFG SETS MODEL_DIR [KEY VALUE ...]"
source "$(dirname "$0")/common_tpt.sh"
run_tpt_from cocoop "$@"
