#!/usr/bin/env bash
# The x0-prediction recipes for robosuite Can and Square, each one CPU core, from an empty runs/
# (demos collected here, trained from scratch, scored on 100 seeds).
#
# Usage: MUJOCO_GL=egl bash benchmarks/suites/robosuite_x0_chains_cpu.sh square|can|square-ft12k|square-2x|square-36k|square-loose|square-abs-12k|square-abs
#   square: the square chain: 12000 steps from scratch on the original Square demos (delta actions),
#           then two --init-from cycles of 6000 and 12000 steps (fresh lr 1e-4 cosine cycle each).
#   can:    24000 steps from scratch on Can demos that go on 30 steps past success and hold forced
#           drops + re-grasps in 30% of the episodes (collect --drop-prob 0.3), then one 6000-step
#           --init-from cycle.
#   square-ft12k: a third --init-from cycle (12000 steps) after the square chain.
#   square-2x: the same third cycle on twice the Square demos (200 more attempts, seeds 180-379;
#           its result is not kept in the repository).
#   square-36k: one 36000-step schedule from scratch on the original Square demos (no
#           --init-from cycles; checkpoints at 12000 and 24000 kept), same data as square.
#   square-loose: the square chain (12000 + 6000 + 12000) on demos of the square_loose
#           expert, collected from the same seeds as square's (0-179 and 1000-1049).
#   square-abs: the square chain on the original Square demos' absolute pose actions
#           (task square_state_abs: position + rot6d + gripper), x0-prediction.
#   square-abs-12k: only the chain's first stage (12000 steps from scratch, the same run
#           folder, so square-abs after it reuses it), scored on 100 seeds.
#   SEED=N (square, square-36k, square-loose, square-abs[-12k]): train with --seed N (default 42, the
#           trainer's) into run folders suffixed _seedN and result folders marked _trainseedN, a second
#           sample of the same recipe.
# A collection or merge is skipped when its file exists and every train command takes --resume, so a killed
# run is restarted with the same command. Scores go to benchmarks/results/<task_id>/diffusion/<variant>/
# (seeds 100000-100049) and <variant>/seeds100050-100099/.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
TASK=$1
RES=benchmarks/results
X0='{"prediction_type": "sample"}'
SEED=${SEED:-42}
SFX=""; [[ $SEED == 42 ]] || SFX="_seed$SEED"      # run folders and policy names
RSFX=""; [[ $SEED == 42 ]] || RSFX="_trainseed$SEED"  # result folders
mkdir -p runs/demos

collect() {  # collect TASK EPISODES SEED_START OUT [extra collect flags]
    local task=$1 n=$2 start=$3 out=$4; shift 4
    [[ -f $out ]] || python -m dp_gym.collect --task "$task" --episodes "$n" --seed-start "$start" --workers 1 \
        --no-progress --out "$out" --stats-json "${out%.hdf5}.json" "$@"
}

train() {  # train TASK_ID DATA_DIR OUT_DIR STEPS [extra train flags]
    local task=$1 data=$2 out=$3 steps=$4; shift 4
    python -m dp_gym.train --task "$task" --policy diffusion --steps "$steps" --batch-size 64 --lr 1e-4 \
        --warmup-steps 200 --checkpoint-every 500 --log-every 100 --val-every 2000 --num-threads 1 \
        --seed "$SEED" --data-dir "$data" --out-dir "$out" --resume "$@"
}

score() {  # score TASK_ID DATA_DIR RUN_DIR NAME OUT_NAME: seeds 100000-100049 (one video) in OUT_NAME, 100050-100099 in OUT_NAME/seeds100050-100099
    local task=$1 data=$2 run=$3 name=$4 out=$5 seeds videos dir
    for seeds in 100000:100050 100050:100100; do
        if [[ $seeds == 100000:100050 ]]; then videos=1 dir=$out; else videos=0 dir=$out/seeds100050-100099; fi
        python -m dp_gym.benchmark --task "$task" --seeds "$seeds" --n-envs 10 \
            --policy "$name=$run/checkpoints/latest" --sampler ddim --num-inference-steps 10 --videos "$videos" \
            --latency-repeats 3 --num-threads 1 --out-dir "$RES/$dir"
    done
}

merge() {  # merge OUT IN [IN ...]: one robomimic file from several (skipped when OUT exists)
    local out=$1; shift
    [[ -f $out ]] || python -c "import sys; from dp_gym.data.robomimic import merge_robomimic_hdf5 as m; print(m(sys.argv[2:], sys.argv[1]), 'demos')" "$out" "$@"
}

square_chain() {  # square_chain EXPERT DATA_DIR RUN_PREFIX NAME_PREFIX RESULT_PREFIX [TASK_ID]
    # (results in RESULT_PREFIX_12k_ft6k_ft12k[_trainseedN]_ddim10)
    # Demos of EXPERT from seeds 0-179 and 1000-1049 (the experts' own check), then 12000 steps from
    # scratch and two --init-from cycles of 6000 and 12000 steps on TASK_ID (default square_state,
    # the delta actions), scored on 100 seeds.
    local ex=$1 data=$2 run=runs/$3_dp_small_x0_12k name=$4_12k_ft6k_ft12k$SFX res=$5_12k_ft6k_ft12k${RSFX}_ddim10
    local tid=${6:-square_state}
    collect "$ex" 160 0 "runs/demos/${ex}_seeds0-159.hdf5"
    collect "$ex" 20 160 "runs/demos/${ex}_seeds160-179.hdf5"
    collect "$ex" 50 1000 "runs/demos/${ex}_eval50.hdf5"
    merge "runs/demos/$ex.hdf5" "runs/demos/${ex}_seeds0-159.hdf5" "runs/demos/${ex}_seeds160-179.hdf5" \
        "runs/demos/${ex}_eval50.hdf5"
    mkdir -p "$data/robosuite" && ln -sf "../../demos/$ex.hdf5" "$data/robosuite/square.hdf5"
    train "$tid" "$data" "$run$SFX" 12000 --model-size small --policy-overrides "$X0"
    train "$tid" "$data" "${run}_ft6k$SFX" 6000 --init-from "$run$SFX/checkpoints/latest"
    train "$tid" "$data" "${run}_ft6k_ft12k$SFX" 12000 --init-from "${run}_ft6k$SFX/checkpoints/latest"
    score "$tid" "$data" "${run}_ft6k_ft12k$SFX" "$name" "$res"
}

case $TASK in
square)
    square_chain square runs/data square dp_unet_small_x0 square_state/diffusion/x0 ;;
can)
    collect can 210 0 runs/demos/can_post30_drop30.hdf5 --post-success-steps 30 --drop-prob 0.3
    mkdir -p runs/data_post30_drop30/robosuite
    ln -sf ../../demos/can_post30_drop30.hdf5 runs/data_post30_drop30/robosuite/can.hdf5
    train can_state runs/data_post30_drop30 runs/can_dp_small_x0_post30_drop30_24k 24000 --model-size small \
        --policy-overrides "$X0" --keep-every 6000
    score can_state runs/data_post30_drop30 runs/can_dp_small_x0_post30_drop30_24k \
        dp_unet_small_x0_post30_drop30_24k can_state/diffusion/x0_post30drop30_24k_ddim10
    train can_state runs/data_post30_drop30 runs/can_dp_small_x0_post30_drop30_24k_ft6k 6000 \
        --init-from runs/can_dp_small_x0_post30_drop30_24k/checkpoints/latest
    score can_state runs/data_post30_drop30 runs/can_dp_small_x0_post30_drop30_24k_ft6k \
        dp_unet_small_x0_post30_drop30_24k_ft6k can_state/diffusion/x0_post30drop30_24k_ft6k_ddim10 ;;
square-ft12k)  # one more 12000-step cycle from the end of the square chain
    train square_state runs/data runs/square_dp_small_x0_12k_ft6k_ft12k_ft12k 12000 \
        --init-from runs/square_dp_small_x0_12k_ft6k_ft12k/checkpoints/latest
    score square_state runs/data runs/square_dp_small_x0_12k_ft6k_ft12k_ft12k dp_unet_small_x0_12k_ft6k_ft12k_ft12k \
        square_state/diffusion/x0_12k_ft6k_ft12k_ft12k_ddim10 ;;
square-2x)  # a third 12000-step cycle from the end of the square chain on twice the demos
    collect square 200 180 runs/demos/square_seeds180-379.hdf5
    merge runs/demos/square_2x.hdf5 runs/demos/square.hdf5 runs/demos/square_seeds180-379.hdf5
    mkdir -p runs/data_2x/robosuite && ln -sf ../../demos/square_2x.hdf5 runs/data_2x/robosuite/square.hdf5
    train square_state runs/data_2x runs/square_dp_small_x0_12k_ft6k_ft12k_2x12k 12000 \
        --init-from runs/square_dp_small_x0_12k_ft6k_ft12k/checkpoints/latest
    score square_state runs/data_2x runs/square_dp_small_x0_12k_ft6k_ft12k_2x12k dp_unet_small_x0_12k_ft6k_ft12k_2x12k \
        square_state/diffusion/x0_12k_ft6k_ft12k_2x12k_ddim10 ;;
square-36k)  # one long cosine schedule instead of the 12000 + 6000 + 12000 chain (needs square's demos)
    train square_state runs/data runs/square_dp_small_x0_36k$SFX 36000 --model-size small --policy-overrides "$X0" \
        --keep-every 12000
    score square_state runs/data runs/square_dp_small_x0_36k$SFX dp_unet_small_x0_36k$SFX square_state/diffusion/x0_36k${RSFX}_ddim10 ;;
square-loose)  # the square chain on demos of the square_loose expert (lowers the nut when roughly aligned)
    square_chain square_loose runs/data_loose square_loose dp_unet_small_x0_loose square_state/diffusion/x0_loose ;;
square-abs-12k)  # the first 12000-step stage of square-abs alone (the same run folder), scored on 100 seeds
    train square_state_abs runs/data runs/square_abs_dp_small_x0_12k$SFX 12000 --model-size small --policy-overrides "$X0"
    score square_state_abs runs/data runs/square_abs_dp_small_x0_12k$SFX dp_unet_small_x0_abs_12k$SFX square_state_abs/diffusion/x0_12k${RSFX}_ddim10 ;;
square-abs)  # the square chain on the same demos' absolute pose actions (the paper's position control)
    square_chain square runs/data square_abs dp_unet_small_x0_abs square_state_abs/diffusion/x0 square_state_abs ;;
*) echo "usage: $0 square|can|square-ft12k|square-2x|square-36k|square-loose|square-abs-12k|square-abs" >&2; exit 2 ;;
esac
