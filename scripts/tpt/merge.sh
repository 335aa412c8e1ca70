#!/usr/bin/env bash
# Combine the shards of a TPT run (SHARD=i/n runs of words.sh/coop.sh/cocoop.sh) into one result:
#   merge.sh RUN_DIR   (the folder holding shard_*_of_*/; writes RUN_DIR/merged/)
set -euo pipefail
RUN=$(cd "${1:?usage: merge.sh RUN_DIR}" && pwd)
cd "$(dirname "$0")/../.."
"${PYTHON:-python}" -m vlprompt.tta.merge "$RUN" --output-dir "$RUN/merged"
