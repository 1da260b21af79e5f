#!/usr/bin/env bash
# Erase nudity from Wan 2.1 (T2V 1.3B or 14B) with the CogVideoX recipe (rank 128, lr 1e-4, eta 7,
# localization 1, 500 updates). Put the diffusers folder of Wan2.1-T2V at MODEL_PATH (nothing is
# downloaded). For the 14B model on a 32 GB card keep --fp8_weights and add --offload_activations.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-models/Wan2.1-T2V-1.3B}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/wan_nudity}

python receler/train_unlearning_prompt_only.py \
  --model_path "$MODEL_PATH" \
  --target_concept "nudity" --concept_words "naked,nude,nudity,topless" \
  --prompts_file evaluation/data/nudity_train_pairs.csv \
  --num_frames 81 --height 480 --width 832 \
  --num_inference_steps 50 \
  --max_steps 500 \
  --eraser_rank 128 --learning_rate 1e-4 \
  --eta 7.0 --alpha 1.0 --beta 1.0 \
  --dtype bfloat16 --gradient_checkpointing --fp8_weights \
  --save_every 100 --seed 42 \
  --output_dir "$OUTPUT_DIR" "$@"
