#!/usr/bin/env bash
# TPT from hand-crafted words (the reference's test_tpt.sh): words.sh CFG SETS [KEY VALUE ...]
#   CFG: rn50 or vit_b16; SETS: shifts (I/A/V/R/K), finegrained, or a /-separated list.
#   e.g. DATA=/data bash scripts/tpt/words.sh rn50 shifts
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_tpt words "$CFG" "$SETS" TRAINER.TPT.CTX_INIT "a photo of a" "$@"
