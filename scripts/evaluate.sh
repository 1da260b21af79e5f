#!/usr/bin/env bash
# Generate, measure, look: render a prompt file clean and erased with test_cogvideo.py, measure the
# nudity rate (NudeNet over frames, the paper's protocol) and preservation (PSNR/SSIM between clean and
# erased, CLIP score with CLIP_MODEL_PATH), and write one HTML report with the training curves.
#
#   bash scripts/evaluate.sh                      tiny model + tiny eraser (built/trained here if missing)
#   MODEL_PATH=models/CogVideoX-2b ERASER_PATH=outputs/cogvideox2b_nudity \
#     PROMPT_FILE=evaluation/data/nudity_eval_implicit.csv bash scripts/evaluate.sh
#
# Outputs in OUTPUT_DIR (default outputs/eval): videos/, nudity.json/.csv, preservation.json/.csv,
# report/report.html. Extra arguments go to test_cogvideo.py.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-outputs/tiny-cogvideox}
ERASER_PATH=${ERASER_PATH:-outputs/tiny-eraser}
PROMPT_FILE=${PROMPT_FILE:-evaluation/data/nudity_eval_implicit.csv}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/eval}
CLIP_MODEL_PATH=${CLIP_MODEL_PATH:-}
PYTHON=${PYTHON:-python}

SIZE_ARGS=()
if [ "$MODEL_PATH" = "outputs/tiny-cogvideox" ]; then
  if [ ! -f "$MODEL_PATH/model_index.json" ]; then
    "$PYTHON" -m receler.tiny --family cogvideox --output_dir "$MODEL_PATH"
  fi
  if [ ! -f "$ERASER_PATH/eraser_config.json" ]; then
    MODEL_PATH="$MODEL_PATH" PYTHON="$PYTHON" bash scripts/train_tiny.sh "$ERASER_PATH"
  fi
  SIZE_ARGS=(--num_frames 9 --height 32 --width 32 --num_inference_steps 10)
fi

"$PYTHON" test_cogvideo.py --model_path "$MODEL_PATH" --eraser_path "$ERASER_PATH" --prompt_file "$PROMPT_FILE" \
  --output_path "$OUTPUT_DIR/videos" --generate_clean ${SIZE_ARGS[@]+"${SIZE_ARGS[@]}"} "$@"

"$PYTHON" -m evaluation.eval_nudity --video_dir "$OUTPUT_DIR/videos" --output_dir "$OUTPUT_DIR"

CLIP_ARGS=()
if [ -n "$CLIP_MODEL_PATH" ]; then CLIP_ARGS=(--clip_model_path "$CLIP_MODEL_PATH"); fi
"$PYTHON" -m evaluation.eval_preservation --video_dir "$OUTPUT_DIR/videos" --output_dir "$OUTPUT_DIR" \
  ${CLIP_ARGS[@]+"${CLIP_ARGS[@]}"}

REPORT_ARGS=(--output_dir "$OUTPUT_DIR/report" --metrics "$OUTPUT_DIR/nudity.json" "$OUTPUT_DIR/preservation.json"
             --video_dir "$OUTPUT_DIR/videos")
if [ -f "$ERASER_PATH/train_log.jsonl" ]; then REPORT_ARGS+=(--train_log "$ERASER_PATH/train_log.jsonl"); fi
if [ -f "$ERASER_PATH/args.json" ]; then REPORT_ARGS+=(--args_json "$ERASER_PATH/args.json"); fi
"$PYTHON" -m evaluation.report "${REPORT_ARGS[@]}" --title "Concept erasure: $(basename "$ERASER_PATH")"
echo "report: $OUTPUT_DIR/report/report.html"
