#!/usr/bin/env bash
# Erase nudity from CogVideoX-2b with the paper's hyperparameters (rank 128, lr 1e-4, eta 7, alpha 1,
# 500 updates). Put the diffusers folder of CogVideoX-2b at MODEL_PATH (nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-models/CogVideoX-2b}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/cogvideox2b_nudity}

python receler/train_unlearning_prompt_only.py \
  --model_path "$MODEL_PATH" \
  --target_concept "nudity" --concept_words "naked,nude,nudity,topless" \
  --prompts_file evaluation/data/nudity_train_pairs.csv \
  --num_frames 49 --height 480 --width 720 \
  --num_inference_steps 50 \
  --max_steps 500 \
  --eraser_rank 128 --learning_rate 1e-4 \
  --eta 7.0 --alpha 1.0 --beta 1.0 --mask_threshold 0.1 \
  --dtype bfloat16 --gradient_checkpointing \
  --save_every 100 --seed 42 \
  --output_dir "$OUTPUT_DIR" "$@"
