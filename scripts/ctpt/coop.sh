#!/usr/bin/env bash
# C-TPT from a learned context (its --load): coop.sh CFG SETS MODEL [KEY VALUE ...]
#   MODEL: a CoOp/CoCoOp/GenPT run folder (LOADEP picks its epoch) or a checkpoint file.
#   e.g. DATA=/data LOADEP=50 bash scripts/ctpt/coop.sh rn50 shifts output/imagenet/CoOp/rn50_16shots/nctx4/seed1
USAGE="CFG SETS MODEL [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
MODEL=$3
shift 3
if [ -n "${LOADEP:-}" ]; then
  run_test_time CTPT coop "$CFG" "$SETS" --eval-only --model-dir "$MODEL" --load-epoch "$LOADEP" "$@"
else
  run_test_time CTPT coop "$CFG" "$SETS" TRAINER.CTPT.LOAD "$MODEL" "$@"
fi
