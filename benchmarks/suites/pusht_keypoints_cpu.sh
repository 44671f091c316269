#!/usr/bin/env bash
# Push-T keypoints, UNet diffusion policy, CPU budget (~2 h on 2 cores). Produces
# benchmarks/results/pusht_keypoints_cpu/{ddpm100,ddim10,ddim16}/ and the training log.
# Usage: DP_GYM_DATA_DIR=/path/to/data bash benchmarks/suites/pusht_keypoints_cpu.sh
set -euo pipefail
RUN=${RUN:-runs/pusht_kp_unet_small}
OUT=${OUT:-benchmarks/results/pusht_keypoints_cpu}
THREADS=${THREADS:-1}   # 1 thread is robust when other work shares the 2 cores; 2 is ~1.5x faster alone

python -m dp_gym.train --task pusht_keypoints --policy diffusion --model-size small \
    --steps 26000 --batch-size 64 --lr 1e-4 --warmup-steps 500 \
    --checkpoint-every 1000 --keep-every 5000 --val-every 2000 --log-every 200 \
    --num-threads "$THREADS" --out-dir "$RUN" --resume

for spec in "ddpm 100" "ddim 10" "ddim 16"; do
    set -- $spec
    python -m dp_gym.benchmark --task pusht_keypoints --policy "dp_unet_small=$RUN/checkpoints/latest" \
        --seeds 100000:100050 --n-envs 10 --sampler "$1" --num-inference-steps "$2" \
        --videos 3 --latency-repeats 20 --num-threads "$THREADS" --out-dir "$OUT/$1$2"
done
