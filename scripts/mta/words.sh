#!/usr/bin/env bash
# MTA from "a photo of a" (its main.py --mta): words.sh CFG SETS [KEY VALUE ...]
#   CFG: rn50 or vit_b16; SETS: shifts (I/A/V/R/K), finegrained, or a /-separated list. Its README: SEED=1.
#   e.g. DATA=/data SEED=1 bash scripts/mta/words.sh vit_b16 shifts
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_test_time MTA words "$CFG" "$SETS" TRAINER.MTA.TEMPLATES "" "$@"
