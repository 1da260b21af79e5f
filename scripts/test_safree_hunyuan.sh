#!/usr/bin/env bash
# The SAFREE baseline on HunyuanVideo, as the original release: token projection on the Llama and CLIP
# embeddings for denoising steps 0-12 (_safree.mp4), next to the clean video (VARIANT=adapted, the default
# here). VARIANT=official runs SAFREE as its authors' code does (docs/safree.md): keyword negative prompt with
# true CFG, 13/50 of the steps. STEPS (13, 13/50, all, auto) overrides the variant's steps; KEYWORDS (a .txt
# file, one per line) replaces the nudity keyword list.
#
#   bash scripts/test_safree_hunyuan.sh           tiny random-weight HunyuanVideo (built if missing)
#   MODEL_PATH=models/HunyuanVideo bash scripts/test_safree_hunyuan.sh
#
# Extra arguments go to test_hunyuan.py (e.g. --eraser_path DIR to render the erased video as well).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-hunyuan-video}
CONCEPT=${CONCEPT:-nudity}
KEYWORDS=${KEYWORDS:-}  # empty: the default keyword list of CONCEPT
VARIANT=${VARIANT:-adapted}
STEPS=${STEPS:-}        # empty: the variant's own (adapted: the first 13 steps, 0-12; official: 13/50 of them)
ALPHA=${ALPHA:-0.01}
PROMPT_FILE=${PROMPT_FILE:-evaluation/data/nudity_eval_implicit.csv}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/videos/hunyuan_safree}
SEED=${SEED:-42}
PYTHON=${PYTHON:-python}

SIZE_ARGS=()
if [ "$MODEL_PATH" = "outputs/tiny-hunyuan-video" ]; then
  if [ ! -f "$MODEL_PATH/model_index.json" ]; then
    "$PYTHON" -m receler.tiny --family hunyuan_video --output_dir "$MODEL_PATH"
  fi
  SIZE_ARGS=(--num_frames 9 --height 32 --width 32 --num_inference_steps 10)
fi

KEYWORD_ARGS=()
if [ -n "$KEYWORDS" ]; then
  KEYWORD_ARGS=(--safree_keywords "$KEYWORDS")
fi
STEP_ARGS=()
if [ -n "$STEPS" ]; then
  STEP_ARGS=(--safree_steps "$STEPS")
fi

"$PYTHON" test_hunyuan.py \
  --model_path "$MODEL_PATH" \
  --baseline safree \
  --concept "$CONCEPT" \
  --safree_variant "$VARIANT" \
  --safree_alpha "$ALPHA" \
  --prompt_file "$PROMPT_FILE" \
  --output_path "$OUTPUT_DIR" \
  --generate_clean \
  --seed "$SEED" \
  ${KEYWORD_ARGS[@]+"${KEYWORD_ARGS[@]}"} ${STEP_ARGS[@]+"${STEP_ARGS[@]}"} ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} "$@"
