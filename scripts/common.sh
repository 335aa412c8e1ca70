# Shared by the protocol scripts: usage line, Python, data root, repository root, and the skip/resume rule.
# Set USAGE (the script's arguments, optional ones in [...]) and source this file; it checks the arguments,
# checks DATA (unless NEEDS_DATA=0), finds Python and changes into the repository root, so the scripts run
# from any working directory. CALLER_DIR is where the script was started.
#
# Python: $VLPROMPT_PYTHON, else $PYTHON, else the active virtual environment's (or conda environment's)
# python, else the repository's .venv/bin/python, else python3; it must be able to import vlprompt.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_DIR=$PWD
SCRIPT_PATH=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
SCRIPT_NAME=${SCRIPT_PATH#"$REPO_ROOT"/}

# usage_line: how to call this script, from $USAGE.
usage_line() {
  local data=""
  [ "${NEEDS_DATA:-1}" = 0 ] || data="DATA=/path/to/datasets "
  echo "usage: ${data}bash ${SCRIPT_NAME} ${USAGE:-}"
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  usage_line
  exit 0
fi
required=0
for word in ${USAGE:-}; do
  case $word in
    \[*) break ;;
    *) required=$((required + 1)) ;;
  esac
done
if [ $# -lt "$required" ]; then
  usage_line >&2
  echo "error: ${SCRIPT_NAME} takes ${required} argument(s), got $#" >&2
  exit 2
fi

if [ "${NEEDS_DATA:-1}" != 0 ]; then
  if [ -z "${DATA:-}" ]; then
    echo "error: set DATA to the folder that holds the datasets (e.g. DATA=/path/to/datasets bash $0 ...)" >&2
    exit 2
  fi
  DATA_DIR=$(cd "$DATA" 2>/dev/null && pwd) || { echo "error: DATA=$DATA is not a directory" >&2; exit 2; }
  DATA=$DATA_DIR
fi

# find_python: the interpreter the scripts run, and where it came from.
find_python() {
  if [ -n "${VLPROMPT_PYTHON:-}" ]; then
    PYTHON=$VLPROMPT_PYTHON PYTHON_FROM="VLPROMPT_PYTHON"
  elif [ -n "${PYTHON:-}" ]; then
    PYTHON_FROM="PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PYTHON=$VIRTUAL_ENV/bin/python PYTHON_FROM="the active virtual environment (VIRTUAL_ENV)"
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
    PYTHON=$CONDA_PREFIX/bin/python PYTHON_FROM="the active conda environment (CONDA_PREFIX)"
  elif [ -x "$REPO_ROOT/.venv/bin/python" ]; then
    PYTHON=$REPO_ROOT/.venv/bin/python PYTHON_FROM="the repository's .venv"
  else
    PYTHON=python3 PYTHON_FROM="the default (no VLPROMPT_PYTHON, PYTHON, active environment or .venv)"
  fi
}
find_python

# The Python must import vlprompt (from the repository root, as the scripts run it); say how to fix it if not.
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: no Python at ${PYTHON} (from ${PYTHON_FROM}); set VLPROMPT_PYTHON=/path/to/python, or run" \
    "bash scripts/install.sh (creates .venv, which the scripts then use)" >&2
  exit 2
fi
import_status=0
import_error=$(cd "$REPO_ROOT" && "$PYTHON" -c "import vlprompt" 2>&1 >/dev/null) || import_status=$?
if [ "$import_status" != 0 ]; then
  reason=$(printf '%s\n' "$import_error" | tail -n 1)
  {
    echo "error: ${PYTHON} (from ${PYTHON_FROM}) cannot import vlprompt: ${reason:-exit status ${import_status}}"
    echo "  fix: activate the environment vlprompt is installed in, or set VLPROMPT_PYTHON=/path/to/its/python,"
    echo "  or install it: bash scripts/install.sh (creates .venv, which the scripts then use)"
  } >&2
  exit 2
fi

cd "$REPO_ROOT"
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
