#!/usr/bin/env bash
# Zero + Ensemble (its --templates: the 7 Tip-Adapter templates): ensemble.sh CFG SETS [KEY VALUE ...]
#   e.g. DATA=/data SEED=1 bash scripts/zero/ensemble.sh vit_b16 finegrained
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_test_time Zero ensemble "$CFG" "$SETS" TRAINER.ZERO.TEMPLATES tip7 "$@"
