#!/usr/bin/env bash
# Zero from "a photo of a" (its scripts/zero.sh): words.sh CFG SETS [KEY VALUE ...]
#   CFG: rn50 or vit_b16; SETS: shifts (I/A/V/R/K), finegrained, or a /-separated list. SEED: 1-3 in the paper.
#   e.g. DATA=/data SEED=1 bash scripts/zero/words.sh vit_b16 shifts
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_test_time Zero words "$CFG" "$SETS" TRAINER.ZERO.TEMPLATES "" "$@"
