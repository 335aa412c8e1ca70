#!/usr/bin/env bash
# C-TPT from "a photo of a" (its test_tpt_ctpt_fg.sh and test_tpt_ctpt_ds.sh in one): words.sh CFG SETS [KEY VALUE ...]
#   CFG: rn50 or vit_b16; SETS: shifts (I/A/V/R/K), finegrained, or a /-separated list.
#   LAMBDA 50 on ImageNet and the fine-grained sets, 20 on ImageNet's shifts (AugMix views there).
#   e.g. DATA=/data bash scripts/ctpt/words.sh vit_b16 shifts
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_test_time CTPT words "$CFG" "$SETS" TRAINER.CTPT.CTX_INIT "a photo of a" "$@"
