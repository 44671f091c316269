#!/usr/bin/env bash
# Franka Kitchen (D4RL kitchen-complete-v0, 19 demos) on a shared 2-core CPU: replay check of the
# simulator against the demos, UNet diffusion policy (To=2, Ta=8, Tp=16) and chunked BC, scored on
# 50 seeded episodes (p1..p4 = fraction of episodes completing >= k of the 4 tasks). Velocity-action
# results go to $OUT/kitchen_complete/, joint-position-target results to $OUT/kitchen_complete_abs/.
# Usage: DP_GYM_DATA_DIR=/path/to/data MUJOCO_GL=egl bash benchmarks/suites/kitchen_complete_cpu.sh
# Every train command takes --resume, so a killed run picks up where it stopped.
set -euo pipefail
OUT=${OUT:-benchmarks/results}
K=$OUT/kitchen_complete
KA=$OUT/kitchen_complete_abs
THREADS=${THREADS:-1}

# Score one diffusion checkpoint with the paper's DDPM-100 sampler: ddpm100_eval NAME RUN_DIR OUT_DIR
ddpm100_eval() {
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "$1=$2/checkpoints/latest" \
        --sampler ddpm --num-inference-steps 100 --videos 1 --latency-repeats 3 --num-threads "$THREADS" \
        --out-dir "$3"
}

python benchmarks/kitchen_replay_check.py --one-step --frame-skips 30,35,40,45,50 \
    --out "$K/simulator_check/replay_check.json"

# Diffusion: was started with --steps 8000 and, at the step-2000 checkpoint, resumed with --steps 6000
# (the cosine schedule then follows the 6000-step curve) to fit the CPU budget.
python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
    --steps 6000 --batch-size 64 --val-ratio 0 --checkpoint-every 1000 --keep-every 2000 --log-every 100 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dp_small --resume
python -m dp_gym.train --task kitchen_complete --policy bc --model-size medium \
    --steps 20000 --batch-size 64 --val-ratio 0 --checkpoint-every 5000 --log-every 500 \
    --num-threads "$THREADS" --out-dir runs/kitchen_bc --resume

python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
    --policy dp_unet_small=runs/kitchen_dp_small/checkpoints/latest \
    --policy bc_chunked=runs/kitchen_bc/checkpoints/latest \
    --sampler ddim --num-inference-steps 10 --videos 1 --latency-repeats 10 --num-threads "$THREADS" \
    --out-dir "$K/comparison_ddim10"

# The same diffusion checkpoint with the paper's DDPM-100 sampler (10x slower, ~2x lower action error
# at this training budget).
ddpm100_eval dp_unet_small_ddpm100 runs/kitchen_dp_small "$K/diffusion/eps_6k_ddpm100"

# The same model trained 3x longer (started with --steps 30000 and resumed at its
# step-5000 checkpoint with --steps 18000, so the cosine schedule reaches 0 within the budget), DDPM-100.
python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
    --steps 18000 --batch-size 64 --val-ratio 0 --checkpoint-every 1000 --keep-every 5000 --log-every 200 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dp_small_30k --resume
ddpm100_eval dp_unet_small_18k_ddpm100 runs/kitchen_dp_small_30k "$K/diffusion/eps_18k_ddpm100"

# The 18000-step run (copied) resumed to 30000 steps; the cosine schedule re-spans the
# new total (a warm restart at 3.5e-5), DDPM-100.
cp -r runs/kitchen_dp_small_30k runs/kitchen_dp_small_30kr
python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
    --steps 30000 --batch-size 64 --val-ratio 0 --checkpoint-every 1000 --keep-every 5000 --log-every 200 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dp_small_30kr --resume
ddpm100_eval dp_unet_small_30k_ddpm100 runs/kitchen_dp_small_30kr "$K/diffusion/eps_30k_ddpm100"

# The transformer denoiser with the paper's kitchen settings for it (To=4, attention
# dropout 0.1, weight decay 1e-3 on its weight matrices), at the small size (4 layers, width 128:
# the paper's 8 x 768 is GPU work), 16000 steps, DDPM-100.
python -m dp_gym.train --task kitchen_complete --policy diffusion --denoiser transformer --model-size small \
    --n-obs-steps 4 --policy-overrides '{"p_drop_attn": 0.1}' \
    --steps 16000 --batch-size 64 --val-ratio 0 --checkpoint-every 1000 --keep-every 4000 --log-every 200 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dpt_small_16k --resume
ddpm100_eval dp_transformer_small_16k_ddpm100 runs/kitchen_dpt_small_16k "$K/diffusion/transformer_eps_16k_ddpm100"

# The IBC baseline (single-step energy MLP, 128 counter-examples, DFO 1024 samples x 3
# iterations; the Push-T recipe), 10000 steps, scored with the same seeds.
python -m dp_gym.train --task kitchen_complete --policy ibc --model-size small --n-action-steps 1 \
    --policy-overrides '{"n_counter_examples": 128, "chunked": false}' \
    --steps 10000 --batch-size 64 --lr 1e-4 --warmup-steps 500 --val-ratio 0 --checkpoint-every 1000 --log-every 500 \
    --num-threads "$THREADS" --out-dir runs/kitchen_ibc --resume
python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
    --policy ibc_single=runs/kitchen_ibc/checkpoints/latest --videos 1 --latency-repeats 10 \
    --num-threads "$THREADS" --out-dir "$K/ibc/single_10k"

# x0-prediction (prediction_type "sample"), 6000 and 18000 steps, each scored with
# DDIM-10 and DDPM-100.
x0_eval() {  # x0_eval NAME RUN_DIR OUT_PREFIX (-> OUT_PREFIX_ddim10, OUT_PREFIX_ddpm100)
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "$1=$2/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --videos 1 --latency-repeats 10 --num-threads "$THREADS" \
        --out-dir "$3_ddim10"
    ddpm100_eval "$1_ddpm100" "$2" "$3_ddpm100"
}
python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample"}' --steps 6000 --batch-size 64 --val-ratio 0 \
    --checkpoint-every 1000 --keep-every 2000 --log-every 100 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dp_small_x0 --resume
x0_eval dp_unet_small_x0 runs/kitchen_dp_small_x0 "$K/diffusion/x0_6k"
python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample"}' --steps 18000 --batch-size 64 --val-ratio 0 \
    --checkpoint-every 1000 --keep-every 6000 --log-every 200 \
    --num-threads "$THREADS" --out-dir runs/kitchen_dp_small_x0_18k --resume
x0_eval dp_unet_small_x0_18k runs/kitchen_dp_small_x0_18k "$K/diffusion/x0_18k"

# Re-planning: the 6000-step x0 run trained a second time (same command as above; result folders
# x0_6k_run2_*) and scored with DDIM-10 at execution horizons Ta = 8 (trained), 4, 2, 1 (benchmark --n-action-steps; the model still
# predicts Tp=16 and re-plans every Ta steps).
for ta in 8 4 2 1; do
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small_x0_ta$ta=runs/kitchen_dp_small_x0/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --n-action-steps "$ta" --videos 0 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$K/diffusion/x0_6k_run2_ddim10_ta$ta"
done

# The same checkpoint with the sampler's noise scaled (benchmark --noise-scale; 0 = DDIM
# from x_T = 0, a noise-free plan), at Ta = 1 and 8, and 0.5 at Ta = 1.
for cfg in "1 0" "8 0" "1 0.5"; do
    set -- $cfg
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small_x0_ta$1_ns$2=runs/kitchen_dp_small_x0/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --n-action-steps "$1" --noise-scale "$2" --videos 0 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$K/diffusion/x0_6k_run2_ddim10_ta$1_ns$2"
done
# and the run's step-2000 and step-4000 checkpoints at Ta = 1, noise 0
for step in 2000 4000; do
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small_x0_step${step}_ta1_ns0=runs/kitchen_dp_small_x0/checkpoints/step_$step" \
        --sampler ddim --num-inference-steps 10 --n-action-steps 1 --noise-scale 0 --videos 0 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$K/diffusion/x0_6k_run2_step${step}_ddim10_ta1_ns0"
done

# Observation-noise augmentation in training (policy config obs_noise_std: Gaussian noise of that
# std on the normalised low-dim observations, training only), otherwise the 6000-step x0 recipe
# above; scored at Ta = 1, noise scale 0 (the best velocity-action setting above).
obs_noise_velocity() {  # obs_noise_velocity STD
    python -m dp_gym.train --task kitchen_complete --policy diffusion --model-size small \
        --policy-overrides "{\"prediction_type\": \"sample\", \"obs_noise_std\": $1}" --steps 6000 --batch-size 64 \
        --val-ratio 0 --checkpoint-every 1000 --keep-every 2000 --log-every 100 \
        --num-threads "$THREADS" --out-dir "runs/kitchen_dp_small_x0_obsnoise$1" --resume
    python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small_x0_obsnoise$1_ta1_ns0=runs/kitchen_dp_small_x0_obsnoise$1/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --n-action-steps 1 --noise-scale 0 --videos 1 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$K/diffusion/x0_obsnoise$1_6k_ddim10_ta1_ns0"
}
obs_noise_velocity 0.1
# The second 6000-step x0 checkpoint with the paper's DDPM-100 sampler at Ta = 1 (at Ta = 8 DDPM-100
# beat DDIM-10 on the first x0 checkpoint: p3 0.12 vs 0.02).
python -m dp_gym.benchmark --task kitchen_complete --seeds 100000:100050 --n-envs 25 \
    --policy "dp_unet_small_x0_ddpm100_ta1=runs/kitchen_dp_small_x0/checkpoints/latest" \
    --sampler ddpm --num-inference-steps 100 --n-action-steps 1 --videos 0 --latency-repeats 1 \
    --num-threads "$THREADS" --out-dir "$K/diffusion/x0_6k_run2_ddpm100_ta1"

# Joint position targets as actions (task kitchen_complete_abs: each demo action
# converted exactly to the controller's target, observed qpos + 2 * action * dt; the env turns a
# target back into that velocity). Open-loop replay of the demos' targets completes all 4 tasks in
# 19/19 demos with the observation noise on (velocities: 2/19). The 6000-step x0 recipe, scored with
# DDIM-10 at Ta = 8 (as trained) and Ta = 1.
python benchmarks/kitchen_replay_check.py --variants absolute_targets,absolute_targets_nonoise \
    --out "$K/simulator_check/replay_check_absolute.json"
python -m dp_gym.train --task kitchen_complete_abs --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample"}' --steps 6000 --batch-size 64 --val-ratio 0 \
    --checkpoint-every 1000 --keep-every 2000 --log-every 100 \
    --num-threads "$THREADS" --out-dir runs/kitchen_abs_dp_small_x0 --resume
for ta in 8 1; do
    python -m dp_gym.benchmark --task kitchen_complete_abs --seeds 100000:100050 --n-envs 10 \
        --policy "dp_unet_small_x0_abs_ta$ta=runs/kitchen_abs_dp_small_x0/checkpoints/latest" \
        --sampler ddim --num-inference-steps 10 --n-action-steps "$ta" --videos 1 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$KA/diffusion/x0_6k_ddim10_ta$ta"
done
# The same checkpoint at Ta = 8 with noise-free sampling (--noise-scale 0), at Ta = 4, and its
# step-2000 / step-4000 checkpoints at Ta = 8 (those two results are not kept in the repository).
abs_eval() {  # abs_eval NAME CHECKPOINT TA NOISE_SCALE OUT_DIR
    python -m dp_gym.benchmark --task kitchen_complete_abs --seeds 100000:100050 --n-envs 10 --policy "$1=$2" \
        --sampler ddim --num-inference-steps 10 --n-action-steps "$3" --noise-scale "$4" --videos 0 --latency-repeats 3 \
        --num-threads "$THREADS" --out-dir "$5"
}
abs_eval dp_x0_abs_ta8_ns0 runs/kitchen_abs_dp_small_x0/checkpoints/latest 8 0 "$KA/diffusion/x0_6k_ddim10_ta8_ns0"
abs_eval dp_x0_abs_ta4 runs/kitchen_abs_dp_small_x0/checkpoints/latest 4 1 "$KA/diffusion/x0_6k_ddim10_ta4"
for step in 2000 4000; do
    abs_eval "dp_x0_abs_step${step}_ta8" "runs/kitchen_abs_dp_small_x0/checkpoints/step_$step" 8 1 \
        "$KA/diffusion/x0_6k_step${step}_ddim10_ta8"
done
# Longer: 16000 steps (checkpoints every 4000 kept), scored at Ta = 8 (the step-4000 / 8000 results
# are not kept in the repository).
python -m dp_gym.train --task kitchen_complete_abs --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample"}' --steps 16000 --batch-size 64 --val-ratio 0 \
    --checkpoint-every 1000 --keep-every 4000 --log-every 100 \
    --num-threads "$THREADS" --out-dir runs/kitchen_abs_dp_small_x0_16k --resume
for step in 4000 8000 12000; do
    abs_eval "dp_x0_abs16k_step${step}_ta8" "runs/kitchen_abs_dp_small_x0_16k/checkpoints/step_$step" 8 1 \
        "$KA/diffusion/x0_16k_step${step}_ddim10_ta8"
done
abs_eval dp_x0_abs16k_ta8 runs/kitchen_abs_dp_small_x0_16k/checkpoints/latest 8 1 "$KA/diffusion/x0_16k_ddim10_ta8"
# Chunked BC (the velocity recipe above: MLP medium, 20000 steps) on the same position targets.
python -m dp_gym.train --task kitchen_complete_abs --policy bc --model-size medium \
    --steps 20000 --batch-size 64 --val-ratio 0 --checkpoint-every 5000 --log-every 500 \
    --num-threads "$THREADS" --out-dir runs/kitchen_abs_bc --resume
python -m dp_gym.benchmark --task kitchen_complete_abs --seeds 100000:100050 --n-envs 10 \
    --policy bc_chunked_abs=runs/kitchen_abs_bc/checkpoints/latest --videos 0 --latency-repeats 3 \
    --num-threads "$THREADS" --out-dir "$KA/bc/chunked_20k"
# Diffusion on the position targets with observation-noise augmentation (obs_noise_std 0.1, training
# only), the 6000-step x0 recipe, scored at Ta = 8.
python -m dp_gym.train --task kitchen_complete_abs --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample", "obs_noise_std": 0.1}' --steps 6000 --batch-size 64 \
    --val-ratio 0 --checkpoint-every 1000 --keep-every 2000 --log-every 100 \
    --num-threads "$THREADS" --out-dir runs/kitchen_abs_dp_small_x0_obsnoise0.1 --resume
abs_eval dp_x0_abs_obsnoise0.1_ta8 runs/kitchen_abs_dp_small_x0_obsnoise0.1/checkpoints/latest 8 1 \
    "$KA/diffusion/x0_obsnoise0.1_6k_ddim10_ta8"
# ... also on seeds 100050-100099, and a second training of it with --seed 1, scored on 100000-100049.
python -m dp_gym.benchmark --task kitchen_complete_abs --seeds 100050:100100 --n-envs 10 \
    --policy dp_x0_abs_obsnoise0.1_ta8=runs/kitchen_abs_dp_small_x0_obsnoise0.1/checkpoints/latest \
    --sampler ddim --num-inference-steps 10 --videos 0 --latency-repeats 3 \
    --num-threads "$THREADS" --out-dir "$KA/diffusion/x0_obsnoise0.1_6k_ddim10_ta8/seeds100050-100099"
python -m dp_gym.train --task kitchen_complete_abs --policy diffusion --model-size small \
    --policy-overrides '{"prediction_type": "sample", "obs_noise_std": 0.1}' --steps 6000 --batch-size 64 \
    --val-ratio 0 --checkpoint-every 1000 --keep-every 2000 --log-every 100 --seed 1 \
    --num-threads "$THREADS" --out-dir runs/kitchen_abs_dp_small_x0_obsnoise0.1_seed1 --resume
abs_eval dp_x0_abs_obsnoise0.1_seed1_ta8 runs/kitchen_abs_dp_small_x0_obsnoise0.1_seed1/checkpoints/latest 8 1 \
    "$KA/diffusion/x0_obsnoise0.1_6k_trainseed1_ddim10_ta8"
