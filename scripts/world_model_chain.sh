#!/usr/bin/env bash
# Rebuild the best world model so far (runs/world-v13lf in docs/world_benchmark.md: shape 84.7% on the 168 check
# prompts at guidance 1) in one command. It was made by a chain of runs, each continuing the last one's
# transformer state with new loss flags and its schedule stretched to a longer one; this script runs that chain
# in order, with the flags each link used.
#
#   scripts/world_model_chain.sh                 # about 15 hours on one CPU thread
#   DEVICE=cuda scripts/world_model_chain.sh     # on a GPU (not yet timed)
#   DRY_RUN=1 scripts/world_model_chain.sh       # print the commands only
#
# Every link saves its model to OUT_DIR/<step>-<name> (evaluate or probe any of them). A link whose folder already
# holds a model is skipped and the running one resumes from STATE_DIR, so rerunning the command after an
# interruption continues where it stopped. The VAE starts from VAE_SOURCE's (the bundled model's, as the chain
# did), then trains the robust phase (latent noise) on top.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STATE_DIR=${STATE_DIR:-runs/world-chain-state}
OUT_DIR=${OUT_DIR:-runs/world-chain}
VAE_SOURCE=${VAE_SOURCE:-models/world-cogvideox}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
DRY_RUN=${DRY_RUN:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}

run() {
  echo "$*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

if [ ! -f "$STATE_DIR/vae_stage/phases.json" ]; then
  run mkdir -p "$STATE_DIR/vae_stage"
  run cp -r "$VAE_SOURCE/text_encoder" "$VAE_SOURCE/vae" "$STATE_DIR/vae_stage/"
  # Mark the copied VAE's first three phases done, so the robust phase is the one left to train.
  echo "echo '{\"phases\": [\"frames\", \"clips\", \"finetune\"], \"stats\": {}}' > $STATE_DIR/vae_stage/phases.json"
  if [ "$DRY_RUN" != 1 ]; then
    echo '{"phases": ["frames", "clips", "finetune"], "stats": {}}' > "$STATE_DIR/vae_stage/phases.json"
  fi
fi

SWAP="--shape_swap_weight 8"
# steps   name      the loss flags of this link (docs/world_benchmark.md tells what each bought)
LINKS=(
  "5000  rotary"
  "7500  pixel    --pixel_loss_weight 5 --eval_every 500"
  "14000 plain"
  "20000 swap     $SWAP"
  "26000 swap     $SWAP"
  "32000 focus    $SWAP --shape_swap_focus 4"
  "38000 vfocus   $SWAP --shape_swap_focus 4 --shape_v_focus 4"
  "44000 all      $SWAP --shape_swap_focus 4 --shape_v_focus 4 --shape_swap_both --later_frame_weight 4"
)

for link in "${LINKS[@]}"; do
  read -r steps name flags <<< "$link"
  out="$OUT_DIR/$(printf %05d "$steps")-$name"
  if [ -f "$out/training_summary.json" ]; then
    echo "# $out holds a model: skipped"
    continue
  fi
  # shellcheck disable=SC2086  # the flags are meant to split into words
  run "$PYTHON" scripts/train_world_model.py --output_dir "$out" --state_dir "$STATE_DIR" --resume \
    --vae_robust_steps 1500 --rotary_positions --transformer_steps "$steps" $flags \
    --threads "$THREADS" --device "$DEVICE" --eval_guidance 1
done
echo "# the chain's model: $out"
