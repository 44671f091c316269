#!/usr/bin/env bash
# robosuite Lift / Can / Square from low-dim state, trained on our scripted demonstrations
# (~210 per task, robomimic layout, delta OSC_POSE actions) on a shared 2-core CPU, scored on 50
# seeded initial states (seeds 100000-100049, none of which a demo was collected from).
#
# Usage: MUJOCO_GL=egl [ACTIONS=delta|abs] bash benchmarks/suites/robosuite_state_cpu.sh STAGE TASK
#   STAGE: dp | bc | eval-dp | eval-bc     TASK: lift | can | square
#   ACTIONS=abs trains on the absolute pose actions (task <task>_state_abs, the paper's choice for
#   diffusion policy); the default delta actions use <task>_state.
# The demos are read from $DATA/robosuite/<task>.hdf5, made with
#   python -m dp_gym.collect --task <task> --episodes 210 --seed-start 0 --out $DATA/robosuite/<task>.hdf5
# Every train command takes --resume, so a killed run picks up where it stopped.
set -euo pipefail
STAGE=$1
TASK=$2
DATA=${DATA:-runs/data}
OUT=${OUT:-benchmarks/results/robosuite_state_cpu}
THREADS=${THREADS:-1}
ACTIONS=${ACTIONS:-delta}
case $ACTIONS in delta) SUFFIX="" ;; abs) SUFFIX="_abs" ;; *) echo "ACTIONS must be delta or abs" >&2; exit 2 ;; esac
# CPU step budgets of the diffusion policy (UNet small, To=2 Ta=8 Tp=16, batch 64): ~2.7 steps/s at 1 thread.
declare -A DP_STEPS=([lift]=3000 [can]=6000 [square]=6000)

case $STAGE in
dp)
    python -m dp_gym.train --task "${TASK}_state${SUFFIX}" --policy diffusion --model-size small \
        --steps "${DP_STEPS[$TASK]}" --batch-size 64 --lr 1e-4 --warmup-steps 200 \
        --checkpoint-every 500 --log-every 100 --val-every 500 --num-threads "$THREADS" \
        --data-dir "$DATA" --out-dir "runs/${TASK}${SUFFIX}_dp_small" --resume ;;
bc)
    python -m dp_gym.train --task "${TASK}_state${SUFFIX}" --policy bc --model-size medium \
        --steps 5000 --batch-size 64 --checkpoint-every 2500 --log-every 500 --val-every 2500 \
        --num-threads "$THREADS" --data-dir "$DATA" --out-dir "runs/${TASK}${SUFFIX}_bc" --resume ;;
eval-dp)
    python -m dp_gym.benchmark --task "${TASK}_state${SUFFIX}" --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small=runs/${TASK}${SUFFIX}_dp_small/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --videos 1 --latency-repeats 10 --num-threads "$THREADS" \
        --data-dir "$DATA" --out-dir "$OUT/$TASK/dp${SUFFIX}" ;;
eval-bc)
    python -m dp_gym.benchmark --task "${TASK}_state${SUFFIX}" --seeds 100000:100050 --n-envs 10 \
        --policy "bc_chunked=runs/${TASK}${SUFFIX}_bc/checkpoints/latest" --videos 1 --latency-repeats 10 \
        --num-threads "$THREADS" --data-dir "$DATA" --out-dir "$OUT/$TASK/bc${SUFFIX}" ;;
*) echo "unknown stage $STAGE (dp | bc | eval-dp | eval-bc)" >&2; exit 2 ;;
esac
