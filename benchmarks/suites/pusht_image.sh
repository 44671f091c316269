#!/usr/bin/env bash
# Push-T from pixels (96x96 RGB + agent position): image-conditioned UNet diffusion policy
# (ResNet-18 GroupNorm + spatial softmax encoder, 84x84 random crops), trained on the real demos.
# Usage: DP_GYM_DATA_DIR=/path/to/data bash benchmarks/suites/pusht_image.sh [cpu|gpu]
# Every train command takes --resume, so a killed run picks up where it stopped.
set -euo pipefail
MODE=${1:-cpu}
OUT=${OUT:-benchmarks/results}
THREADS=${THREADS:-1}

if [ "$MODE" = cpu ]; then
    # What a 2-core CPU affords in ~2 h (about 3.5 s per step of 32 samples): the small UNet.
    python -m dp_gym.train --task pusht_image --policy diffusion --model-size small \
        --steps 2400 --batch-size 32 --lr 1e-4 --warmup-steps 200 \
        --checkpoint-every 200 --keep-every 600 --val-every 400 --log-every 50 \
        --num-threads "$THREADS" --out-dir runs/pusht_img_unet_small --resume
    CKPT=runs/pusht_img_unet_small/checkpoints/latest
    DEV=cpu
    VARIANT=eps_2400x32
else
    # The paper's recipe: UNet 256/512/1024 (step embedding 128), batch 64, crop 84, ~3000 epochs
    # of the ~23.8k training windows (1.116M steps), AdamW 1e-4, cosine, 500 warm-up, EMA; bf16.
    python -m dp_gym.train --task pusht_image --policy diffusion --model-size paper \
        --policy-overrides '{"diffusion_step_embed_dim": 128}' \
        --steps 1116000 --batch-size 64 --lr 1e-4 --warmup-steps 500 \
        --checkpoint-every 10000 --keep-every 100000 --val-every 10000 --log-every 1000 \
        --eval-every 100000 --eval-episodes 50 \
        --device cuda --mixed-precision bf16 --out-dir runs/pusht_img_paper --resume
    CKPT=runs/pusht_img_paper/checkpoints/latest
    DEV=cuda
    VARIANT=paper_eps_1116000x64
fi

# Score on the paper's test seeds with DDIM-10, then the paper's DDPM-100 sampler.
python -m dp_gym.benchmark --task pusht_image --seeds 100000:100050 --n-envs 10 --device "$DEV" \
    --policy "dp_img=$CKPT" --sampler ddim --num-inference-steps 10 --videos 3 \
    --num-threads "$THREADS" --out-dir "$OUT/pusht_image/diffusion/${VARIANT}_ddim10"
python -m dp_gym.benchmark --task pusht_image --seeds 100000:100050 --n-envs 10 --device "$DEV" \
    --policy "dp_img=$CKPT" --sampler ddpm --num-inference-steps 100 --videos 3 \
    --num-threads "$THREADS" --out-dir "$OUT/pusht_image/diffusion/${VARIANT}_ddpm100"
