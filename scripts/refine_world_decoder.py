#!/usr/bin/env python
"""Fine-tune a world model's VAE decoder on what its transformer hands it, keeping everything else.

A generation ends by decoding the transformer's estimate of the clean latents, and that estimate is pulled
towards a round blob: its corners are weaker than the true latents' (see ``python -m receler.world.probe``).
The VAE's decoder was trained on true (and noised) latents only. This phase shows it the transformer's
one-step estimates of world videos noised to a random timestep up to ``--max_timestep``, and asks for the true
video back, so that it learns to draw the shape the estimate leans towards. The encoder is frozen, so the
latents, and the transformer trained on them, stay valid; only the decoder's weights change.

    python scripts/refine_world_decoder.py --model_dir runs/world-chain/44000-all \\
        --output_dir runs/world-chain/44000-all-refined

The new folder is a copy of ``--model_dir`` with the refined VAE; ``training_summary.json`` gains a
``decoder_refinement`` entry (settings, timings, losses). Score it with
``python scripts/train_world_model.py --output_dir NEW --evaluate_only --eval_guidance 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the world-model trainer's schedule and loss weights

from receler.errors import UserError, cli_entry, setup_logging  # noqa: E402
from receler.io_utils import atomic_write, atomic_write_json  # noqa: E402
from receler.stop_request import StopRequest  # noqa: E402
from receler.world import make_dataset  # noqa: E402
from receler.world import model as world_model  # noqa: E402
from receler.world.probe import denoise_from, transformer_velocity  # noqa: E402
from train_world_model import checkpoint_or_stop, cosine_lr, foreground_weights, vae_check  # noqa: E402

logger = logging.getLogger("refine_world_decoder")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="The world-model folder whose decoder is refined.")
    parser.add_argument("--output_dir", required=True,
                        help="New folder: a copy of --model_dir with the refined VAE (must not exist yet).")
    parser.add_argument("--state_file", default=None,
                        help="Where the training state is saved every --checkpoint_every steps and on Ctrl-C "
                             "(default: OUTPUT_DIR.state.pt); a run finds it there and continues.")
    parser.add_argument("--steps", type=int, default=1500, help="Decoder updates.")
    parser.add_argument("--batch_size", type=int, default=4, help="Clips per update.")
    parser.add_argument("--lr", type=float, default=1e-4, help="Peak AdamW learning rate (cosine, 20 warm-up steps).")
    parser.add_argument("--videos", type=int, default=2000,
                        help="World videos in the training pool (drawn from --seed, other videos than the VAE's).")
    parser.add_argument("--max_timestep", type=int, default=200,
                        help="Each clip is noised to a timestep drawn uniformly from 0..this (of 1000) before the "
                             "transformer estimates it (--inputs denoised: one of the sampler's timesteps up to "
                             "this); the last step of a 30-step generation decodes t=32.")
    parser.add_argument("--inputs", choices=("estimate", "denoised"), default="estimate",
                        help="What the decoder is shown: the transformer's one-step estimate of the clean latents "
                             "(estimate), or the end of the sampler's steps from that timestep on (denoised: what a "
                             "generation decodes, a few transformer passes a clip).")
    parser.add_argument("--clean_share", type=float, default=0.25,
                        help="Share of clips decoded from their true latents instead, so reconstructions stay sharp.")
    parser.add_argument("--loss", choices=("mse", "l1"), default="mse",
                        help="Per-pixel error: mse (as the VAE was trained) or l1. Where the estimate leaves a "
                             "corner in doubt, mse pays for drawing it half-filled (the mean of the two answers), l1 "
                             "for the likelier answer (the median), so l1 may draw crisper corners.")
    parser.add_argument("--foreground_weight", type=float, default=9.0,
                        help="Extra loss weight on the shapes' pixels, as the VAE was trained.")
    parser.add_argument("--check_videos", type=int, default=96,
                        help="Single-shape videos the VAE's reconstructions are read on before and after (the "
                             "trainer's own VAE check; 0 skips it).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the pool, the batches, timesteps and noise.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="Where the models compute (cpu or cuda).")
    parser.add_argument("--checkpoint_every", type=int, default=250, help="Save the state every N steps (0: never).")
    parser.add_argument("--log_every", type=int, default=100, help="Log the running loss every N steps.")
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")
    args = parser.parse_args(argv)
    if args.check_videos < 0:
        parser.error(f"--check_videos must be 0 or more, got {args.check_videos}")
    for name in ("steps", "batch_size", "videos"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.max_timestep < 1000:
        parser.error(f"--max_timestep must be in 0..999, got {args.max_timestep}")
    if not 0.0 <= args.clean_share <= 1.0:
        parser.error(f"--clean_share must be in [0, 1], got {args.clean_share}")
    return args


def decoder_parameters(vae) -> list:
    """The parameters between the latents and the pixels: ``post_quant_conv`` (if any) and the decoder."""
    modules = [vae.decoder] + ([vae.post_quant_conv] if getattr(vae, "post_quant_conv", None) is not None else [])
    return [p for module in modules for p in module.parameters()]


def decoder_loss(decoded: torch.Tensor, target: torch.Tensor, kind: str, foreground_weight: float) -> torch.Tensor:
    """Per-pixel squared (``mse``) or absolute (``l1``) error, weighted ``1 + foreground_weight`` on the shapes'
    pixels as the VAE's own loss is, over the mean weight (so the loss keeps its scale)."""
    weights = foreground_weights(target, foreground_weight)
    error = (decoded - target).abs() if kind == "l1" else (decoded - target) ** 2
    return (error * weights).mean() / weights.mean()


def decoder_inputs(pipe, latents: torch.Tensor, embeds: torch.Tensor, args, generator: torch.Generator):
    """The latents the decoder is shown (scaled, ``[B, F_latent, C, h, w]``), or the true latents for a
    ``--clean_share`` of the clips. ``--inputs estimate``: the transformer's one-step estimate from a random timestep
    in 0..``--max_timestep``; ``denoised``: the end of the sampler's own steps (30, guidance 1), started from the
    latents noised to a random one of its timesteps up to ``--max_timestep``."""
    count = len(latents)
    timesteps = torch.randint(0, args.max_timestep + 1, (count,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    clean = torch.rand(count, generator=generator) < args.clean_share
    device = pipe.transformer.device
    latents, noise, embeds, timesteps = (x.to(device) for x in (latents, noise, embeds, timesteps))
    with torch.no_grad():
        if args.inputs == "denoised":
            pipe.scheduler.set_timesteps(world_model.NUM_INFERENCE_STEPS)
            schedule = [int(t) for t in pipe.scheduler.timesteps]
            starts = [i for i, t in enumerate(schedule) if t <= args.max_timestep] or [len(schedule) - 1]
            start = starts[int(torch.randint(len(starts), (1,), generator=generator))]
            estimate = denoise_from(pipe, latents, embeds, start, noise)
        else:
            noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
            velocity = transformer_velocity(pipe, noisy, embeds, timesteps)
            estimate = world_model.clean_from_velocity(pipe.scheduler, noisy, velocity, timesteps)
    keep = clean.to(device).view(-1, 1, 1, 1, 1)
    return torch.where(keep, latents, estimate)


def training_pool(pipe, args):
    """``(uint8 videos, scaled latents, caption embeddings)`` of ``--videos`` world videos in the geometry the model
    was trained on (single- and two-shape scenes, as the VAE saw them)."""
    world_args = world_model.trained_world_args(args.model_dir)
    summary = json.loads((Path(args.model_dir) / "training_summary.json").read_text())
    two_shape_prob = float(summary.get("args", {}).get("two_shape_prob", 0.3))
    pairs = make_dataset(args.videos, seed=args.seed + 300, two_shape_prob=two_shape_prob, **world_args)
    videos = np.stack([video for _, video in pairs])
    latents = world_model.encode_videos(pipe.vae, videos) * pipe.vae.config.scaling_factor
    embeds = world_model.embed_prompts(pipe, [caption for caption, _ in pairs],
                                       pipe.transformer.config.max_text_seq_length)
    return videos, latents, embeds


def refine(pipe, args, state_file: Path) -> dict:
    """Train the decoder; returns the running loss. Resumes from ``state_file`` and saves to it (atomically)."""
    from tqdm.auto import tqdm

    vae = pipe.vae
    vae.requires_grad_(False)
    params = decoder_parameters(vae)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed + 301)
    start = time.perf_counter()
    videos, latents, embeds = training_pool(pipe, args)
    pool_seconds = time.perf_counter() - start
    first_step, running = 0, None
    if state_file.is_file():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        if saved["steps"] != args.steps:
            raise UserError(f"{state_file} holds a refinement at step {saved['step']} of {saved['steps']}, not of "
                            f"{args.steps}: pass --steps {saved['steps']}, or delete it to start over")
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        first_step, running = saved["step"], saved["running"]
        logger.info("resumed from %s at step %d of %d", state_file, first_step, args.steps)

    def save_state(done: int) -> None:
        state = {"step": done, "steps": args.steps, "vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                 "generator": generator.get_state(), "running": running}
        atomic_write(state_file, lambda tmp: torch.save(state, tmp))

    vae.decoder.train()
    progress = tqdm(range(first_step, args.steps), desc="refine decoder", unit="step", mininterval=5,
                    initial=first_step, total=args.steps)
    with StopRequest("the decoder's state") as stop:
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, args.steps, args.lr, warmup=min(20, args.steps))
            index = torch.randint(len(videos), (args.batch_size,), generator=generator)
            inputs = decoder_inputs(pipe, latents[index], embeds[index], args, generator)
            target = world_model.to_model_video(videos[index.numpy()]).to(vae.device)
            decoded = vae.decode((inputs / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)).sample
            loss = decoder_loss(decoded, target, args.loss, args.foreground_weight)
            if not torch.isfinite(loss):
                raise RuntimeError(f"decoder loss is not finite at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            progress.set_postfix(loss=f"{running:.4f}", refresh=False)
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                logger.info("step %d/%d: weighted reconstruction %.4f (running)", done, args.steps, running)
            checkpoint_or_stop("the refinement", done, args.steps, stop, progress, state_file, save_state,
                               args.checkpoint_every, to_continue="rerun the same command")
    vae.eval().requires_grad_(False)
    return {"final_loss": running, "pool_seconds": round(pool_seconds, 1),
            "train_seconds": round(time.perf_counter() - start - pool_seconds, 1)}


def reconstruction_check_args(model_dir: Path, count: int) -> SimpleNamespace:
    """The settings of the trainer's VAE check (its videos, from its seed, in the model's geometry), so the refined
    decoder's reconstructions are read on the same videos as the original's."""
    trained = json.loads((model_dir / "training_summary.json").read_text()).get("args", {})
    return SimpleNamespace(vae_check_videos=count,
                           seed=int(trained.get("seed") or 0), shape_size=trained.get("shape_size"))


def save_refined(model_dir: Path, output_dir: Path, vae, record: dict) -> None:
    """Copy ``model_dir`` with the refined VAE (float16, as the world models store it) next to ``output_dir``, then
    move it into place, so no half-written folder is left."""
    staging = output_dir.parent / f".{output_dir.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    shutil.rmtree(staging / "vae")
    torch.nn.Module.to(vae, torch.float16)
    vae.save_pretrained(staging / "vae", safe_serialization=True)
    torch.nn.Module.to(vae, torch.float32)
    summary_file = staging / "training_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary.pop("evaluation", None)  # it scored the old decoder
    summary["decoder_refinement"] = record
    atomic_write_json(summary_file, summary)
    staging.rename(output_dir)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir, output_dir = Path(args.model_dir), Path(args.output_dir)
    if not (model_dir / "model_index.json").is_file() or not (model_dir / "training_summary.json").is_file():
        raise UserError(f"--model_dir {model_dir} is not a world-model folder (model_index.json and "
                        "training_summary.json needed); train one with scripts/train_world_model.py")
    if output_dir.exists():
        raise UserError(f"--output_dir {output_dir} exists; choose a new folder (the refined model is a copy)")
    output_dir.parent.mkdir(parents=True, exist_ok=True)  # the state is saved beside the folder
    state_file = Path(args.state_file) if args.state_file else output_dir.parent / f"{output_dir.name}.state.pt"
    torch.manual_seed(args.seed)
    pipe = world_model.load_world_pipeline(model_dir, dtype=torch.float32, device=args.device)
    check_args = reconstruction_check_args(model_dir, args.check_videos)
    before = vae_check(pipe.vae, check_args) if args.check_videos else None
    stats = refine(pipe, args, state_file)
    if args.check_videos:
        stats["reconstructions_before"], stats["reconstructions_after"] = before, vae_check(pipe.vae, check_args)
    record = {"from": str(model_dir), "settings": {k: v for k, v in vars(args).items()
                                                   if k not in ("model_dir", "output_dir", "verbose")}, **stats}
    save_refined(model_dir, output_dir, pipe.vae, record)
    state_file.unlink(missing_ok=True)
    logger.info("wrote %s (%.0f s of training); score it with scripts/train_world_model.py --output_dir %s "
                "--evaluate_only --eval_guidance 1", output_dir, stats["train_seconds"], output_dir)
    return record


if __name__ == "__main__":
    main()
