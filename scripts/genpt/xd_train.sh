#!/usr/bin/env bash
# GenPT trained on ImageNet (16 shots) for cross-dataset / domain generalisation: xd_train.sh SEED [KEY VALUE ...]
export TRAINER=GenPT
export CFG=${CFG:-vit_b16_c4_ep10_batch4_ctxv1_cross_datasets}
source "$(dirname "$0")/../cocoop/xd_train.sh"  # $0 stays this script (usage line)
