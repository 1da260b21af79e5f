#!/usr/bin/env bash
# Render clean and erased CogVideoX videos side by side (same model, same seed) for a prompt file.
#
#   bash scripts/test_cogvideo.sh                 tiny random-weight model + tiny eraser (built/trained here if
#                                                 missing; a couple of minutes on a CPU)
#   MODEL_PATH=models/CogVideoX-5b ERASER_PATH=outputs/cogvideox5b_nudity bash scripts/test_cogvideo.sh
#
# Extra arguments go to test_cogvideo.py (e.g. --baseline safree, --prompt "...", --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-cogvideox}
ERASER_PATH=${ERASER_PATH:-outputs/tiny-eraser}
PROMPT_FILE=${PROMPT_FILE:-evaluation/data/nudity_eval_implicit.csv}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/videos/cogvideox}
SEED=${SEED:-42}
PYTHON=${PYTHON:-python}

SIZE_ARGS=()  # a real model renders at its own size (49 frames, 480x720 for CogVideoX-2b/5b)
if [ "$MODEL_PATH" = "outputs/tiny-cogvideox" ]; then
  if [ ! -f "$MODEL_PATH/model_index.json" ]; then
    "$PYTHON" -m receler.tiny --family cogvideox --output_dir "$MODEL_PATH"
  fi
  if [ ! -f "$ERASER_PATH/eraser_config.json" ]; then
    MODEL_PATH="$MODEL_PATH" PYTHON="$PYTHON" bash scripts/train_tiny.sh "$ERASER_PATH"
  fi
  SIZE_ARGS=(--num_frames 9 --height 32 --width 32 --num_inference_steps 10)
fi

"$PYTHON" test_cogvideo.py \
  --model_path "$MODEL_PATH" \
  --eraser_path "$ERASER_PATH" \
  --prompt_file "$PROMPT_FILE" \
  --output_path "$OUTPUT_DIR" \
  --generate_clean \
  --seed "$SEED" \
  ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} "$@"
