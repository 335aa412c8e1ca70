# Shared by the test-time scripts (TPT, C-TPT, Zero, MTA, TDA; source it): set lists, run_test_time and run_tpt.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

# The reference's two groups: natural distribution shifts and the 10 cross-dataset (fine-grained) sets.
SHIFT_SETS="I/A/V/R/K"
FINEGRAINED_SETS="Flower102/DTD/Pets/Cars/UCF101/Caltech101/Food101/SUN397/Aircraft/eurosat"

# expand_sets SETS: "shifts", "finegrained", or a /-separated list of dataset names / reference ids.
expand_sets() {
  case "$1" in
    shifts) echo "$SHIFT_SETS" ;;
    finegrained) echo "$FINEGRAINED_SETS" ;;
    *) echo "$1" ;;
  esac
}

# run_test_time TRAINER MODE CFG SETS ARGS...: a test-time method (TPT, CTPT, Zero, MTA, TDA) over SETS in one
# call (a summary table at the end), with configs/trainers/TRAINER/CFG.yaml, into
# $OUTPUT_ROOT/<trainer in lower case>/CFG/MODE/<sets>/seed$SEED[/shard_i_of_n]. SHARD=i/n evaluates the
# i-th of n parts.
run_test_time() {
  local trainer=$1 mode=$2 cfg=$3 sets node lower
  sets=$(expand_sets "$4")
  shift 4
  node=$(printf '%s' "$trainer" | tr '[:lower:]' '[:upper:]')
  lower=$(printf '%s' "$trainer" | tr '[:upper:]' '[:lower:]')
  local seed=${SEED:-0}
  local dir="${OUTPUT_ROOT}/${lower}/${cfg}/${mode}/${sets//\//_}/seed${seed}"
  local shard_args=()
  if [ -n "${SHARD:-}" ]; then
    dir="${dir}/shard_${SHARD%/*}_of_${SHARD#*/}"
    shard_args=("TRAINER.${node}.SHARD" "$SHARD")
  fi
  run_train "$dir" \
    --seed "$seed" \
    --trainer "$trainer" \
    --config-file "configs/trainers/${trainer}/${cfg}.yaml" \
    "$@" \
    "TRAINER.${node}.TEST_SETS" "$sets" \
    ${shard_args[@]+"${shard_args[@]}"}
}

# run_tpt MODE CFG SETS ARGS...: TPT (run_test_time TPT ...).
run_tpt() {
  run_test_time TPT "$@"
}

# run_tpt_from MODE CFG SETS MODEL ARGS...: TPT starting from a learned context. MODEL is a run folder
# (LOADEP picks its epoch, default model-best, else the latest) or a checkpoint file.
run_tpt_from() {
  local mode=$1 cfg=$2 sets=$3 model=$4
  shift 4
  if [ -n "${LOADEP:-}" ]; then
    run_tpt "$mode" "$cfg" "$sets" --eval-only --model-dir "$model" --load-epoch "$LOADEP" "$@"
  else
    run_tpt "$mode" "$cfg" "$sets" TRAINER.TPT.LOAD "$model" "$@"
  fi
}
