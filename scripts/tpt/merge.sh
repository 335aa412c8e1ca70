#!/usr/bin/env bash
# Combine the shards of a TPT run (SHARD=i/n runs of words.sh/coop.sh/cocoop.sh) into one result:
#   merge.sh RUN_DIR   (the folder holding shard_*_of_*/; writes RUN_DIR/merged/)
USAGE="RUN_DIR"
NEEDS_DATA=0
source "$(dirname "$0")/../common.sh"
RUN=$(cd "$CALLER_DIR" && cd "$1" && pwd)
"$PYTHON" -m vlprompt.tta.merge "$RUN" --output-dir "$RUN/merged"
