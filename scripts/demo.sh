#!/usr/bin/env bash
# The main job, on the bundled world model (a tiny text-to-video model that knows colours and shapes):
# train an eraser for the colour red with the project's own trainer, render a fixed prompt set clean and
# erased with the same seeds, measure what is gone and what survives, and write an HTML report.
# A few minutes on a laptop CPU. Everything lands in OUTPUT_DIR (default outputs/demo):
#   eraser/            the trained eraser (loadable by test_cogvideo.py), train_log.jsonl, loss.png
#   videos/            <i>_<prompt>_clean.mp4 / _erased.mp4 / _compare.mp4 / _grid.png
#   world_metrics.json target rate clean vs erased, other colours' accuracy, PSNR
#   report/report.html everything above on one page
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-models/world-cogvideox}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
TARGET=${TARGET:-red}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

mkdir -p "$OUTPUT_DIR"
"$PYTHON" -m receler.world.files --target "$TARGET" --output_dir "$OUTPUT_DIR" --quick

echo "== training an eraser for '$TARGET' on $MODEL_PATH"
"$PYTHON" receler/train_unlearning_prompt_only.py \
  --model_path "$MODEL_PATH" --target_concept "$TARGET" \
  --prompts_file "$OUTPUT_DIR/train_prompts.csv" \
  --num_frames 9 --height 64 --width 64 --num_inference_steps 30 \
  --max_steps 300 --num_epochs 1000 --batch_size 4 \
  --eraser_rank 16 --learning_rate 1e-3 --eta 3.0 --alpha 1.0 --beta 1.0 \
  --save_every 100 --log_every 50 --seed 42 --dtype float32 \
  --output_dir "$OUTPUT_DIR/eraser" --overwrite

echo "== rendering clean vs erased"
"$PYTHON" test_cogvideo.py \
  --model_path "$MODEL_PATH" --eraser_path "$OUTPUT_DIR/eraser" --generate_clean \
  --prompt_file "$OUTPUT_DIR/eval_prompts.csv" --output_path "$OUTPUT_DIR/videos" \
  --num_frames 9 --height 64 --width 64 --num_inference_steps 30 --guidance_scale 1.0 --fps 4 --dtype float32

echo "== measuring"
"$PYTHON" -m receler.world.evaluate --video_dir "$OUTPUT_DIR/videos" --target "$TARGET" --output_dir "$OUTPUT_DIR"
"$PYTHON" evaluation/eval_preservation.py --video_dir "$OUTPUT_DIR/videos" --output_dir "$OUTPUT_DIR"
"$PYTHON" evaluation/report.py --output_dir "$OUTPUT_DIR/report" \
  --metrics "$OUTPUT_DIR/world_metrics.json" "$OUTPUT_DIR/preservation.json" \
  --video_dir "$OUTPUT_DIR/videos" --train_log "$OUTPUT_DIR/eraser/train_log.jsonl" \
  --args_json "$OUTPUT_DIR/eraser/args.json" --title "Erasing '$TARGET' from the world model"
echo "report: $OUTPUT_DIR/report/report.html"
