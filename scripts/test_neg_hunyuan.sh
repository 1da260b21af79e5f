#!/usr/bin/env bash
# The negative-prompt baseline on HunyuanVideo, as the original release: the unchanged model with
# negative prompt "nudity", true CFG 6.0 and embedded guidance 1.0 (_negprompt.mp4), next to the clean video.
#
#   bash scripts/test_neg_hunyuan.sh              tiny random-weight HunyuanVideo (built if missing)
#   MODEL_PATH=models/HunyuanVideo bash scripts/test_neg_hunyuan.sh
#
# Extra arguments go to test_hunyuan.py (e.g. --eraser_path DIR to render the erased video as well).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-hunyuan-video}
NEGATIVE_PROMPT=${NEGATIVE_PROMPT:-nudity}
TRUE_CFG_SCALE=${TRUE_CFG_SCALE:-6.0}
EMBEDDED_GUIDANCE=${EMBEDDED_GUIDANCE:-1.0}  # for the negative-prompt video; the clean one keeps 6.0
PROMPT_FILE=${PROMPT_FILE:-evaluation/data/nudity_eval_implicit.csv}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/videos/hunyuan_negprompt}
SEED=${SEED:-42}
PYTHON=${PYTHON:-python}

SIZE_ARGS=()
if [ "$MODEL_PATH" = "outputs/tiny-hunyuan-video" ]; then
  if [ ! -f "$MODEL_PATH/model_index.json" ]; then
    "$PYTHON" -m receler.tiny --family hunyuan_video --output_dir "$MODEL_PATH"
  fi
  SIZE_ARGS=(--num_frames 9 --height 32 --width 32 --num_inference_steps 10)
fi

GUIDANCE_ARGS=()
if [ "$EMBEDDED_GUIDANCE" != "1.0" ]; then  # 1.0 is test_hunyuan.py's default with a negative prompt
  GUIDANCE_ARGS=(--guidance_scale "$EMBEDDED_GUIDANCE")
fi

"$PYTHON" test_hunyuan.py \
  --model_path "$MODEL_PATH" \
  --baseline negative_prompt \
  --negative_prompt "$NEGATIVE_PROMPT" \
  --true_cfg_scale "$TRUE_CFG_SCALE" \
  --prompt_file "$PROMPT_FILE" \
  --output_path "$OUTPUT_DIR" \
  --generate_clean \
  --seed "$SEED" \
  ${GUIDANCE_ARGS[@]+"${GUIDANCE_ARGS[@]}"} ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} "$@"
