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

# run_method DIR DATASET SEED ARGS...: run_train for the $TRAINER/$CFG config on DATASET with SEED.
run_method() {
  local dir=$1 dataset=$2 seed=$3
  shift 3
  run_train "$dir" \
    --seed "$seed" \
    --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/${dataset}.yaml" \
    --config-file "configs/trainers/${TRAINER}/${CFG}.yaml" \
    "$@"
}

# run_eval OUT_DIR MODEL_DIR DATASET SEED [KEY VALUE ...]: evaluate the $TRAINER/$CFG model trained in
# MODEL_DIR on DATASET; LOADEP defaults to the config's last epoch, so CoOp configs need no hand edit.
run_eval() {
  local out=$1 model_dir=$2 dataset=$3 seed=$4
  shift 4
  local epoch=${LOADEP:-$("$PYTHON" -m vlprompt.last_epoch "$model_dir" "configs/trainers/${TRAINER}/${CFG}.yaml")}
  run_method "$out" "$dataset" "$seed" --model-dir "$model_dir" --load-epoch "$epoch" --eval-only "$@"
}
