#!/usr/bin/env bash
# robosuite Lift / Can / Square from low-dim state, trained on our scripted demonstrations
# (~210 per task, robomimic layout, delta OSC_POSE actions) on a shared 2-core CPU, scored on 50
# seeded initial states (seeds 100000-100049, none of which a demo was collected from).
#
# Usage: MUJOCO_GL=egl [ACTIONS=delta|abs] bash benchmarks/suites/robosuite_state_cpu.sh STAGE TASK
#   STAGE: dp | bc | eval-dp | eval-bc | collect-dart     TASK: lift | can | square
#   ACTIONS=abs trains on the absolute pose actions (task <task>_state_abs, the paper's choice for
#   diffusion policy); the default delta actions use <task>_state.
# The demos are read from $DATA/robosuite/<task>.hdf5, made with
#   python -m dp_gym.collect --task <task> --episodes 210 --seed-start 0 --out $DATA/robosuite/<task>.hdf5
# Every train command takes --resume, so a killed run picks up where it stopped.
#
# Results go to $OUT/<task>_state[_abs]/{diffusion,bc}/<variant>/ (benchmarks/results/...).
# Optional knobs:
#   STEPS=N            diffusion training steps instead of the default budget below; resuming a
#                      finished run with a larger N continues it (the cosine schedule follows N)
#   TAG=_x             suffix of the run folder (keeps training variants apart)
#   SAMPLER=ddpm NIS=100   evaluation sampler (default DDIM-10)
#   POLICY_OVERRIDES='{"prediction_type": "sample"}'   diffusion config overrides (JSON; this one
#                      is x0-prediction)
#   VARIANT=name       result folder of eval-dp (default <eps|x0>_<STEPS/1000>k_<sampler><steps>,
#                      e.g. eps_6k_ddim10; set it for DART data or a TAG the default does not describe)
#   stage collect-dart: noisy (DART) Can/Lift/Square demos, --action-noise ${NOISE:-0.1}, written to
#                      runs/demos/<task>_dart.hdf5 and linked as runs/data_dart/robosuite/<task>.hdf5;
#                      train on them with DATA=runs/data_dart TAG=_dart
set -euo pipefail
STAGE=$1
TASK=$2
DATA=${DATA:-runs/data}
OUT=${OUT:-benchmarks/results}
THREADS=${THREADS:-1}
ACTIONS=${ACTIONS:-delta}
case $ACTIONS in delta) SUFFIX="" ;; abs) SUFFIX="_abs" ;; *) echo "ACTIONS must be delta or abs" >&2; exit 2 ;; esac
# CPU step budgets of the diffusion policy (UNet small, To=2 Ta=8 Tp=16, batch 64): ~2.7 steps/s at 1 thread.
declare -A DP_STEPS=([lift]=3000 [can]=6000 [square]=6000)

STEPS=${STEPS:-${DP_STEPS[$TASK]}}
TAG=${TAG:-}
SAMPLER=${SAMPLER:-ddim}
NIS=${NIS:-10}
POLICY_OVERRIDES=${POLICY_OVERRIDES:-'{}'}
PRED=eps; [[ $POLICY_OVERRIDES == *'"sample"'* ]] && PRED=x0
VARIANT=${VARIANT:-${PRED}_$((STEPS / 1000))k_${SAMPLER}${NIS}}

case $STAGE in
collect-dart)
    python -m dp_gym.collect --task "$TASK" --episodes 210 --seed-start 0 --action-noise "${NOISE:-0.1}" \
        --out "runs/demos/${TASK}_dart.hdf5" --stats-json "runs/demos/${TASK}_dart_stats.json"
    mkdir -p runs/data_dart/robosuite
    ln -sf "../../demos/${TASK}_dart.hdf5" "runs/data_dart/robosuite/${TASK}.hdf5" ;;
dp)
    python -m dp_gym.train --task "${TASK}_state${SUFFIX}" --policy diffusion --model-size small \
        --steps "$STEPS" --batch-size 64 --lr 1e-4 --warmup-steps 200 --policy-overrides "$POLICY_OVERRIDES" \
        --checkpoint-every 500 --log-every 100 --val-every 500 --num-threads "$THREADS" \
        --data-dir "$DATA" --out-dir "runs/${TASK}${SUFFIX}_dp_small${TAG}" --resume ;;
bc)
    python -m dp_gym.train --task "${TASK}_state${SUFFIX}" --policy bc --model-size medium \
        --steps 5000 --batch-size 64 --checkpoint-every 2500 --log-every 500 --val-every 2500 \
        --num-threads "$THREADS" --data-dir "$DATA" --out-dir "runs/${TASK}${SUFFIX}_bc" --resume ;;
eval-dp)
    python -m dp_gym.benchmark --task "${TASK}_state${SUFFIX}" --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small${TAG}=runs/${TASK}${SUFFIX}_dp_small${TAG}/checkpoints/latest" \
        --sampler "$SAMPLER" --num-inference-steps "$NIS" --videos 1 --latency-repeats 10 --num-threads "$THREADS" \
        --out-dir "$OUT/${TASK}_state${SUFFIX}/diffusion/$VARIANT" ;;
eval-bc)
    python -m dp_gym.benchmark --task "${TASK}_state${SUFFIX}" --seeds 100000:100050 --n-envs 10 \
        --policy "bc_chunked=runs/${TASK}${SUFFIX}_bc/checkpoints/latest" --videos 1 --latency-repeats 10 \
        --num-threads "$THREADS" --out-dir "$OUT/${TASK}_state${SUFFIX}/bc/chunked_5k" ;;
*) echo "unknown stage $STAGE (dp | bc | eval-dp | eval-bc | collect-dart)" >&2; exit 2 ;;
esac
