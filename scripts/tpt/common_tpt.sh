# Shared by the TPT scripts (source it): set lists and run_tpt.
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

# run_tpt MODE CFG SETS ARGS...: TPT over SETS in one call (a summary table at the end) into
# $OUTPUT_ROOT/tpt/CFG/MODE/<sets>/seed$SEED[/shard_i_of_n]. SHARD=i/n evaluates the i-th of n parts.
run_tpt() {
  local mode=$1 cfg=$2 sets
  sets=$(expand_sets "$3")
  shift 3
  local seed=${SEED:-0}
  local dir="${OUTPUT_ROOT}/tpt/${cfg}/${mode}/${sets//\//_}/seed${seed}"
  local shard_args=()
  if [ -n "${SHARD:-}" ]; then
    dir="${dir}/shard_${SHARD%/*}_of_${SHARD#*/}"
    shard_args=(TRAINER.TPT.SHARD "$SHARD")
  fi
  run_train "$dir" \
    --seed "$seed" \
    --trainer TPT \
    --config-file "configs/trainers/TPT/${cfg}.yaml" \
    "$@" \
    TRAINER.TPT.TEST_SETS "$sets" \
    ${shard_args[@]+"${shard_args[@]}"}
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
