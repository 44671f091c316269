#!/usr/bin/env bash
# Push-T keypoints on CPU (2 cores, ~2 h in all): UNet diffusion policy vs BC (chunked and
# single-step) vs IBC, trained on the real demos and scored on the paper's test seeds.
# Usage: DP_GYM_DATA_DIR=/path/to/data bash benchmarks/suites/pusht_keypoints_cpu.sh
# Every train command takes --resume, so a killed run picks up where it stopped.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
THREADS=${THREADS:-2}   # use 1 when other work shares the 2 cores (2 threads collapse under contention)

python -m dp_gym.train --task pusht_keypoints --policy diffusion --model-size small \
    --steps 26000 --batch-size 64 --lr 1e-4 --warmup-steps 500 \
    --checkpoint-every 1000 --keep-every 5000 --val-every 2000 --log-every 200 \
    --num-threads "$THREADS" --out-dir runs/pusht_kp_unet_small --resume

BASE="--task pusht_keypoints --steps 20000 --batch-size 64 --lr 1e-4 --warmup-steps 500 --checkpoint-every 2000 --val-every 2000 --log-every 500 --num-threads $THREADS --resume"
python -m dp_gym.train $BASE --policy bc --model-size medium --out-dir runs/pusht_kp_bc
python -m dp_gym.train $BASE --policy bc --model-size medium --n-action-steps 1 \
    --policy-overrides '{"chunked": false}' --out-dir runs/pusht_kp_bc1
python -m dp_gym.train ${BASE/--steps 20000/--steps 10000} --policy ibc --model-size small --n-action-steps 1 \
    --policy-overrides '{"n_counter_examples": 128, "chunked": false}' --out-dir runs/pusht_kp_ibc

# One command, one table: DP (DDIM-10) vs the baselines on the same 50 seeds.
python -m dp_gym.benchmark --task pusht_keypoints --seeds 100000:100050 --n-envs 10 \
    --policy dp_unet_small=runs/pusht_kp_unet_small/checkpoints/latest \
    --policy bc_chunked=runs/pusht_kp_bc/checkpoints/latest \
    --policy bc_single=runs/pusht_kp_bc1/checkpoints/latest \
    --policy ibc_single=runs/pusht_kp_ibc/checkpoints/latest \
    --sampler ddim --num-inference-steps 10 --videos 2 --num-threads "$THREADS" \
    --out-dir "$OUT/pusht_keypoints/comparison_ddim10"

# The diffusion policy with the paper's DDPM-100 sampler and with DDIM-16.
for spec in "ddpm 100" "ddim 16"; do
    set -- $spec
    python -m dp_gym.benchmark --task pusht_keypoints --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small=runs/pusht_kp_unet_small/checkpoints/latest" \
        --sampler "$1" --num-inference-steps "$2" --videos 3 --num-threads "$THREADS" \
        --out-dir "$OUT/pusht_keypoints/diffusion/eps_26k_$1$2"
done
