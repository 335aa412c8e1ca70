#!/usr/bin/env bash
# GenPT under CoCoOp's base-to-novel protocol (same arguments and layout): base2new_test.sh DATASET SEED [KEY VALUE ...]
export TRAINER=GenPT
export CFG=${CFG:-vit_b16_c4_ep10_batch4_ctxv1}
source "$(dirname "$0")/../cocoop/base2new_test.sh"  # $0 stays this script (usage line)
