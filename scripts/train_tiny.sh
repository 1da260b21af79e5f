#!/usr/bin/env bash
# Train an eraser on the tiny random-weight CogVideoX model (built offline in seconds): a smoke test of
# the whole training path that runs in well under a minute on a laptop CPU. The eraser it writes is
# what tests, demos and the inference scripts use in place of a real one.
#
#   bash scripts/train_tiny.sh [OUTPUT_DIR]        (default: outputs/tiny-eraser)
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-cogvideox}
OUTPUT_DIR=${1:-outputs/tiny-eraser}
PYTHON=${PYTHON:-python}

if [ ! -f "$MODEL_PATH/model_index.json" ]; then
  "$PYTHON" -m receler.tiny --family cogvideox --output_dir "$MODEL_PATH"
fi

"$PYTHON" receler/train_unlearning_prompt_only.py \
  --model_path "$MODEL_PATH" \
  --target_concept "nudity" --concept_words "naked,nude,nudity" \
  --prompts_file evaluation/data/nudity_train_pairs.csv \
  --num_frames 9 --height 32 --width 32 \
  --num_inference_steps 10 \
  --max_steps 60 \
  --eraser_rank 16 \
  --learning_rate 1e-3 \
  --eta 7.0 --alpha 1.0 --beta 1.0 \
  --save_every 20 \
  --seed 42 \
  --output_dir "$OUTPUT_DIR"
