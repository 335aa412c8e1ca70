#!/usr/bin/env bash
# TDA with its template ensembles and per-dataset configs (its run_ood_benchmark_*.sh and
# run_cd_benchmark_*.sh): templates.sh CFG SETS [KEY VALUE ...]
#   CFG: rn50 or vit_b16; SETS: shifts (I/A/V/R/K), finegrained, or a /-separated list.
#   The stream order is drawn from SEED and recorded; SHARD=i/n runs part of it; scripts/tpt/merge.sh replays the parts as one stream.
#   e.g. DATA=/data bash scripts/tda/templates.sh rn50 shifts
USAGE="CFG SETS [KEY VALUE ...]"
source "$(dirname "$0")/../tpt/common_tpt.sh"
CFG=$1
SETS=$2
shift 2
run_test_time TDA templates "$CFG" "$SETS" TRAINER.TDA.TEMPLATES tda "$@"
