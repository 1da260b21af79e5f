#!/usr/bin/env bash
# Render clean and erased HunyuanVideo videos side by side (same model, same seed) for a prompt file.
#
#   bash scripts/test_hunyuan.sh                  tiny random-weight HunyuanVideo (built with python -m receler.tiny
#                                                 if missing) and a tiny eraser trained on it if missing
#   MODEL_PATH=models/HunyuanVideo ERASER_PATH=erasers/hunyuan_nudity bash scripts/test_hunyuan.sh
#
# ERASER_WEIGHT scales the erasers at inference time. Extra arguments go to test_hunyuan.py.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-hunyuan-video}
ERASER_PATH=${ERASER_PATH:-outputs/tiny-hunyuan-eraser}
ERASER_WEIGHT=${ERASER_WEIGHT:-1.0}
PROMPT_FILE=${PROMPT_FILE:-evaluation/data/nudity_eval_implicit.csv}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/videos/hunyuan}
SEED=${SEED:-42}
PYTHON=${PYTHON:-python}

SIZE_ARGS=()  # a real model renders with the original defaults (30 steps, 720x1280, embedded guidance 6.0)
if [ "$MODEL_PATH" = "outputs/tiny-hunyuan-video" ]; then
  if [ ! -f "$MODEL_PATH/model_index.json" ]; then
    "$PYTHON" -m receler.tiny --family hunyuan_video --output_dir "$MODEL_PATH"
  fi
  if [ ! -f "$ERASER_PATH/eraser_config.json" ]; then
    "$PYTHON" receler/train_unlearning_prompt_only.py --model_path "$MODEL_PATH" --target_concept nudity \
      --prompts_file evaluation/data/nudity_train_pairs.csv --num_frames 9 --height 32 --width 32 \
      --num_inference_steps 10 --max_steps 40 --eraser_rank 16 --learning_rate 1e-3 --eta 3.0 \
      --save_every 0 --seed 42 --output_dir "$ERASER_PATH"
  fi
  SIZE_ARGS=(--num_frames 9 --height 32 --width 32 --num_inference_steps 10)
fi

"$PYTHON" test_hunyuan.py \
  --model_path "$MODEL_PATH" \
  --eraser_path "$ERASER_PATH" \
  --eraser_weight "$ERASER_WEIGHT" \
  --prompt_file "$PROMPT_FILE" \
  --output_path "$OUTPUT_DIR" \
  --generate_clean \
  --seed "$SEED" \
  ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} "$@"
