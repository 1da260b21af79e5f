#!/usr/bin/env bash
# Rebuild the best world model so far in one command (docs/world_benchmark.md: the chain's model at step 44000,
# shape 85.4% on the 168 check prompts at guidance 1 and 81.8% over five seed sets, then its decoder refined on the
# transformer's own estimates: 86.1% and 85.4%). It was made by a chain of runs, each continuing the last one's
# transformer state with new loss flags and its schedule stretched to a longer one; this script runs that chain
# in order, with the flags each link used, then refines the last link's decoder.
#
#   scripts/world_model_chain.sh                 # about 15 hours on one CPU thread
#   DEVICE=cuda scripts/world_model_chain.sh     # on a GPU (not yet timed)
#   DRY_RUN=1 scripts/world_model_chain.sh       # print the commands only
#   scripts/world_model_chain.sh save            # (the chain stopped) keep its state in SNAPSHOT_DIR
#
# Every link saves its model to OUT_DIR/<step>-<name> (evaluate or probe any of them). A link whose folder already
# holds a model, or that the state has already trained past, is skipped (one whose end the state is exactly at only
# writes its model) and the running one resumes from STATE_DIR, so rerunning the command after an interruption
# continues where it stopped. Stop it with Ctrl-C, or `pkill -f train_world_model.py` when it runs in the background:
# the running link saves its state at the step it finishes and exits 130, which ends the chain. The VAE starts from
# VAE_SOURCE's (the bundled model's, as the chain did), then trains the robust phase (latent noise) on top.
#
# The chain is longer than a working session on a machine whose runs/ folder does not last. `save` keeps what the
# chain needs to continue in SNAPSHOT_DIR, to be committed (about 7 MB: the VAE stage and the transformer's
# averaged weights in float16 with the step and random stream; not Adam's moments, nor the latent caches, which are
# re-encoded from the VAE in minutes); a later run with an empty STATE_DIR starts from that snapshot. Continuing
# from a snapshot is not bit for bit the uninterrupted chain: the weights jump to their average and Adam restarts.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STATE_DIR=${STATE_DIR:-runs/world-chain-state}
OUT_DIR=${OUT_DIR:-runs/world-chain}
VAE_SOURCE=${VAE_SOURCE:-models/world-cogvideox}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
DRY_RUN=${DRY_RUN:-0}
SNAPSHOT_DIR=${SNAPSHOT_DIR:-models/world-chain-snapshot}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}

run() {
  echo "$*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

state_step() {  # the step the transformer state has reached (0 without one)
  if [ -f "$STATE_DIR/transformer_state.pt" ]; then
    "$PYTHON" -c 'import sys, torch; print(torch.load(sys.argv[1], weights_only=True)["step"])' \
      "$STATE_DIR/transformer_state.pt"
  else
    echo 0
  fi
}

if [ "${1:-}" = save ]; then
  if [ ! -f "$STATE_DIR/vae_stage/phases.json" ] || [ ! -f "$STATE_DIR/transformer_state.pt" ]; then
    echo "nothing to save: $STATE_DIR has no VAE stage or transformer state yet (run the chain first)" >&2
    exit 2
  fi
  # Written beside the snapshot, then swapped in: an interrupted save leaves the last snapshot whole.
  rm -rf "$SNAPSHOT_DIR.tmp"
  run mkdir -p "$SNAPSHOT_DIR.tmp"
  run cp -r "$STATE_DIR/vae_stage/vae" "$STATE_DIR/vae_stage/phases.json" "$SNAPSHOT_DIR.tmp/"
  echo "# compact $STATE_DIR/transformer_state.pt into $SNAPSHOT_DIR.tmp/"
  if [ "$DRY_RUN" != 1 ]; then
    "$PYTHON" - "$STATE_DIR/transformer_state.pt" "$SNAPSHOT_DIR.tmp/transformer_state.pt" <<'PY'
import sys, torch
state = torch.load(sys.argv[1], weights_only=True)
# The averaged weights (what the link would save now) stand for the trained ones too, and Adam's moments are left
# out: a quarter of the size. The training script continues such a state with a fresh optimizer, re-warmed.
weights = state["ema"] if state["ema"] is not None else state["transformer"]
# Stored in float16, as the chain's saved models are: it halves what each committed snapshot adds to the
# repository. The resumed run loads them into its float32 weights; the rounding moves the transformer's output by
# about 0.03% (RMS, measured at step 11745).
weights = {name: value.half() if value.is_floating_point() else value for name, value in weights.items()}
torch.save({**state, "transformer": weights, "ema": weights, "optimizer": None}, sys.argv[2])
PY
    rm -rf "$SNAPSHOT_DIR" && mv "$SNAPSHOT_DIR.tmp" "$SNAPSHOT_DIR"
  fi
  echo "# saved the chain's state at step $(state_step) to $SNAPSHOT_DIR"
  exit 0
elif [ -n "${1:-}" ]; then
  echo "unknown argument '$1': run with no argument to train, or 'save' to keep the state in SNAPSHOT_DIR" >&2
  exit 2
fi

if [ ! -f "$STATE_DIR/vae_stage/phases.json" ] && [ -f "$SNAPSHOT_DIR/transformer_state.pt" ]; then
  echo "# continuing from the snapshot in $SNAPSHOT_DIR (the latents are re-encoded from its VAE)"
  run mkdir -p "$STATE_DIR/vae_stage"
  run cp -r "$SNAPSHOT_DIR/vae" "$SNAPSHOT_DIR/phases.json" "$VAE_SOURCE/text_encoder" "$STATE_DIR/vae_stage/"
  run cp "$SNAPSHOT_DIR/transformer_state.pt" "$STATE_DIR/"
elif [ ! -f "$STATE_DIR/vae_stage/phases.json" ]; then
  run mkdir -p "$STATE_DIR/vae_stage"
  run cp -r "$VAE_SOURCE/text_encoder" "$VAE_SOURCE/vae" "$STATE_DIR/vae_stage/"
  # Mark the copied VAE's first three phases done, so the robust phase is the one left to train.
  echo "echo '{\"phases\": [\"frames\", \"clips\", \"finetune\"], \"stats\": {}}' > $STATE_DIR/vae_stage/phases.json"
  if [ "$DRY_RUN" != 1 ]; then
    echo '{"phases": ["frames", "clips", "finetune"], "stats": {}}' > "$STATE_DIR/vae_stage/phases.json"
  fi
fi

SWAP="--shape_swap_weight 8"
REFINE_FLAGS=""  # the decoder refinement's settings beyond its defaults
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
  reached=$(state_step)
  if [ "$reached" -gt "$steps" ]; then
    echo "# $out: the state is at step $reached, past this link: skipped"
    continue
  fi
  # A state that stopped exactly at this link's end (a snapshot of a finished link) trains no step: the run only
  # evaluates and writes the link's model, which runs/ on another machine no longer has.
  # shellcheck disable=SC2086  # the flags are meant to split into words
  run "$PYTHON" scripts/train_world_model.py --output_dir "$out" --state_dir "$STATE_DIR" --resume \
    --vae_robust_steps 1500 --rotary_positions --transformer_steps "$steps" $flags \
    --threads "$THREADS" --device "$DEVICE" --eval_guidance 1
done

# Then the decoder is refined on what the last link's transformer hands it (scripts/refine_world_decoder.py); the
# encoder, and so the latents the transformer knows, stay as they are. Its folder is the chain's model.
refined="$out-refined"
if [ -f "$refined/training_summary.json" ]; then
  echo "# $refined holds a model: skipped"
else
  # shellcheck disable=SC2086  # the flags are meant to split into words
  run "$PYTHON" scripts/refine_world_decoder.py --model_dir "$out" --output_dir "$refined" $REFINE_FLAGS \
    --threads "$THREADS" --device "$DEVICE"
  run "$PYTHON" scripts/train_world_model.py --output_dir "$refined" --evaluate_only --eval_guidance 1 \
    --threads "$THREADS" --device "$DEVICE"
fi
echo "# the chain's model: $refined"
