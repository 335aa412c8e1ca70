#!/usr/bin/env bash
# TPT starting from a CoOp context (the reference's test_tpt_coop.sh): coop.sh CFG SETS MODEL_DIR [KEY VALUE ...]
#   MODEL_DIR: a CoOp run folder (its prompt_learner/) or a checkpoint file; LOADEP picks the epoch of a
#   folder (default: model-best, else the latest). Any N_CTX works; the reference used 4 tokens.
#   e.g. DATA=/data LOADEP=50 bash scripts/tpt/coop.sh rn50 shifts output/imagenet/CoOp/rn50_ep50_16shots/nctx4_cscFalse_ctpend/seed1
USAGE="CFG SETS MODEL_DIR [KEY VALUE ...]"
source "$(dirname "$0")/common_tpt.sh"
run_tpt_from coop "$@"
