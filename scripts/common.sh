# Shared by the protocol scripts: repository root, data root, python, and the skip/resume rule.
# Source it; it changes into the repository root so the scripts run from any working directory.

set -euo pipefail

if [ -z "${DATA:-}" ]; then
  echo "error: set DATA to the folder that holds the datasets (e.g. DATA=/path/to/datasets bash $0 ...)" >&2
  exit 2
fi
DATA_DIR=$(cd "$DATA" 2>/dev/null && pwd) || { echo "error: DATA=$DATA is not a directory" >&2; exit 2; }
DATA=$DATA_DIR
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
PYTHON=${PYTHON:-python}
OUTPUT_ROOT=${OUTPUT_ROOT:-output}

# run_train DIR ARGS...: run train.py into DIR unless DIR holds a finished run (its run.json);
# an unfinished run is resumed from its last checkpoint, never skipped.
run_train() {
  local dir=$1
  shift
  if [ -f "$dir/run.json" ]; then
    echo "Oops! The results exist at ${dir} (so skip this job)"
    return 0
  fi
  [ -d "$dir" ] && echo "Resuming the unfinished run at ${dir}"
  "$PYTHON" train.py --root "$DATA" --output-dir "$dir" "$@"
}
