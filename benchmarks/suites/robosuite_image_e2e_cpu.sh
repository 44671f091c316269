#!/usr/bin/env bash
# robosuite Lift from images (agentview + eye-in-hand 84x84, ResNet-18 per camera, crop 76) plus
# proprioception, end to end on CPU: add camera images to 40 scripted demos by replaying their
# simulator states, train briefly, and roll out a few seeded episodes with videos. A smoke run of
# the pipeline, not a score: 150 steps are far too few to learn the task.
# Usage: MUJOCO_GL=egl bash benchmarks/suites/robosuite_image_e2e_cpu.sh
set -euo pipefail
DATA=${DATA:-runs/data}
OUT=${OUT:-benchmarks/results/lift_image/diffusion/smoke_150steps}
TRAIN_LOG=${TRAIN_LOG:-benchmarks/results/lift_image/diffusion/training/smoke_150steps}
THREADS=${THREADS:-1}

[[ -f $DATA/robosuite/lift_image.hdf5 ]] || \
    python -m dp_gym.data.robomimic "$DATA/robosuite/lift.hdf5" "$DATA/robosuite/lift_image.hdf5" --max-episodes 40
python -m dp_gym.train --task lift_image --policy diffusion --model-size small --steps 150 --batch-size 16 \
    --policy-overrides '{"crop_shape": [76, 76]}' --lr 1e-4 --warmup-steps 20 --checkpoint-every 50 --log-every 10 \
    --val-ratio 0 --num-threads "$THREADS" --data-dir "$DATA" --out-dir runs/lift_img_e2e --resume
python -m dp_gym.benchmark --task lift_image --seeds 100000:100003 --n-envs 3 \
    --policy dp_img_150steps=runs/lift_img_e2e/checkpoints/latest --sampler ddim --num-inference-steps 10 \
    --videos 1 --latency-repeats 5 --num-threads "$THREADS" --out-dir "$OUT"
mkdir -p "$TRAIN_LOG" && cp runs/lift_img_e2e/{metrics.csv,train_config.json} "$TRAIN_LOG/"
