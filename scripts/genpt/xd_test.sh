#!/usr/bin/env bash
# GenPT trained on ImageNet, tested on DATASET (cross-dataset or an ImageNet variant): xd_test.sh DATASET SEED [KEY VALUE ...]
export TRAINER=GenPT
export CFG=${CFG:-vit_b16_c4_ep10_batch4_ctxv1_cross_datasets}
source "$(dirname "$0")/../cocoop/xd_test.sh"  # $0 stays this script (usage line)
