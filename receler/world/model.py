"""The bundled world model: a tiny CogVideoX text-to-video pipeline trained on the shapes world.

``models/world-cogvideox`` is written by ``scripts/train_world_model.py`` and committed, so the
erasure benchmark can load a model that really knows its concepts (colours, shapes, directions)
and measure what erasing one of them does, on a CPU. This module loads it, renders prompts with
fixed per-prompt seeds, and scores the videos with the pixel classifier.

The render settings below are the ones the model was validated with; other settings work but the
accuracy recorded in the folder's ``training_summary.json`` was measured with these.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from receler.world.classify import classify_video
from receler.world.scenes import scene_from_caption

logger = logging.getLogger(__name__)

# The repository's copy of the trained model (receler/world/model.py -> repo root).
WORLD_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "world-cogvideox"

# Settings the bundled model was trained for and validated with.
NUM_FRAMES = 9  # 3 latent frames (the VAE compresses time by 4)
HEIGHT = 64
WIDTH = 64
TEXT_LENGTH = 24  # the transformer's max_text_seq_length; prompts are padded to it
NUM_INFERENCE_STEPS = 30
GUIDANCE_SCALE = 1.0  # no classifier-free guidance: one conditional pass per step
# Prompts rendered per pipeline call: batching makes CPU rendering several times faster.
RENDER_BATCH_SIZE = 24


def load_world_pipeline(path=None, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load the world model (default: the bundled folder) offline, computing in ``dtype``.

    The folder stores float16 weights to stay small; they are upcast on load because half
    precision matrix products are slow (and less exact) on CPUs.
    """
    from diffusers import CogVideoXPipeline

    folder = Path(path) if path is not None else WORLD_MODEL_DIR
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no world model at {folder} (model_index.json missing); "
            "train one with `python scripts/train_world_model.py --output_dir {folder}`"
        )
    pipe = CogVideoXPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trained_world_args(path=None) -> dict:
    """The world geometry a model was trained on, from its ``training_summary.json``, as keyword arguments of
    :func:`~receler.world.scenes.render_video`: ``position_grid`` (1, any pixel, if the summary names none) and
    ``shape_size`` (``None``, the world's default, likewise)."""
    summary = (Path(path) if path is not None else WORLD_MODEL_DIR) / "training_summary.json"
    trained = json.loads(summary.read_text()).get("args", {}) if summary.is_file() else {}
    return {"position_grid": int(trained.get("position_grid") or 1), "shape_size": trained.get("shape_size")}


def _prompt_and_seed(item) -> tuple[str, int]:
    """Accept ``(prompt, seed)`` pairs and the dicts of :func:`evaluation_prompts` alike."""
    if isinstance(item, dict):
        return item["prompt"], int(item["seed"])
    prompt, seed = item
    return prompt, int(seed)


def to_uint8_video(frames: np.ndarray) -> np.ndarray:
    """Pipeline output (float RGB in [0, 1], ``[F, H, W, 3]``) -> ``uint8``, as the classifier expects."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_model_video(videos: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, F, H, W, 3]`` -> float ``[B, 3, F, H, W]`` in [-1, 1], the VAE's input layout."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def shape_positions(latents: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Boolean ``[B, F, 1, h, w]`` for latents ``[B, F, C, h, w]``: the positions that hold a shape.

    A flat background encodes to nearly the same latent everywhere, so the frame's median latent stands for it and
    positions far from it (above ``threshold`` of the frame's largest distance; 0.3 marks ~19% of them) hold a shape.
    """
    median = latents.flatten(-2).median(dim=-1).values[..., None, None]
    distance = (latents - median).norm(dim=2, keepdim=True)
    farthest = distance.flatten(-2).amax(dim=-1)[..., None, None].clamp_min(1e-6)
    return distance / farthest > threshold


def clean_from_velocity(scheduler, noisy: torch.Tensor, velocity: torch.Tensor, timesteps: torch.Tensor):
    """The clean latents a v-prediction implies, per sample: with ``x_t = alpha x_0 + sigma noise`` and
    ``v = alpha noise - sigma x_0``, ``x_0 = alpha x_t - sigma v`` (what the scheduler computes on every step).
    ``timesteps`` holds one timestep per sample of ``noisy`` (any layout with the batch first)."""
    signal = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    alpha, sigma = (value.to(noisy.dtype).view(shape) for value in (signal.sqrt(), (1 - signal).sqrt()))
    return alpha * noisy - sigma * velocity


def rotary_embedding(pipe, latent_shape, device):
    """The rotary position embedding the pipeline passes its transformer for latents of ``latent_shape``
    ``[B, F_latent, C, h, w]`` (the pipeline's own computation, so training, probing and sampling agree), or None
    for a transformer with sincos positions."""
    if not pipe.transformer.config.use_rotary_positional_embeddings:
        return None
    scale = pipe.vae_scale_factor_spatial
    return pipe._prepare_rotary_positional_embeddings(latent_shape[-2] * scale, latent_shape[-1] * scale,
                                                      latent_shape[1], device)


@torch.no_grad()
def encode_videos(vae, videos: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Posterior means, in the transformer's layout ``[B, F_latent, C, h, w]`` (unscaled), on the CPU whatever
    device the VAE is on."""
    latents = []
    for start in range(0, len(videos), batch_size):
        mean = vae.encode(to_model_video(videos[start : start + batch_size]).to(vae.device)).latent_dist.mode()
        latents.append(mean.permute(0, 2, 1, 3, 4).cpu())
    return torch.cat(latents)


@torch.no_grad()
def embed_prompts(pipe, prompts: list[str], text_len: int, batch_size: int = 256) -> torch.Tensor:
    """The pipeline's own prompt embeddings (no classifier-free guidance), ``text_len`` tokens each, on the CPU
    whatever device the text encoder is on."""
    embeds = []
    for start in range(0, len(prompts), batch_size):
        prompt_embeds, _ = pipe.encode_prompt(
            prompts[start : start + batch_size],
            do_classifier_free_guidance=False,
            max_sequence_length=text_len,
            device=pipe.text_encoder.device,
        )
        embeds.append(prompt_embeds.cpu())
    return torch.cat(embeds)


@torch.no_grad()
def render_world(
    pipe,
    prompts_with_seeds,
    guidance_scale: float = GUIDANCE_SCALE,
    num_inference_steps: int = NUM_INFERENCE_STEPS,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    batch_size: int = RENDER_BATCH_SIZE,
    negative_prompt: str | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Render each ``(prompt, seed)`` (or evaluation-prompt dict) as ``uint8 [F, H, W, 3]``.

    Each prompt's starting noise comes from its own CPU generator seeded with its seed, so a
    video does not depend on the batch it was rendered in (up to float rounding) nor on the
    device. The prompt length is read from the transformer's config (sincos models need it).
    """
    items = [_prompt_and_seed(item) for item in prompts_with_seeds]
    text_length = pipe.transformer.config.max_text_seq_length
    videos = []
    batches = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="render", unit="batch")
    for start in batches:
        chunk = items[start : start + batch_size]
        prompts = [prompt for prompt, _ in chunk]
        generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in chunk]
        output = pipe(
            prompt=prompts,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * len(chunk),
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            num_frames=num_frames,
            height=height,
            width=width,
            max_sequence_length=text_length,
            generator=generators,
            output_type="np",
        ).frames
        videos.extend(to_uint8_video(np.asarray(frames)) for frames in output)
    logger.debug("rendered %d videos at guidance %.1f, %d steps", len(videos), guidance_scale, num_inference_steps)
    return videos


def _prompt_text(item) -> str:
    return item["prompt"] if isinstance(item, dict) else item if isinstance(item, str) else item[0]


def check_prompts(quick: bool = False, seed_offset: int = 0) -> list[dict]:
    """The prompts the world model is validated on, each ``{"prompt", "seed"}``: every single-shape caption
    on both backgrounds (144; ``quick``: 29 of them covering every colour, shape, direction and background)
    and 24 two-shape scenes (``quick``: 6). ``seed_offset`` shifts every seed (the same prompts rendered from
    other noise: how much of a score is the seeds')."""
    from receler.world.scenes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, Scene, ShapeSpec, sample_scene

    singles = [Scene((ShapeSpec(c, s, d),), b).caption()
               for b in BACKGROUNDS for c in COLORS for s in SHAPES for d in DIRECTIONS]
    rng = np.random.default_rng(2024)
    pairs = [sample_scene(rng, two_shape_prob=1.0).caption() for _ in range(24)]
    if quick:  # a stride coprime with the 4 directions and 3 shapes visits every combination of them
        singles, pairs = singles[::5], pairs[:6]
    return [{"prompt": prompt, "seed": 20_000 + seed_offset + i} for i, prompt in enumerate(singles + pairs)]


def score_videos(videos, prompts) -> dict:
    """How well videos show their prompts, by the pixel classifier.

    ``prompts`` are captions, ``(prompt, seed)`` pairs or dicts with a ``prompt``. Single-shape videos
    count for ``color_accuracy``, ``shape_accuracy``, ``direction_accuracy`` and ``background_accuracy``
    (the classifier's majority colour / shape, the largest blob's direction, the border's background);
    ``per_color`` splits the colour accuracy by prompted colour and ``per_shape`` the shape accuracy by
    prompted shape; ``shape_readings`` counts the shapes the classifier read in single-shape videos (a model
    that draws one blob everywhere scores a third on shape, all of it on the shape the blob reads as, and
    these two show it); ``fill_ratios`` lists each single-shape video's fill ratio by prompted shape (see
    :attr:`~receler.world.classify.VideoLabel.fill_ratio`: how near a missed shape came to being read right).
    Each shape of a two-shape video counts for ``two_shape_accuracy`` when an object of its colour is shown with
    its shape and direction. ``labels`` holds one ``(color, shape)`` reading per video.
    """
    from receler.world.classify import describe_object, video_shows_color

    videos, prompts = list(videos), list(prompts)
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos for {len(prompts)} prompts")
    if not videos:
        raise ValueError("no videos to score")
    hits = {"color": [], "shape": [], "direction": [], "background": []}
    per_color, per_shape, shape_readings, fill_ratios, two_shape, labels = {}, {}, {}, {}, [], []
    for video, prompt in zip(videos, prompts):
        scene = scene_from_caption(_prompt_text(prompt))
        label = classify_video(video)
        labels.append((label.color, label.shape))
        if len(scene.shapes) == 2:
            for spec in scene.shapes:
                obj = describe_object(video, spec.color)
                two_shape.append(video_shows_color(video, spec.color) and obj.shape == spec.shape
                                 and obj.direction == spec.direction)
            continue
        wanted = scene.shapes[0]
        for attribute in ("color", "shape", "direction"):
            hits[attribute].append(getattr(label, attribute) == getattr(wanted, attribute))
        hits["background"].append(label.background == scene.background)
        per_color.setdefault(wanted.color, []).append(label.color == wanted.color)
        per_shape.setdefault(wanted.shape, []).append(label.shape == wanted.shape)
        read = label.shape or "none"  # None: no shape found
        if label.fill_ratio is not None:  # read from the same frames as the shape, not analysed again
            fill_ratios.setdefault(wanted.shape, []).append(label.fill_ratio)
        shape_readings[read] = shape_readings.get(read, 0) + 1

    def rate(values):
        return sum(values) / len(values) if values else None

    return {
        **{f"{attribute}_accuracy": rate(values) for attribute, values in hits.items()},
        "per_color": {color: rate(values) for color, values in per_color.items()},
        "per_shape": {shape: rate(values) for shape, values in per_shape.items()},
        "shape_readings": shape_readings,
        "fill_ratios": fill_ratios,
        "two_shape_accuracy": rate(two_shape),
        "labels": labels,
    }


def color_accuracy(videos, prompts) -> float:
    """Fraction of videos whose majority colour (pixel classifier) is the prompt's colour."""
    return score_videos(videos, prompts)["color_accuracy"]
