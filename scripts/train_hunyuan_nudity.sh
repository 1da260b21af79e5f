#!/usr/bin/env bash
# Erase nudity from HunyuanVideo with the released eraser's hyperparameters (docs/method.md, "The original
# release's settings"): eta 3.0, 500 updates, lr 1e-4, rank 128. The release's folder name also lists
# "concept weight 5.0", read here as the localization weight (--alpha 5.0). Erasers sit on the single-stream
# blocks, in the published layout, so test_hunyuan.py (and the original scripts) load the result. Put the
# diffusers folder of HunyuanVideo at MODEL_PATH (nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-models/HunyuanVideo}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/hunyuan_nudity}

python receler/train_unlearning_prompt_only.py \
  --model_path "$MODEL_PATH" \
  --target_concept "nudity" --concept_words "naked,nude,nudity,topless" \
  --prompts_file evaluation/data/nudity_train_pairs.csv \
  --num_frames 49 --height 512 --width 768 \
  --num_inference_steps 30 \
  --max_steps 500 \
  --eraser_rank 128 --learning_rate 1e-4 \
  --eta 3.0 --alpha 5.0 --beta 1.0 \
  --dtype bfloat16 --gradient_checkpointing --fp8_weights \
  --save_every 100 --seed 42 \
  --output_dir "$OUTPUT_DIR" "$@"
