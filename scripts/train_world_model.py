#!/usr/bin/env python
"""Train the world model: a tiny CogVideoX text-to-video pipeline that knows the shapes world.

Three stages, all on CPU, reproducible from ``--seed`` (same machine, same thread count):

1. a small random T5 encoder (frozen) with the word-level tokenizer: every world word is one
   token, so colour words reach the transformer as distinct vectors without training the encoder;
2. an ``AutoencoderKLCogVideoX`` (8x space, 4x time, like the real one) trained to reconstruct world
   videos, with extra weight on the shape's pixels (they are ~10 % of a frame, and the colour and
   shape the benchmark measures live there);
3. a ``CogVideoXTransformer3DModel`` trained as a v-prediction diffusion model on the frozen VAE's
   latents with CogVideoX-2b's scheduler and 10 % caption dropout (so classifier-free guidance
   works). Latents and prompt embeddings are computed once, so a step costs the transformer only.

The VAE and transformer are saved in float16 (a few MB in all); the folder is reloaded in float32
and the reloaded pipeline is evaluated with the pixel classifier on the world's 168 check
prompts; the accuracies go into ``training_summary.json`` in the folder.

    python scripts/train_world_model.py --output_dir models/world-cogvideox --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from receler.errors import RunInterrupted, UserError, cli_entry, setup_logging  # noqa: E402
from receler.io_utils import atomic_write, atomic_write_json  # noqa: E402
from receler.stop_request import StopRequest  # noqa: E402
from receler.world import make_dataset, scene_from_caption  # noqa: E402
from receler.world.scenes import COLORS, SHAPES, check_shape_size  # noqa: E402
from receler.world import model as world_model  # noqa: E402

logger = logging.getLogger("train_world_model")

DEFAULT_OUTPUT_DIR = "models/world-cogvideox"
# Tokens of the longest caption ("a purple triangle moving right and a yellow square moving down on a
# black background") with the word-level tokenizer, </s> included: shorter prompts would be cut.
LONGEST_CAPTION_TOKENS = 17


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    general = parser.add_argument_group("general")
    general.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR,
                         help="Folder to write the pipeline to (replaced atomically at the end if it holds a model).")
    general.add_argument("--seed", type=int, default=0, help="Seed for data, initial weights and training noise.")
    general.add_argument("--threads", type=int, default=2,
                         help="CPU threads for torch (timings, and the last bits of the weights, depend on it). On a "
                              "busy shared machine 1 thread can be several times faster than 2.")
    general.add_argument("--save_dtype", choices=["float16", "float32"], default="float16",
                         help="Precision of the saved VAE and transformer; float16 halves the folder and loads back in "
                              "float32 (the tiny text encoder is always saved in float32).")
    general.add_argument("--verbose", action="store_true", help="Debug logging.")

    data = parser.add_argument_group("data")
    data.add_argument("--num_videos", type=int, default=12000,
                      help="World videos encoded once for the transformer (latents are precomputed).")
    data.add_argument("--vae_videos", type=int, default=2000, help="World videos in the VAE's training pool.")
    data.add_argument("--two_shape_prob", type=float, default=0.3,
                      help="Share of training videos with two shapes (the world's default mix).")
    data.add_argument("--position_grid", type=int, default=1,
                      help="Start the transformer's training shapes on a grid of this many pixels (4: whole latent "
                           "pixels of a VAE that compresses space by 4); 1 allows any pixel. The VAE trains on "
                           "every position either way.")
    data.add_argument("--shape_size", type=int, default=None,
                      help="Side of a shape's box in pixels (default: the world's, 19 px in the 64 px frames), for "
                           "every phase; a VAE stage reused with --resume or --vae_from stays as it was trained (the "
                           "VAE check in the summary says how well it draws these shapes).")
    data.add_argument("--attribute_dropout", type=float, default=0.05,
                      help="Chance that a caption leaves out a shape's colour, shape or direction word (each on its "
                           "own: 'a circle moving left', 'a red shape moving left', 'a red circle'), so the model "
                           "knows what an unsaid attribute looks like; erasers can then use such prompts as anchors.")

    text = parser.add_argument_group("text encoder (random T5, frozen)")
    text.add_argument("--text_len", type=int, default=world_model.TEXT_LENGTH,
                      help="Tokens per prompt incl. </s> (two-shape captions need 17); also the transformer's "
                           "max_text_seq_length.")
    text.add_argument("--text_dim", type=int, default=64, help="Width of the T5 encoder.")
    text.add_argument("--text_layers", type=int, default=2, help="T5 encoder layers.")

    vae = parser.add_argument_group("VAE (first on single frames, then on whole clips)")
    vae.add_argument("--vae_channels", default="8,16,32",
                     help="block_out_channels of the down/up blocks (comma-separated): 3 blocks compress space 4x "
                          "(16x16 latents at 64 px, enough to keep shapes), 4 blocks 8x.")
    vae.add_argument("--latent_channels", type=int, default=16,
                     help="Latent channels (16 reconstructed motion better than 8 at the same cost).")
    vae.add_argument("--vae_image_steps", type=int, default=800,
                     help="Steps on single frames: ~9x cheaper per image than clips, they teach the spatial code.")
    vae.add_argument("--vae_image_batch_size", type=int, default=32, help="Frames per single-frame step.")
    vae.add_argument("--vae_image_lr", type=float, default=2e-3, help="Peak AdamW learning rate on single frames.")
    vae.add_argument("--vae_steps", type=int, default=1500,
                     help="Steps on whole clips: they teach the temporal code (motion within a latent frame).")
    vae.add_argument("--vae_batch_size", type=int, default=4, help="Clips per clip step.")
    vae.add_argument("--vae_lr", type=float, default=1e-3, help="Peak AdamW learning rate on clips.")
    vae.add_argument("--vae_kl_weight", type=float, default=1e-5,
                     help="Weight of the KL term (per latent element) next to the per-pixel reconstruction loss.")
    vae.add_argument("--vae_foreground_weight", type=float, default=9.0,
                     help="Extra loss weight on pixels that differ from the background (the shapes).")
    vae.add_argument("--vae_finetune_steps", type=int, default=1000,
                     help="A last phase on whole clips from a fresh pool of videos, with a fresh optimizer and a "
                          "lower learning rate: it sharpens shapes in the frames that share a latent with others "
                          "(a moving square's corners).")
    vae.add_argument("--vae_finetune_lr", type=float, default=3e-4, help="Peak AdamW learning rate of that phase.")
    vae.add_argument("--vae_robust_steps", type=int, default=0,
                     help="Steps of a phase after the fine-tune that decodes latents with Gaussian noise added (see "
                          "--vae_robust_noise), so the encoder must keep shapes apart by more than the transformer's "
                          "errors: without it a circle and a square of the same colour differ by ~0.16 latent "
                          "standard deviations, about the transformer's error from low noise. 0 skips it (the bundled "
                          "model was trained without it; 1500 is the setting measured in docs/world_benchmark.md).")
    vae.add_argument("--vae_robust_noise", type=float, default=0.3,
                     help="Largest noise std of that phase, in standard deviations of the batch's latents (each clip "
                          "draws its own from 0 to this), so scaling the latents up cannot outgrow it.")
    vae.add_argument("--vae_robust_lr", type=float, default=3e-4, help="Peak AdamW learning rate of that phase.")
    vae.add_argument("--vae_shape_code_steps", type=int, default=0,
                     help="Steps of a last VAE phase (after the robust one) that makes the latents name the shape the "
                          "way they name the colour: wherever a shape covers a latent pixel, latent channels 0, 1 and "
                          "2 (circle, square, triangle) must say which shape it is, by a margin of about one latent "
                          "standard deviation (a cross-entropy on those channels, see --vae_shape_code_weight), and the "
                          "decoder learns to draw the outline from them. Without it the latents hold a shape only in "
                          "its outline, a pattern that changes with every pixel the shape moves. 0 skips it.")
    vae.add_argument("--vae_shape_code_weight", type=float, default=0.02,
                     help="Weight of that phase's cross-entropy next to the reconstruction loss (about 0.015). On the "
                          "world model 0.02 learnt a weak code in 1000 steps and 0.2 a stronger one at the cost of the "
                          "reconstructions (docs/world_benchmark.md).")
    vae.add_argument("--vae_shape_code_lr", type=float, default=3e-4, help="Peak AdamW learning rate of that phase.")
    vae.add_argument("--vae_check_videos", type=int, default=96,
                     help="Single-shape videos whose VAE reconstructions the classifier scores after the VAE phases "
                          "(the ceiling of what the model can draw; in training_summary.json).")
    vae.add_argument("--vae_from", default=None,
                     help="Reuse the tokenizer, text encoder and VAE of this world-model folder and train only the "
                          "transformer (for iterating on the transformer).")

    tr = parser.add_argument_group("transformer")
    tr.add_argument("--num_layers", type=int, default=6, help="Transformer blocks.")
    tr.add_argument("--num_heads", type=int, default=8, help="Attention heads (width = heads x head_dim).")
    tr.add_argument("--head_dim", type=int, default=16, help="Channels per attention head.")
    tr.add_argument("--rotary_positions", action="store_true",
                    help="Rotary position embeddings in every attention layer (CogVideoX-5b's layout) instead of sincos "
                         "positions added once to the input (2b's): attention then sees relative offsets, so a shape "
                         "drawn at one place is the same computation at any other. --head_dim must be a multiple of 16.")
    tr.add_argument("--patch_size", type=int, default=2,
                    help="Latent pixels per token side (2: a 16x16 latent frame is 8x8 tokens).")
    tr.add_argument("--transformer_steps", type=int, default=12000,
                    help="Transformer training steps (the learning-rate schedule's length).")
    tr.add_argument("--stop_after", type=int, default=None,
                    help="Stop after this many steps of the --transformer_steps schedule and save the weight average "
                         "as it stands (for a model that already draws what the checks ask; see --eval_every).")
    tr.add_argument("--batch_size", type=int, default=32, help="Videos per transformer step.")
    tr.add_argument("--lr", type=float, default=1e-3, help="Peak AdamW learning rate (linear warmup, cosine decay).")
    tr.add_argument("--warmup_steps", type=int, default=200, help="Learning-rate warmup steps.")
    tr.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay.")
    tr.add_argument("--caption_dropout", type=float, default=0.1,
                    help="Share of training prompts replaced by the empty prompt, for classifier-free guidance.")
    tr.add_argument("--ema_decay", type=float, default=0.999,
                    help="Decay of the weight average that is saved (0 saves the raw weights).")
    tr.add_argument("--latent_foreground_weight", type=float, default=0.0,
                    help="Extra loss weight on latent positions that hold a shape (see --latent_foreground_threshold): "
                         "shapes fill ~10%% of a frame, so a plain loss lets the model draw blobs; 0 keeps the plain "
                         "loss.")
    tr.add_argument("--snr_shift_scale", type=float, default=3.0,
                    help="Shifts the noise schedule towards noise: the signal-to-noise ratio of every timestep is "
                         "divided by this before the schedule is rescaled to end with no signal. Saved with the "
                         "model's scheduler, so training and sampling agree. 3.0 is CogVideoX-2b's value, tuned for "
                         "large latents; 1.0 is the plain schedule, which keeps more signal at each step.")
    tr.add_argument("--min_snr_gamma", type=float, default=0.0,
                    help="Min-SNR loss weighting (Hang et al., 2023): each sample's loss is weighted so that, in terms "
                         "of the clean latents, it counts min(SNR, gamma) times, where the plain v-prediction loss "
                         "counts SNR + 1. Against the plain loss that weighs down the nearly clean timesteps (SNR > "
                         "gamma, where the model mostly copies its input) and the noisiest ones (where layout and "
                         "colour are decided): with gamma 5 on the bundled schedule (--snr_shift_scale 3) the v-loss "
                         "weight is 0.15 at t=10, 0.73 at t=99, 0.49 at t=199, 0.18 at t=399 and 0.05 at t=599, so "
                         "most of the training goes to t=30-300, where the probe sees shapes lost. 0 keeps the plain "
                         "loss.")
    tr.add_argument("--pixel_loss_weight", type=float, default=0.0,
                    help="Adds this times a pixel-space loss: the clean latents the v prediction implies and the true "
                         "ones are both decoded by the (frozen) VAE and compared in pixels, weighted by 1 / sigma^2 as "
                         "the v loss weighs clean-latent error. The VAE packs shape into small latent differences "
                         "(a circle and a square of one colour lie far closer than circles of two colours), so the "
                         "latent loss barely rewards drawing the right shape; in pixels the corners that tell them "
                         "apart count in full. Costs one decode with gradients per --pixel_loss_videos video. 0 keeps "
                         "the latent loss alone.")
    tr.add_argument("--pixel_loss_videos", type=int, default=8,
                    help="How many videos of each batch (the first ones) get the --pixel_loss_weight term.")
    tr.add_argument("--shape_pair_weight", type=float, default=0.0,
                    help="Adds this times a paired loss aimed at the shape word: the first --shape_pair_videos videos "
                         "of each batch are also drawn as the next shape (same paths, colours and background; the "
                         "caption names the new shape) and trained with the same noise and timestep, and the "
                         "difference between the two predictions' errors is penalised. Colour, layout and motion are "
                         "the same in both videos and cancel, so what is left is what the shape changes, learnt with "
                         "this weight instead of the small share of the latent loss it has. In clean-latent terms it "
                         "asks the two estimates to differ by exactly what the two videos differ by, which at high "
                         "noise is sharper than the average the plain loss learns. The drawn-as-another-shape videos "
                         "(encoded once, like the others) also join the plain loss. On the world model it did not raise "
                         "shape accuracy: with shared noise the model can read the difference off its noisy input "
                         "instead of the caption (docs/world_benchmark.md). 0 keeps the plain loss.")
    tr.add_argument("--shape_swap_weight", type=float, default=0.0,
                    help="Adds this times a loss that makes the caption, not the noisy input, decide the shape: the "
                         "first --shape_pair_videos videos of each batch are also predicted from their own noisy "
                         "latents under the caption of the same video drawn as the next shape (see --shape_pair_weight), "
                         "and the clean-latent estimate is asked to be that other video (mean squared error). Colour, "
                         "place and motion come from the input; the outline must come from the word. Videos whose "
                         "caption was dropped skip it (without a caption the input is all there is to follow). On the world "
                         "model, 6000 steps at weight 8 raised shape accuracy from 37.5%% to 60.4%% and 12000 steps to 67.4%%, "
                         "with squares still at 31.2%% (docs/world_benchmark.md). 0 keeps the plain loss.")
    tr.add_argument("--shape_swap_focus", type=float, default=0.0,
                    help="Weights the --shape_swap_weight term by where the two shapes differ: each latent position "
                         "counts 1 + this times |other video - own video| (mean over channels, divided by its mean over "
                         "the video), so a circle asked to become a square pays mostly for the corners. A circle and a "
                         "square are close in the world's latents (0.2 latent stds where a colour change is 0.95), so "
                         "under a plain mean the corners are a small part of the term. On the world model, 6000 more "
                         "steps at focus 4 raised shape accuracy from 67.4%% to 78.5%% (squares 31.2%% -> 54.2%%; "
                         "docs/world_benchmark.md). 0 keeps the plain mean.")
    tr.add_argument("--shape_swap_both", action="store_true",
                    help="Half the --shape_swap_weight videos (every second one) are asked for the shape after next "
                         "instead of the next (circle -> triangle, square -> circle, triangle -> square), so every "
                         "shape is asked for from both others. Encodes the videos a third time (about 3 minutes on "
                         "2 CPU threads, cached in --state_dir). On the world model, 6000 more steps reached 75.7%% "
                         "shape accuracy (squares 39.6%%, triangles 87.5%%); with --shape_swap_focus 4, 6000 "
                         "steps after that focus run, 79.9%% (squares 50.0%%).")
    tr.add_argument("--shape_v_focus", type=float, default=0.0,
                    help="Weights the plain v loss of the --shape_swap_weight videos (the first --shape_pair_videos of "
                         "each batch) the same way --shape_swap_focus weights the swap term: each latent position counts "
                         "1 + this times where the video and its other-shape version differ, so a square that the "
                         "transformer rounds off while denoising its own latents pays for the corners at every noise "
                         "level (the swap term asks for a shape from another one; this asks to keep it). The batch's "
                         "weights are divided by their mean, so the loss keeps its scale. On the world model, 6000 "
                         "more steps with --shape_swap_focus 4 reached 81.9%% shape accuracy (squares 56.2%%; "
                         "docs/world_benchmark.md). 0 keeps the plain loss.")
    tr.add_argument("--later_frame_weight", type=float, default=1.0,
                    help="Loss weight of every latent frame after the first, relative to the first, in the plain v "
                         "loss and the --shape_swap_weight term (the weights are divided by their mean, so the loss "
                         "keeps its scale). The VAE packs the first pixel frame alone into the first latent frame and "
                         "four pixel frames into each later one, so with 9 frames the later latent frames hold 8 of 9 "
                         "frames the classifier reads but, under a plain mean, two thirds of the loss; 4 weighs every "
                         "pixel frame alike. On the world model, 6000 steps with every swap lever reached 84.7%% shape "
                         "accuracy with 4 and 82.6%% without (3 of 144 prompts; docs/world_benchmark.md). 1 keeps the "
                         "plain mean.")
    tr.add_argument("--shape_pair_videos", type=int, default=8,
                    help="How many videos of each batch (the first ones) get a --shape_pair_weight or "
                         "--shape_swap_weight partner.")
    tr.add_argument("--latent_foreground_threshold", type=float, default=0.3,
                    help="A latent position is foreground where its distance from the frame's median latent is above "
                         "this fraction of the frame's largest distance (0.3 marks ~19%% of positions).")

    ev = parser.add_argument_group("evaluation (on the saved, reloaded pipeline)")
    ev.add_argument("--eval_guidance", default="1,4,6",
                    help="Comma-separated guidance scales to measure; the first is the headline number.")
    ev.add_argument("--eval_inference_steps", type=int, default=world_model.NUM_INFERENCE_STEPS,
                    help="DDIM steps per rendered video.")
    ev.add_argument("--eval_prompts", type=int, default=None,
                    help="Evaluate only the first N of the 168 check prompts (default: all).")
    ev.add_argument("--eval_seed_offset", type=int, default=0,
                    help="Render each check prompt from its seed plus this (the same prompts from other noise: the "
                         "spread of a score across seeds). The quick checks during training keep their seeds.")
    ev.add_argument("--skip_eval", action="store_true", help="Save the model without measuring it.")
    ev.add_argument("--evaluate_only", action="store_true",
                    help="Train nothing: measure the model already in --output_dir on the check prompts and write the "
                         "result into its training_summary.json (e.g. a model trained before a score was added).")
    ev.add_argument("--eval_every", type=int, default=1000,
                    help="Also score the 35 quick check prompts (colour, shape, direction, background, two-shape scenes) "
                         "every N transformer steps, at guidance 1 (0: never).")
    ev.add_argument("--log_every", type=int, default=200, help="Log the running loss every N steps.")

    parser.add_argument("--device", default="cpu",
                        help="Where the VAE and transformer train and the checks render: cpu, cuda or cuda:N. The data, "
                             "the random streams and the checkpoints stay on the CPU, so a run resumes on either.")
    state = parser.add_argument_group("resuming (training takes hours on a CPU)")
    state.add_argument("--state_dir", default="runs/world-model-state",
                       help="Where the trained VAE stage and transformer checkpoints go while training.")
    state.add_argument("--checkpoint_every", type=int, default=500,
                       help="Save the running stage's state (the VAE phase, or the transformer with its weight "
                            "average) with its optimizer every N steps (0: never; Ctrl-C or SIGTERM also saves it, "
                            "at the step it finishes).")
    state.add_argument("--resume", action="store_true",
                       help="Continue from --state_dir: reuse its VAE stage, continue a VAE phase stopped part way, "
                            "and the latest transformer checkpoint.")
    args = parser.parse_args(argv)

    try:
        args.vae_channels = tuple(int(c) for c in args.vae_channels.split(","))
        args.eval_guidance = [float(g) for g in args.eval_guidance.split(",")]
    except ValueError as err:
        raise UserError(f"--vae_channels and --eval_guidance take comma-separated numbers ({err})") from None
    if len(args.vae_channels) not in (3, 4):
        raise UserError(f"--vae_channels needs 3 numbers (4x spatial compression) or 4 (8x), got {args.vae_channels}")
    for name in ("num_videos", "vae_videos", "vae_batch_size", "vae_image_batch_size", "batch_size", "threads",
                 "text_len", "vae_check_videos"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.text_len < LONGEST_CAPTION_TOKENS:
        raise UserError(
            f"--text_len {args.text_len} would cut two-shape captions; use at least {LONGEST_CAPTION_TOKENS}"
        )
    if not 0.0 <= args.caption_dropout < 1.0:
        raise UserError(f"--caption_dropout must be in [0, 1), got {args.caption_dropout}")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.transformer_steps:
        raise UserError(f"--stop_after must be between 1 and --transformer_steps ({args.transformer_steps}), got "
                        f"{args.stop_after}")
    if args.latent_foreground_weight < 0 or not 0.0 < args.latent_foreground_threshold < 1.0:
        raise UserError("--latent_foreground_weight must be >= 0 and --latent_foreground_threshold in (0, 1), got "
                        f"{args.latent_foreground_weight} and {args.latent_foreground_threshold}")
    if not 0.0 <= args.attribute_dropout < 1.0:
        raise UserError(f"--attribute_dropout must be in [0, 1), got {args.attribute_dropout}")
    if args.position_grid < 1:
        raise UserError(f"--position_grid must be at least 1 pixel, got {args.position_grid}")
    if args.shape_size is not None:
        try:
            check_shape_size(args.shape_size, world_model.WIDTH)
        except ValueError as error:
            raise UserError(f"--{error}") from None
    if args.rotary_positions and args.head_dim % 16:
        raise UserError(f"--rotary_positions splits each head over frames, rows and columns and needs --head_dim a "
                        f"multiple of 16, got {args.head_dim}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this torch sees no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: only cpu and cuda are supported")
    args.device = str(device)  # a plain string, as written to training_summary.json
    if args.min_snr_gamma < 0:
        raise UserError(f"--min_snr_gamma must be >= 0 (0: the plain loss), got {args.min_snr_gamma}")
    # The extra loss terms: a weight, and how many videos of each batch it applies to.
    for weight, videos in (("pixel_loss_weight", "pixel_loss_videos"), ("shape_pair_weight", "shape_pair_videos"),
                           ("shape_swap_weight", "shape_pair_videos")):
        value, count = getattr(args, weight), getattr(args, videos)
        if value < 0 or (value > 0 and not 1 <= count <= args.batch_size):
            raise UserError(f"--{weight} must be >= 0 and --{videos} between 1 and --batch_size ({args.batch_size}), "
                            f"got {value} and {count}")
    if args.shape_swap_focus < 0:
        raise UserError(f"--shape_swap_focus must be >= 0 (0: the plain mean), got {args.shape_swap_focus}")
    if args.shape_v_focus < 0:
        raise UserError(f"--shape_v_focus must be >= 0 (0: the plain loss), got {args.shape_v_focus}")
    if not args.later_frame_weight > 0:
        raise UserError(f"--later_frame_weight must be > 0 (1: every latent frame alike), got {args.later_frame_weight}")
    if (args.shape_swap_focus > 0 or args.shape_swap_both or args.shape_v_focus > 0) and args.shape_swap_weight <= 0:
        raise UserError("--shape_swap_focus, --shape_swap_both and --shape_v_focus shape the --shape_swap_weight "
                        "term and its videos: pass --shape_swap_weight too")
    if args.vae_shape_code_steps > 0 and args.latent_channels < len(SHAPES):
        raise UserError(f"--vae_shape_code_steps names each shape with a latent channel: --latent_channels must be at "
                        f"least {len(SHAPES)}, got {args.latent_channels}")
    if not args.snr_shift_scale > 0:
        raise UserError(f"--snr_shift_scale must be > 0 (1.0 leaves the schedule as it is), got {args.snr_shift_scale}")
    return args


# ----------------------------------------------------------------------------- building blocks


def world_videos(n: int, seed: int, two_shape_prob: float, position_grid: int = 1, shape_size: int | None = None,
                 chunk: int = 500, shape_shift: int = 0):
    """Yield ``(captions, uint8 videos [k, F, H, W, 3])`` chunks of ``n`` world videos.

    Chunks keep memory flat for large ``n``; each chunk's seed derives from ``seed``. ``shape_shift``: the same
    videos drawn as other shapes (see :func:`receler.world.scenes.make_dataset`).
    """
    chunk_seeds = np.random.SeedSequence(seed).generate_state(math.ceil(n / chunk))
    for index, chunk_seed in enumerate(chunk_seeds):
        size = min(chunk, n - index * chunk)
        pairs = make_dataset(size, seed=int(chunk_seed), two_shape_prob=two_shape_prob, position_grid=position_grid,
                             shape_size=shape_size, shape_shift=shape_shift)
        yield [caption for caption, _ in pairs], np.stack([video for _, video in pairs])


def build_text_encoder(args):
    """Word-level T5 tokenizer and a small random T5 encoder.

    Random weights suffice: T5's residual stream keeps each token's own (random, distinct)
    embedding dominant, and the final RMS norm gives unit-scale outputs.
    """
    from transformers import T5Config, T5EncoderModel

    from receler.tiny.tokenizers import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(model_max_length=args.text_len)
    torch.manual_seed(args.seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=args.text_dim,
        d_kv=args.text_dim // 4,
        d_ff=2 * args.text_dim,
        num_layers=args.text_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    return tokenizer, T5EncoderModel(config).eval().requires_grad_(False)


def load_frozen_parts(args):
    """Tokenizer, text encoder and VAE of an existing world-model folder (``--vae_from``), in float32."""
    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5EncoderModel

    from receler.tiny.tokenizers import build_t5_tokenizer

    folder = Path(args.vae_from)
    if not (folder / "vae" / "config.json").is_file():
        raise UserError(f"--vae_from {folder} is not a world-model folder (no vae/config.json)")
    vae = AutoencoderKLCogVideoX.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
    text_encoder = T5EncoderModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    # The tokenizer is rebuilt (it is fixed by the vocabulary) so --text_len may differ from the folder's.
    tokenizer = build_t5_tokenizer(model_max_length=args.text_len)
    args.latent_channels = vae.config.latent_channels
    logger.info("reusing the text encoder and VAE of %s", folder)
    return tokenizer, text_encoder.eval().requires_grad_(False), vae.eval().requires_grad_(False), {
        "reused_from": str(folder)
    }


def build_vae(args):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(args.seed + 1)
    blocks = len(args.vae_channels)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks,
        block_out_channels=args.vae_channels,
        latent_channels=args.latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=world_model.HEIGHT,
        sample_width=world_model.WIDTH,
    )


def vae_spatial_scale(vae) -> int:
    """How many pixels of a frame's side one latent pixel covers (each VAE block after the first halves it)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_transformer(args, text_dim: int, spatial_scale: int):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(args.seed + 2)
    width = args.num_heads * args.head_dim
    return CogVideoXTransformer3DModel(
        num_attention_heads=args.num_heads,
        attention_head_dim=args.head_dim,
        in_channels=args.latent_channels,
        out_channels=args.latent_channels,
        time_embed_dim=width,
        text_embed_dim=text_dim,
        num_layers=args.num_layers,
        sample_width=world_model.WIDTH // spatial_scale,
        sample_height=world_model.HEIGHT // spatial_scale,
        sample_frames=world_model.NUM_FRAMES,
        patch_size=args.patch_size,
        temporal_compression_ratio=4,
        max_text_seq_length=args.text_len,
        use_rotary_positional_embeddings=args.rotary_positions,  # 5b layout if set, else 2b's sincos positions
    )


def build_scheduler(args):
    """CogVideoX-2b's DDIM scheduler with ``--snr_shift_scale``."""
    from diffusers import CogVideoXDDIMScheduler

    from receler.tiny.cogvideox import SCHEDULER_2B

    return CogVideoXDDIMScheduler(**{**SCHEDULER_2B, "snr_shift_scale": args.snr_shift_scale})


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def foreground_weights(video: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, F, H, W]``: 1 on the background, ``1 + extra`` on shapes.

    World backgrounds are flat, so the top-left pixel of a frame is its background colour.
    """
    background = video[:, :, :, :1, :1]
    shapes = (video - background).abs().amax(dim=1, keepdim=True) > 0.1
    return 1.0 + extra * shapes.float()


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weights of the v-prediction loss that make each timestep count min(SNR, ``gamma``) in clean-latent
    error: the v error is the clean-latent error divided by the noise std, so the plain v loss weights the latter by
    1 / sigma^2 = SNR + 1."""
    signal = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = signal / (1 - signal)
    return snr.clamp(max=gamma) / (snr + 1)


def decoded_v_loss(vae, scheduler, noisy, prediction, clean, timesteps) -> torch.Tensor:
    """Per-sample pixel MSE between the decoded clean-latent estimate that a v prediction implies and the decoded
    clean latents, divided by sigma^2 (so each timestep weighs it as the v loss weighs clean-latent error).

    Latents are in the transformer's layout ``[B, F, C, h, w]``, scaled by ``vae.config.scaling_factor``; the
    estimate is :func:`receler.world.model.clean_from_velocity`'s. Gradients reach ``prediction`` through the
    decoder; the VAE itself is not trained.
    """
    estimate = world_model.clean_from_velocity(scheduler, noisy, prediction, timesteps)
    sigma2 = (1 - scheduler.alphas_cumprod.to(timesteps.device)[timesteps]).to(noisy.dtype)

    def decode(latents):
        return vae.decode((latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)).sample

    with torch.no_grad():
        truth = decode(clean)
    return (decode(estimate) - truth).pow(2).flatten(1).mean(1) / sigma2


def shape_pair_loss(prediction, target, pair_prediction, pair_target) -> torch.Tensor:
    """Per-pair mean squared difference between the errors of two predictions made with the same noise and
    timestep, of a video and of the same video drawn as other shapes: what the two errors share (everything but
    the shapes' outlines) cancels. Since the shared noise cancels from the targets too, this is the squared error
    of the predicted difference ``prediction - pair_prediction`` against the true one."""
    return ((prediction - target) - (pair_prediction - pair_target)).pow(2).flatten(1).mean(1)


def shape_swap_loss(scheduler, noisy, prediction, other_clean, timesteps, weights=None) -> torch.Tensor:
    """Per-sample mean squared error between the clean-latent estimate that a v ``prediction`` implies for ``noisy``
    (noised latents of one video, predicted under the caption of another) and ``other_clean``, that other video's
    clean latents. A model that follows its input instead of the caption pays the two videos' squared difference.
    With ``weights`` (broadcastable to the latents, e.g. :func:`shape_difference_weights`) the mean is weighted."""
    squared = (world_model.clean_from_velocity(scheduler, noisy, prediction, timesteps) - other_clean).pow(2)
    if weights is None:
        return squared.flatten(1).mean(1)
    weights = weights.expand_as(squared)
    return (squared * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)


def shape_difference_weights(own: torch.Tensor, other: torch.Tensor, focus: float) -> torch.Tensor:
    """Loss weights ``[B, F, 1, H, W]`` for latents ``[B, F, C, H, W]`` of two versions of the same videos: 1 plus
    ``focus`` times |other - own| (mean over channels) divided by its mean over each video, so the weights average
    ``1 + focus`` per video and are largest where the two differ (a square's corners against a circle)."""
    difference = (other - own).abs().mean(2, keepdim=True)
    return 1.0 + focus * difference / difference.mean((1, 2, 3, 4), keepdim=True).clamp(min=1e-12)


def shape_v_weights(clean: torch.Tensor, swap_clean: torch.Tensor, focus: float) -> torch.Tensor:
    """Weights ``[B, F, 1, H, W]`` of the plain v loss for a batch ``clean`` whose first ``len(swap_clean)`` videos
    have other-shape versions ``swap_clean``: :func:`shape_difference_weights` on those, 1 on the rest, divided by
    the mean over the batch."""
    weights = torch.ones_like(clean[:, :, :1])
    weights[: len(swap_clean)] = shape_difference_weights(clean[: len(swap_clean)], swap_clean, focus)
    return weights / weights.mean()


def latent_frame_weights(frames: int, later: float) -> torch.Tensor:
    """Weights ``[1, frames, 1, 1, 1]``: 1 on the first latent frame, ``later`` on the others, divided by their mean."""
    weights = torch.full((1, frames, 1, 1, 1), float(later))
    weights[:, 0] = 1.0
    return weights / weights.mean()


def latent_foreground_weights(latents: torch.Tensor, extra: float, threshold: float) -> torch.Tensor:
    """Loss weights ``[B, F, 1, H, W]`` for latents ``[B, F, C, H, W]``: ``1 + extra`` where they hold a shape (see
    :func:`receler.world.model.shape_positions`), 1 elsewhere."""
    return 1.0 + extra * world_model.shape_positions(latents, threshold).float()


# The shape code: latent channel SHAPES.index(shape) names the shape wherever it covers a latent pixel. Its
# logits are these channels over the batch's latent std times this sharpness, so a confident code (cross-entropy
# ~0.04) needs the named shape's channel about one latent std above the others.
SHAPE_CODE_SHARPNESS = 4.0


def shape_code_labels(videos: np.ndarray, captions: list[str], spatial_scale: int, temporal_scale: int = 4,
                      cover: float = 0.5) -> torch.Tensor:
    """Per latent pixel, the index in :data:`SHAPES` of the shape that covers at least ``cover`` of its pixels, -1
    where none does: ``long [B, F_latent, h, w]`` for uint8 videos ``[B, F, H, W, 3]``. The latent grid is the
    VAE's: the first frame alone, then groups of ``temporal_scale`` frames, and squares of ``spatial_scale``
    pixels. A shape's pixels are those of its colour (every shape of a scene has its own colour)."""
    count, frames, height, width, _ = videos.shape
    cover_of = np.zeros((count, frames, height, width, len(SHAPES)), dtype=np.float32)
    for item, (video, caption) in enumerate(zip(videos, captions)):
        for spec in scene_from_caption(caption).shapes:
            cover_of[item, ..., SHAPES.index(spec.shape)] += (video == np.array(COLORS[spec.color])).all(-1)
    groups = [slice(0, 1)] + [slice(start, start + temporal_scale) for start in range(1, frames, temporal_scale)]
    pooled = np.stack([cover_of[:, group].mean(1) for group in groups], axis=1)  # [B, F_latent, H, W, shapes]
    pooled = pooled.reshape(count, len(groups), height // spatial_scale, spatial_scale, width // spatial_scale,
                            spatial_scale, len(SHAPES)).mean((3, 5))
    labels = pooled.argmax(-1)
    labels[pooled.max(-1) < cover] = -1
    return torch.from_numpy(labels).long()


def shape_code_loss(latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the shape code: VAE latents ``[B, C, F, h, w]``, labels ``[B, F, h, w]`` (-1: no shape)."""
    logits = SHAPE_CODE_SHARPNESS * latents[:, : len(SHAPES)] / latents.std().detach()
    return torch.nn.functional.cross_entropy(logits, labels.to(latents.device), ignore_index=-1)


def vae_loss(vae, video: torch.Tensor, args, generator: torch.Generator, latent_noise: float = 0.0, labels=None):
    """Weighted per-pixel MSE of a sampled reconstruction plus a small KL term (keeps latents tame).

    With ``latent_noise``, each clip's latents get Gaussian noise of a std drawn from [0, latent_noise] times the
    batch's latent std before decoding. With shape-code ``labels`` (:func:`shape_code_labels`),
    ``--vae_shape_code_weight`` times :func:`shape_code_loss` of the posterior means is added.
    Returns ``(loss, reconstruction, kl, shape code loss or None)``."""
    posterior = vae.encode(video).latent_dist
    latents = posterior.sample(generator=generator)
    if latent_noise > 0:
        scale = latent_noise * latents.std().detach()
        level = torch.rand(len(latents), 1, 1, 1, 1, generator=generator).to(latents.device) * scale
        latents = latents + level * torch.randn(latents.shape, generator=generator).to(latents.device)
    reconstruction = vae.decode(latents).sample
    weights = foreground_weights(video, args.vae_foreground_weight)
    rec = ((reconstruction - video) ** 2 * weights).mean() / weights.mean()
    kl = posterior.kl().sum() / posterior.mean.numel()
    loss = rec + args.vae_kl_weight * kl
    code = None
    if labels is not None:
        code = shape_code_loss(posterior.mean, labels)
        loss = loss + args.vae_shape_code_weight * code
    return loss, rec, kl, code


def checkpoint_or_stop(what: str, done: int, total: int, stop, progress, state_file, save_state,
                       checkpoint_every: int, to_continue: str = "rerun the same command with --resume") -> None:
    """After a training step: ``save_state(done)`` every ``checkpoint_every`` steps and when ``stop`` was requested
    (with a ``state_file``), then, on a stop, end the run with :class:`RunInterrupted` saying where the state is and
    how to continue (``to_continue``)."""
    checkpoint_due = checkpoint_every > 0 and done % checkpoint_every == 0
    if state_file is not None and (checkpoint_due or stop.requested):
        save_state(done)
    if stop.requested:
        progress.close()
        where = (f"its state is in {state_file}: {to_continue} to continue"
                 if state_file is not None else "nothing was saved")
        raise RunInterrupted(f"{what} stopped at step {done} of {total} ({stop.reason}); {where}")


# Which flag sets each VAE phase's length (named when a saved phase does not fit the command).
VAE_PHASE_STEPS_FLAG = {"frames": "--vae_image_steps", "clips": "--vae_steps", "finetune": "--vae_finetune_steps",
                        "robust": "--vae_robust_steps", "shape_code": "--vae_shape_code_steps"}


def saved_vae_phase(state_file: Path | None) -> dict | None:
    """The mid-phase VAE state in ``state_file`` (None without one)."""
    if state_file is None or not state_file.is_file():
        return None
    return torch.load(state_file, map_location="cpu", weights_only=True)


def run_vae_phase(vae, optimizer, generator, phase: str, steps: int, peak_lr: float, draw, args, state_file=None,
                  stats: dict | None = None, latent_noise: float = 0.0):
    """The steps of one VAE phase; returns its running reconstruction loss.

    ``draw()`` takes the next batch from ``generator``: (uint8 videos, shape-code labels or None). With
    ``state_file``, the VAE, the optimizer, the random stream, the step and ``stats`` (what the phases before this one
    measured, updated in place on a resume) are saved there every ``--checkpoint_every`` steps and when a stop is
    requested, and a saved state of this phase is continued first: a resumed phase ends as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    first_step, running = 0, None
    saved = saved_vae_phase(state_file)
    if saved is not None and saved["phase"] == phase:
        if saved["steps"] != steps:
            raise UserError(f"{state_file} holds the VAE's {phase} phase at step {saved['step']} of "
                            f"{saved['steps']}, not of {steps}: pass {VAE_PHASE_STEPS_FLAG[phase]} {saved['steps']}, "
                            "or a new --state_dir to start over")
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        first_step, running = saved["step"], saved["running"]
        if stats is not None:
            stats.update(saved["stats"])
        logger.info("resumed the VAE's %s phase from %s at step %d of %d", phase, state_file, first_step, steps)

    def save_state(done: int) -> None:
        state = {"phase": phase, "step": done, "steps": steps, "vae": vae.state_dict(),
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "running": running,
                 "stats": stats or {}}
        atomic_write(state_file, lambda tmp: torch.save(state, tmp))

    progress = tqdm(range(first_step, steps), desc=f"vae ({phase})", unit="step", mininterval=5, initial=first_step,
                    total=steps)
    with StopRequest(f"the VAE's {phase} phase") as stop:
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, peak_lr, warmup=min(20, steps))
            batch, labels = draw()
            running = vae_step(vae, optimizer, batch, args, generator, phase, step, steps, running, progress,
                               latent_noise=latent_noise, labels=labels)
            checkpoint_or_stop(f"the VAE's {phase} phase", step + 1, steps, stop, progress, state_file, save_state,
                               args.checkpoint_every)
    return running


def train_vae(vae, args, state_file: Path | None = None) -> dict:
    """Train the VAE on a pool of world videos: single frames first, then whole clips.

    From scratch on clips alone the VAE learns slowly (one clip costs ~9 frames but shows
    about one image's worth of content); frames teach colours and shapes cheaply, then clips
    teach the temporal layers to encode motion within each 4-frame latent. The two phases share one optimizer and
    random stream, so a run stopped in the clips phase continues there (``state_file``, see ``run_vae_phase``).
    """
    _, pool = zip(*world_videos(args.vae_videos, seed=args.seed + 100, two_shape_prob=args.two_shape_prob,
                                shape_size=args.shape_size))
    pool = np.concatenate(pool)
    generator = torch.Generator().manual_seed(args.seed + 101)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    vae.train()
    stats = {}

    def draw_frames():
        index = torch.randint(len(pool), (args.vae_image_batch_size,), generator=generator).numpy()
        frame = torch.randint(pool.shape[1], (args.vae_image_batch_size,), generator=generator).numpy()
        return pool[index, frame][:, None], None  # [B, 1, H, W, 3]: one-frame videos

    def draw_clips():
        return pool[torch.randint(len(pool), (args.vae_batch_size,), generator=generator).numpy()], None

    saved = saved_vae_phase(state_file)
    in_clips = saved is not None and saved["phase"] == "clips"  # the frames phase is in the saved weights
    phases = [("frames", args.vae_image_steps, args.vae_image_lr, draw_frames),
              ("clips", args.vae_steps, args.vae_lr, draw_clips)]
    for phase, steps, peak_lr, draw in phases:
        if phase == "frames" and in_clips:
            continue
        stats[f"final_reconstruction_loss_{phase}"] = run_vae_phase(vae, optimizer, generator, phase, steps, peak_lr,
                                                                    draw, args, state_file, stats)
    vae.eval().requires_grad_(False)
    return stats


def vae_step(vae, optimizer, batch: np.ndarray, args, generator, phase: str, step: int, steps: int, running, progress,
             latent_noise: float = 0.0, labels=None):
    """One VAE update on ``batch`` (uint8 videos); returns the running reconstruction loss (and logs it)."""
    loss, rec, kl, code = vae_loss(vae, world_model.to_model_video(batch).to(vae.device), args, generator,
                                   latent_noise, labels)
    if not torch.isfinite(loss):
        raise RuntimeError(f"VAE loss is not finite at {phase} step {step}; lower the VAE learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    running = rec.item() if running is None else 0.95 * running + 0.05 * rec.item()
    progress.set_postfix(rec=f"{running:.4f}", kl=f"{kl.item():.3f}", refresh=False)
    if (step + 1) % args.log_every == 0 or step + 1 == steps:
        logger.info("vae %s step %d/%d: weighted reconstruction %.4f (running), kl %.3f%s", phase, step + 1, steps,
                    running, kl.item(), "" if code is None else f", shape code cross-entropy {code.item():.3f}")
    return running


def finetune_vae(vae, args, phase: str = "finetune", state_file: Path | None = None) -> dict:
    """A late VAE phase on clips from a fresh pool (other videos than the earlier phases'), with a fresh optimizer
    and its own random stream, so a run resumed between phases ends exactly as an uninterrupted one (and within
    one, from ``state_file``: see ``run_vae_phase``).

    ``finetune`` sharpens the reconstructions at a lower learning rate; ``robust`` trains on noisy latents
    (``--vae_robust_noise``) so that what the decoder reads stays apart by more than the transformer's errors;
    ``shape_code`` keeps the noise and adds the shape code (``--vae_shape_code_steps``).
    """
    offset, steps, peak_lr, noise = {
        "finetune": (102, args.vae_finetune_steps, args.vae_finetune_lr, 0.0),
        "robust": (104, args.vae_robust_steps, args.vae_robust_lr, args.vae_robust_noise),
        "shape_code": (106, args.vae_shape_code_steps, args.vae_shape_code_lr, args.vae_robust_noise),
    }[phase]
    captions, pool = zip(*world_videos(args.vae_videos, seed=args.seed + offset, two_shape_prob=args.two_shape_prob,
                                       shape_size=args.shape_size))
    pool = np.concatenate(pool)
    labels = None
    if phase == "shape_code":
        labels = shape_code_labels(pool, [caption for chunk in captions for caption in chunk],
                                   spatial_scale=vae_spatial_scale(vae),
                                   temporal_scale=vae.config.temporal_compression_ratio)
    generator = torch.Generator().manual_seed(args.seed + offset + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=peak_lr, weight_decay=0.0)
    vae.train().requires_grad_(True)

    def draw():
        index = torch.randint(len(pool), (args.vae_batch_size,), generator=generator).numpy()
        return pool[index], None if labels is None else labels[index]

    running = run_vae_phase(vae, optimizer, generator, phase, steps, peak_lr, draw, args, state_file,
                            latent_noise=noise)
    vae.eval().requires_grad_(False)
    return {f"final_reconstruction_loss_{phase}": running}


def encode_dataset(pipe, args, shape_shift: int = 0):
    """Latents of ``--num_videos`` world videos and the index of each one's caption embedding.

    Returns ``(latents, caption_index, caption_embeds)``; captions repeat, so each distinct one is
    encoded once with the pipeline's own ``encode_prompt`` (the exact inference path). With
    ``--attribute_dropout`` some captions leave an attribute unsaid (see :func:`partial_captions`; a shifted
    dataset leaves out the same attributes of the same videos). ``shape_shift`` 1: the same videos drawn as the
    next shape, for ``--shape_pair_weight`` and ``--shape_swap_weight``; 2: as the shape after next, for
    ``--shape_swap_both``.
    """
    from tqdm.auto import tqdm

    latents, captions = [], []
    chunks = world_videos(args.num_videos, seed=args.seed + 200, two_shape_prob=args.two_shape_prob,
                          position_grid=args.position_grid, shape_size=args.shape_size, shape_shift=shape_shift)
    total = math.ceil(args.num_videos / 500)
    for chunk_captions, videos in tqdm(chunks, total=total, desc="encode videos", unit="chunk"):
        latents.append(world_model.encode_videos(pipe.vae, videos))
        captions.extend(chunk_captions)
    captions = partial_captions(captions, args.attribute_dropout, seed=args.seed + 250)
    distinct = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(distinct)}
    caption_embeds = world_model.embed_prompts(pipe, distinct, args.text_len)
    caption_index = torch.tensor([position[caption] for caption in captions])
    return torch.cat(latents), caption_index, caption_embeds


def shifted_dataset(pipe, args, state_dir: Path, shape_shift: int, count: int, scaling_factor: float,
                    made_with: dict):
    """``(latents, caption_index, caption_embeds)`` of the training videos drawn as other shapes (``shape_shift`` 1:
    the next shape, 2: the one after), scaled like the training latents; cached in ``state_dir`` (``shape_pairs.pt``,
    ``shape_pairs_2.pt``), re-encoded when the cache was made for other training latents (another count, VAE or
    geometry)."""
    cache = state_dir / ("shape_pairs.pt" if shape_shift == 1 else f"shape_pairs_{shape_shift}.pt")
    data = torch.load(cache, map_location="cpu", weights_only=True) if cache.is_file() else None
    stale = data is None or len(data["latents"]) != count or data.get("scaling_factor") != scaling_factor
    if stale or {key: data.get(key) for key in made_with} != made_with:
        logger.info("encoding the same videos drawn as other shapes (shift %d, for the shape pair or swap loss)",
                    shape_shift)
        latents, caption_index, caption_embeds = encode_dataset(pipe, args, shape_shift=shape_shift)
        data = {"latents": latents * scaling_factor, "caption_index": caption_index,
                "caption_embeds": caption_embeds, "scaling_factor": scaling_factor, **made_with}
        atomic_write(cache, lambda tmp: torch.save(data, tmp))
    return data["latents"], data["caption_index"], data["caption_embeds"]


def partial_captions(captions: list[str], dropout: float, seed: int) -> list[str]:
    """Each caption with its colour, shape and direction words each left out with probability ``dropout``
    (the same attribute for every shape of the caption), deterministically from ``seed``."""
    if dropout <= 0:
        return list(captions)
    rng = np.random.default_rng(seed)
    out = []
    for caption in captions:
        omit = [a for a in ("color", "shape", "direction") if rng.random() < dropout]
        out.append(scene_from_caption(caption).caption(omit=omit) if omit else caption)
    return out


def update_ema(ema, model, decay: float) -> None:
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters()):
            ema_param.lerp_(param, 1.0 - decay)


def check_same_latents(trained_on, now, state_file) -> None:
    """Refuse to continue a transformer state on latents other than its own. The latents are re-encoded when their
    cache is missing (a state carried to another machine without it): equal up to float rounding, so the scaling
    factor is compared with a tolerance. States from before this record are not checked."""
    if trained_on is None or now is None:
        return
    other = {key: (trained_on.get(key), now[key]) for key in now if key != "scaling_factor"
             and trained_on.get(key) != now[key]}
    old_scale, new_scale = trained_on.get("scaling_factor"), now.get("scaling_factor")
    if old_scale is not None and new_scale is not None and abs(old_scale - new_scale) > 1e-4 * abs(old_scale):
        other["scaling_factor"] = (old_scale, new_scale)
    if other:
        changes = ", ".join(f"{key} {was} -> {is_}" for key, (was, is_) in other.items())
        raise UserError(f"{state_file} was trained on other latents ({changes}): resume with the VAE stage and "
                        f"world flags it was trained with, or a new --state_dir to start over")


def train_transformer(
    transformer, scheduler, latents, caption_index, caption_embeds, empty_embed, args, on_eval=None, state_file=None,
    rotary=None, vae=None, pairs=None, far_pairs=None, latents_made_with=None,
):
    """v-prediction training on precomputed latents; returns the weights to save (EMA if enabled).

    ``rotary`` is the pipeline's rotary position embedding for the latents' size (None for sincos models).
    ``vae`` decodes for ``--pixel_loss_weight`` (frozen here; needed only when the weight is positive).
    ``pairs`` is ``(latents, caption_index, caption_embeds)`` of the same videos drawn as the next shape, for
    ``--shape_pair_weight`` and ``--shape_swap_weight`` (item i partners item i; needed only when a weight is positive);
    ``far_pairs`` the same drawn as the shape after next, for ``--shape_swap_both``.
    ``on_eval(step, model)`` is called every ``--eval_every`` steps with the weights that would be saved.
    With ``state_file``, everything needed to continue (weights, average, optimizer, random state, step) is
    saved there every ``--checkpoint_every`` steps, and loaded first when it exists (``--resume``): a resumed
    run continues the same random stream, so it ends with the weights an uninterrupted run would have.
    ``latents_made_with`` (what made ``latents``: VAE phases, world geometry, scaling factor) is saved with the state;
    a state trained on other latents is refused, one trained on re-encoded equal latents continues.
    """
    from tqdm.auto import tqdm

    if args.pixel_loss_weight > 0:
        if vae is None:
            raise ValueError("--pixel_loss_weight needs the VAE to decode with: pass vae=")
        vae.eval().requires_grad_(False)
    if (args.shape_pair_weight > 0 or args.shape_swap_weight > 0) and pairs is None:
        raise ValueError("--shape_pair_weight and --shape_swap_weight need the videos drawn as other shapes: "
                         "pass pairs=")
    if args.shape_swap_both and far_pairs is None:
        raise ValueError("--shape_swap_both needs the videos drawn as the shape after next: pass far_pairs=")
    generator = torch.Generator().manual_seed(args.seed + 300)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ema = copy.deepcopy(transformer).requires_grad_(False) if args.ema_decay > 0 else None
    num_train_timesteps = scheduler.config.num_train_timesteps
    running, running_v, first_step, history, rewarm_from = None, None, 0, [], None
    if state_file is not None and Path(state_file).is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        trained_shift = state.get("snr_shift_scale", 3.0)  # states from before the flag used CogVideoX-2b's 3.0
        if trained_shift != args.snr_shift_scale:
            raise UserError(f"{state_file} was trained with --snr_shift_scale {trained_shift}, not "
                            f"{args.snr_shift_scale}: pass that value, or a new --state_dir to start over")
        trained_rotary = state.get("rotary_positions", False)
        if trained_rotary != args.rotary_positions:
            raise UserError(f"{state_file} was trained {'with' if trained_rotary else 'without'} --rotary_positions: "
                            f"{'pass' if trained_rotary else 'drop'} it, or a new --state_dir to start over")
        check_same_latents(state.get("latents_made_with"), latents_made_with, state_file)
        transformer.load_state_dict(state["transformer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        else:
            # A compact snapshot (scripts/world_model_chain.sh save) keeps the weights, not Adam's moments: a
            # fresh Adam's first steps move every weight by the full learning rate, so warm it up again.
            rewarm_from = state["step"]
            logger.info("%s has no optimizer state: a fresh one, its learning rate re-warmed over %d steps",
                        state_file, args.warmup_steps)
        generator.set_state(state["generator"])
        running, first_step, history = state["running"], state["step"], state["history"]
        running_v = state.get("running_v", running)  # states from before it was logged apart: the same value
        logger.info("resumed the transformer from %s at step %d", state_file, first_step)
    transformer.train()
    last = min(args.transformer_steps, args.stop_after or args.transformer_steps)
    progress = tqdm(range(first_step, last), desc="transformer", unit="step", mininterval=5,
                    initial=first_step, total=last)

    def save_state(done: int) -> None:
        state = {"transformer": transformer.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "running": running,
                 "running_v": running_v,
                 "step": done, "history": history, "snr_shift_scale": args.snr_shift_scale,
                 "rotary_positions": args.rotary_positions, "latents_made_with": latents_made_with}
        atomic_write(state_file, lambda tmp: torch.save(state, tmp))

    with StopRequest("the transformer state") as stop:
        for step in progress:
            lr = cosine_lr(step, args.transformer_steps, args.lr, warmup=min(args.warmup_steps, args.transformer_steps))
            if rewarm_from is not None and step - rewarm_from < args.warmup_steps:
                lr *= (step - rewarm_from + 1) / args.warmup_steps
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(len(latents), (args.batch_size,), generator=generator)
            clean = latents[index]
            text = caption_embeds[caption_index[index]]
            dropped = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
            text = torch.where(dropped[:, None, None], empty_embed, text)
            noise = torch.randn(clean.shape, generator=generator)
            timesteps = torch.randint(num_train_timesteps, (args.batch_size,), generator=generator)
            count = args.shape_pair_videos if args.shape_pair_weight > 0 else 0
            if count:
                # The partners reuse the batch's draws (noise, timestep, caption dropout): no extra random numbers, so a
                # run with pairs sees the same videos and noise as one without.
                pair_text = pairs[2][pairs[1][index[:count]]]
                pair_text = torch.where(dropped[:count, None, None], empty_embed, pair_text)
                clean = torch.cat([clean, pairs[0][index[:count]]])
                text = torch.cat([text, pair_text])
                noise = torch.cat([noise, noise[:count]])
                timesteps = torch.cat([timesteps, timesteps[:count]])
            # Drawn on the CPU (one random stream whatever the device), computed on the transformer's device.
            clean, text, noise, timesteps = (t.to(args.device) for t in (clean, text, noise, timesteps))
            noisy = scheduler.add_noise(clean, noise, timesteps)
            target = scheduler.get_velocity(clean, noise, timesteps)
            inputs, input_text, input_steps = noisy, text, timesteps
            swap = args.shape_pair_videos if args.shape_swap_weight > 0 else 0
            if swap:
                # The batch's first noisy latents again, under the caption of the video drawn as the next shape (with
                # --shape_swap_both, every second one as the shape after next).
                swap_clean, swap_text = pairs[0][index[:swap]], pairs[2][pairs[1][index[:swap]]]
                if args.shape_swap_both:
                    far = torch.arange(swap) % 2 == 1
                    swap_clean = torch.where(far.view(-1, 1, 1, 1, 1), far_pairs[0][index[:swap]], swap_clean)
                    swap_text = torch.where(far.view(-1, 1, 1), far_pairs[2][far_pairs[1][index[:swap]]], swap_text)
                swap_clean, swap_text = swap_clean.to(args.device), swap_text.to(args.device)
                inputs = torch.cat([noisy, noisy[:swap]])
                input_text = torch.cat([text, swap_text])
                input_steps = torch.cat([timesteps, timesteps[:swap]])
            prediction = transformer(
                hidden_states=inputs, encoder_hidden_states=input_text, timestep=input_steps, image_rotary_emb=rotary,
                return_dict=False,
            )[0]
            if swap:
                prediction, swap_prediction = prediction[:-swap], prediction[-swap:]
            squared = (prediction - target) ** 2
            if args.latent_foreground_weight > 0:
                weights = latent_foreground_weights(clean, args.latent_foreground_weight,
                                                    args.latent_foreground_threshold)
                squared = squared * weights / weights.mean()  # the same weights on every channel
            if args.shape_v_focus > 0:
                squared = squared * shape_v_weights(clean, swap_clean, args.shape_v_focus)
            frame_weights = None
            if args.later_frame_weight != 1.0:
                frame_weights = latent_frame_weights(clean.shape[1], args.later_frame_weight).to(squared)
                squared = squared * frame_weights
            if args.min_snr_gamma > 0:
                squared = squared * min_snr_weights(scheduler, timesteps, args.min_snr_gamma).view(-1, 1, 1, 1, 1)
            loss = squared.mean()
            v_loss = loss.item()  # the plain (weighted) v loss, logged apart from the extra terms below
            if count:
                paired = shape_pair_loss(prediction[:count], target[:count], prediction[-count:], target[-count:])
                loss = loss + args.shape_pair_weight * paired.mean()
            if swap:
                focus = frame_weights
                if args.shape_swap_focus > 0:
                    focus = shape_difference_weights(clean[:swap], swap_clean, args.shape_swap_focus)
                    focus = focus if frame_weights is None else focus * frame_weights
                swapped = shape_swap_loss(scheduler, noisy[:swap], swap_prediction, swap_clean, timesteps[:swap], focus)
                captioned = (~dropped[:swap]).to(swapped)
                loss = loss + args.shape_swap_weight * (swapped * captioned).sum() / captioned.sum().clamp(min=1)
            if args.pixel_loss_weight > 0:
                k = args.pixel_loss_videos
                pixel = decoded_v_loss(vae, scheduler, noisy[:k], prediction[:k], clean[:k], timesteps[:k])
                loss = loss + args.pixel_loss_weight * pixel.mean()
            if not torch.isfinite(loss):
                raise RuntimeError(f"transformer loss is not finite at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
            optimizer.step()
            if ema is not None:
                # Early on the average would mostly hold the random init: warm its decay up.
                update_ema(ema, transformer, min(args.ema_decay, (1 + step) / (10 + step)))
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            running_v = v_loss if running_v is None else 0.98 * running_v + 0.02 * v_loss
            progress.set_postfix(loss=f"{running:.4f}", v=f"{running_v:.4f}", refresh=False)
            if (step + 1) % args.log_every == 0 or step + 1 == args.transformer_steps:
                logger.info("transformer step %d/%d: loss %.4f (running; the v loss alone %.4f), grad norm %.3f, "
                            "lr %.2e", step + 1, args.transformer_steps, running, running_v, grad_norm.item(), lr)
            if on_eval is not None and args.eval_every > 0 and (step + 1) % args.eval_every == 0:
                history.append(on_eval(step + 1, (ema if ema is not None else transformer).eval()))
                transformer.train()
            checkpoint_or_stop("the transformer", step + 1, last, stop, progress, state_file, save_state,
                               args.checkpoint_every)
    transformer.eval()
    final = ema if ema is not None else transformer
    return final.eval().requires_grad_(False), {"final_loss": running, "final_v_loss": running_v,
                                              "quick_eval_history": history}


def check_output_dir(output_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than a model (checked before training too)."""
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "model_index.json").exists():
        raise UserError(f"--output_dir {output_dir} exists and is not a model folder; choose an empty or new folder")


def save_folder(pipe, output_dir: Path, dtype: torch.dtype) -> None:
    """Save the pipeline next to ``output_dir`` and swap it into place, so no half-written model is left."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    # Only the diffusers models are stored in half precision: diffusers loads them back in float32 by
    # default, while transformers keeps a checkpoint's dtype, so a float16 text encoder would make a plain
    # `CogVideoXPipeline.from_pretrained(folder)` mix precisions (and it is tiny anyway).
    # nn.Module's own cast: diffusers' ModelMixin.to warns about float32-only modules these models lack.
    modules = (pipe.vae, pipe.transformer)
    for module in modules:
        torch.nn.Module.to(module, dtype)
    pipe.save_pretrained(staging, safe_serialization=True)
    for module in modules:
        torch.nn.Module.to(module, torch.float32)
    if output_dir.exists():
        output_dir.rename(old)
    staging.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


ACCURACY_KEYS = ("color_accuracy", "shape_accuracy", "direction_accuracy", "background_accuracy",
                 "two_shape_accuracy")


def evaluate(folder: Path, args) -> dict:
    """Render the check prompts with the reloaded model at each guidance scale and score them."""
    pipe = world_model.load_world_pipeline(folder, dtype=torch.float32, device=args.device)
    prompts = world_model.check_prompts(quick=False, seed_offset=args.eval_seed_offset)
    if args.eval_prompts is not None:
        prompts = prompts[: args.eval_prompts]
    results = {}
    for guidance in args.eval_guidance:
        start = time.perf_counter()
        videos = world_model.render_world(
            pipe, prompts, guidance_scale=guidance, num_inference_steps=args.eval_inference_steps, progress=True
        )
        scores = world_model.score_videos(videos, prompts)
        results[f"{guidance:g}"] = {
            **{key: scores[key] for key in ACCURACY_KEYS},
            "color_accuracy_per_color": scores["per_color"],
            "shape_accuracy_per_shape": scores["per_shape"],
            "shape_readings": scores["shape_readings"],
            "fill_ratio_quartiles_per_shape": {shape: [round(float(q), 3) for q in np.percentile(fills, [25, 50, 75])]
                                               for shape, fills in sorted(scores["fill_ratios"].items())},
            "seconds": round(time.perf_counter() - start, 1),
        }
        logger.info("guidance %g: %s (%d prompts, %.0f s); %s", guidance, _accuracies(scores), len(prompts),
                    time.perf_counter() - start, _shape_split(scores))
    return {
        "num_prompts": len(prompts),
        "render_settings": {
            "num_inference_steps": args.eval_inference_steps,
            "num_frames": world_model.NUM_FRAMES,
            "height": world_model.HEIGHT,
            "width": world_model.WIDTH,
            "max_sequence_length": args.text_len,
            "generator": "CPU torch.Generator seeded with each prompt's seed",
            "seed_offset": args.eval_seed_offset,
        },
        "by_guidance": results,
    }


def evaluate_saved(folder: Path, args) -> dict:
    """``--evaluate_only``: score a saved model and record it in its summary (other entries kept)."""
    if not (folder / "model_index.json").is_file():
        raise UserError(f"--evaluate_only needs a saved world model in --output_dir, and {folder} has no "
                        f"model_index.json; train one first or point --output_dir at one")
    summary_file = folder / "training_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["evaluation"] = evaluate(folder, args)
    atomic_write_json(summary_file, summary)
    return summary


def _shape_split(scores: dict) -> str:
    """Shape accuracy by prompted shape and what the classifier read, e.g. to spot one blob read as a circle."""
    accuracy = " / ".join(f"{shape} {value:.3f}" for shape, value in sorted(scores["per_shape"].items()))
    readings = " / ".join(f"{shape} {count}" for shape, count in sorted(scores["shape_readings"].items()))
    fills = " / ".join(f"{shape} {np.median(values):.3f}" for shape, values in sorted(scores["fill_ratios"].items()))
    return f"shape by prompted shape: {accuracy}; shapes read: {readings}; median fill ratio: {fills}"


def _accuracies(scores: dict) -> str:
    return ", ".join(f"{key.replace('_accuracy', '')} {scores[key]:.3f}" for key in ACCURACY_KEYS
                     if scores.get(key) is not None)


@torch.no_grad()
def vae_check(vae, args, latent_noise: float = 0.2) -> dict:
    """Classifier accuracy on VAE reconstructions of single-shape world videos (the ceiling for the model), and on
    reconstructions from latents with noise of ``latent_noise`` latent standard deviations added (how much of the
    transformer's error the decoder tolerates)."""
    count = args.vae_check_videos
    pairs = make_dataset(count, seed=args.seed + 400, two_shape_prob=0.0, shape_size=args.shape_size)
    videos = np.stack([video for _, video in pairs])
    captions = [caption for caption, _ in pairs]
    latents = world_model.encode_videos(vae, videos).permute(0, 2, 1, 3, 4)  # back to the VAE's [B, C, F, h, w]
    generator = torch.Generator().manual_seed(args.seed + 401)
    noisy = latents + latent_noise * latents.std() * torch.randn(latents.shape, generator=generator)
    result = {}
    for name, code in (("clean", latents), (f"latent noise {latent_noise:g}", noisy)):
        decoded = torch.cat([vae.decode(code[start : start + 16].to(vae.device)).sample.cpu()
                             for start in range(0, count, 16)])
        frames = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
        scores = world_model.score_videos(list(frames), captions)
        logger.info("VAE reconstructions (%s): %s (%d videos)", name, _accuracies(scores), count)
        result[name] = {key: scores[key] for key in ACCURACY_KEYS[:4]}
    return {**result["clean"], "with_latent_noise": {f"{latent_noise:g}": result[f"latent noise {latent_noise:g}"]}}


def save_frozen_parts(folder: Path, text_encoder, vae, phases: list, stats: dict) -> None:
    """The trained VAE stage, in the layout ``--vae_from`` reads, with the VAE phases done (``phases.json``), so a
    resumed run does only what is left."""
    staging = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    text_encoder.save_pretrained(staging / "text_encoder")
    vae.save_pretrained(staging / "vae")
    atomic_write_json(staging / "phases.json", {"phases": phases, "stats": stats})
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def vae_phases_done(folder: Path) -> tuple[list, dict]:
    """``(phases, stats)`` of a saved VAE stage (a stage saved before phases were recorded did the first two)."""
    marker = folder / "phases.json"
    if not marker.is_file():
        return ["frames", "clips"], {}
    saved = json.loads(marker.read_text())
    return saved["phases"], saved.get("stats", {})


# ----------------------------------------------------------------------------- main


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    from diffusers import CogVideoXPipeline

    output_dir = Path(args.output_dir)
    if args.evaluate_only:
        return evaluate_saved(output_dir, args)
    check_output_dir(output_dir)
    state_dir = Path(args.state_dir)
    if not args.resume and state_dir.exists():
        shutil.rmtree(state_dir)  # a fresh run never mixes with an old run's state
    state_dir.mkdir(parents=True, exist_ok=True)
    vae_stage = state_dir / "vae_stage"
    vae_phase_file = state_dir / "vae_phase_state.pt"  # a VAE phase stopped part way (see run_vae_phase)
    if args.resume and args.vae_from is None and (vae_stage / "vae" / "config.json").is_file():
        args.vae_from = str(vae_stage)
        logger.info("resuming from %s: the VAE phases %s are done", state_dir, vae_phases_done(vae_stage)[0])
    timings = {}
    started = time.perf_counter()

    stage = time.perf_counter()
    if args.vae_from is not None:
        tokenizer, text_encoder, vae, vae_stats = load_frozen_parts(args)
        vae.to(args.device)
        text_encoder.to(args.device)
        phases, saved_stats = vae_phases_done(Path(args.vae_from))
        vae_stats = {**vae_stats, **saved_stats}
    else:
        tokenizer, text_encoder = build_text_encoder(args)
        vae = build_vae(args).to(args.device)
        text_encoder.to(args.device)
        logger.info("training the VAE (%d parameters): %d steps on frames, %d on clips", count_parameters(vae),
                    args.vae_image_steps, args.vae_steps)
        vae_stats, phases = train_vae(vae, args, vae_phase_file), ["frames", "clips"]
        save_frozen_parts(vae_stage, text_encoder, vae, phases, vae_stats)
        vae_phase_file.unlink(missing_ok=True)  # the phases are in the VAE stage now
    ours = args.vae_from is None or Path(args.vae_from) == vae_stage  # another model's VAE is reused as it is
    late_phases = [("finetune", args.vae_finetune_steps, "fine-tuning the VAE on clips"),
                   ("robust", args.vae_robust_steps, "training the VAE on noisy latents"),
                   ("shape_code", args.vae_shape_code_steps, "teaching the VAE's latents to name the shape")]
    for phase, steps, what in late_phases:
        if ours and phase not in phases and steps > 0:
            logger.info("%s: %d steps", what, steps)
            vae_stats.update(finetune_vae(vae, args, phase, vae_phase_file))
            phases = phases + [phase]
            save_frozen_parts(vae_stage, text_encoder, vae, phases, vae_stats)
            vae_phase_file.unlink(missing_ok=True)
    vae_stats = {**vae_stats, "phases": phases, "reconstruction": vae_check(vae, args)}
    timings["vae_training_s"] = time.perf_counter() - stage

    transformer = build_transformer(args, text_dim=text_encoder.config.d_model, spatial_scale=vae_spatial_scale(vae))
    transformer.to(args.device)
    scheduler = build_scheduler(args)
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )

    stage = time.perf_counter()
    cache = state_dir / "latents.pt"
    data = torch.load(cache, map_location="cpu", weights_only=True) if args.resume and cache.is_file() else None
    # What the cached latents depend on; caches from before the geometry flags hold the plain world.
    made_with = {"vae_phases": phases, "position_grid": args.position_grid, "shape_size": args.shape_size}
    cached_with = None if data is None else {"position_grid": 1, "shape_size": None,
                                             **{key: data[key] for key in made_with if key in data}}
    if cached_with == made_with:
        logger.info("reusing the encoded dataset in %s", cache)
    else:
        latents, caption_index, caption_embeds = encode_dataset(pipe, args)
        # Unit-variance latents suit the scheduler's noise levels; the pipeline divides by this on decode.
        scaling_factor = float(1.0 / latents.std())
        data = {"latents": latents * scaling_factor, "caption_index": caption_index,
                "caption_embeds": caption_embeds, "scaling_factor": scaling_factor, **made_with}
        atomic_write(cache, lambda tmp: torch.save(data, tmp))
        if cached_with is not None:  # the cache held other latents, so the transformer state was trained on them
            (state_dir / "transformer_state.pt").unlink(missing_ok=True)
    latents, caption_index, caption_embeds = data["latents"], data["caption_index"], data["caption_embeds"]
    scaling_factor = float(data["scaling_factor"])
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe.vae_scaling_factor_image = scaling_factor
    empty_embed = world_model.embed_prompts(pipe, [""], args.text_len)
    pairs = far_pairs = None
    if args.shape_pair_weight > 0 or args.shape_swap_weight > 0:
        pairs = shifted_dataset(pipe, args, state_dir, 1, len(latents), scaling_factor, made_with)
    if args.shape_swap_both:
        far_pairs = shifted_dataset(pipe, args, state_dir, 2, len(latents), scaling_factor, made_with)
    timings["encoding_s"] = time.perf_counter() - stage
    logger.info("encoded %d videos (%d distinct captions); latents %s, scaling factor %.4f", len(latents),
                len(caption_embeds), tuple(latents.shape[1:]), scaling_factor)

    stage = time.perf_counter()
    logger.info("training the transformer (%d parameters) for %d steps of %d videos",
                count_parameters(transformer), args.transformer_steps, args.batch_size)
    quick_prompts = world_model.check_prompts(quick=True)

    def quick_eval(step, model):
        pipe.register_modules(transformer=model)
        videos = world_model.render_world(pipe, quick_prompts, num_inference_steps=args.eval_inference_steps)
        scores = world_model.score_videos(videos, quick_prompts)
        logger.info("step %d: %s (guidance 1, %d quick prompts)", step, _accuracies(scores), len(quick_prompts))
        return {"step": step, **{key: scores[key] for key in ACCURACY_KEYS}}

    pipe.set_progress_bar_config(disable=True)
    rotary = world_model.rotary_embedding(pipe, latents.shape, args.device)  # None with sincos positions
    trained, transformer_stats = train_transformer(
        transformer, scheduler, latents, caption_index, caption_embeds, empty_embed, args, on_eval=quick_eval,
        state_file=state_dir / "transformer_state.pt", rotary=rotary, vae=vae, pairs=pairs, far_pairs=far_pairs,
        latents_made_with={**made_with, "scaling_factor": scaling_factor},
    )
    pipe.register_modules(transformer=trained)
    timings["transformer_training_s"] = time.perf_counter() - stage

    save_folder(pipe, output_dir, torch.float16 if args.save_dtype == "float16" else torch.float32)
    summary = {
        "seed": args.seed,
        "threads": args.threads,
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "parameters": {
            "text_encoder": count_parameters(text_encoder),
            "vae": count_parameters(vae),
            "transformer": count_parameters(trained),
        },
        "vae_scaling_factor": scaling_factor,
        "vae": vae_stats,
        "transformer": transformer_stats,
        "folder_bytes": folder_size(output_dir),
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    if not args.skip_eval:
        stage = time.perf_counter()
        summary["evaluation"] = evaluate(output_dir, args)
        timings["evaluation_s"] = time.perf_counter() - stage
    timings["total_s"] = time.perf_counter() - started
    summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
    atomic_write_json(output_dir / "training_summary.json", summary)

    lines = [f"world model saved to {output_dir} ({summary['folder_bytes'] / 1e6:.1f} MB)"]
    lines += [f"  {name}: {seconds:.0f} s" for name, seconds in summary["timings"].items()]
    for guidance, result in summary.get("evaluation", {}).get("by_guidance", {}).items():
        lines.append(f"  guidance {guidance}: {_accuracies(result)}")
    logger.info("\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
