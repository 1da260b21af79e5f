"""Where does the world model lose what a caption asks for? The pixel classifier's accuracy on ground-truth
world videos after each stage of the pipeline, from the videos themselves to a full generation.

    python -m receler.world.probe [--model_path models/world-cogvideox] [--videos 48] [--output probe.json]

Stages (each on the same single-shape videos and captions):

- ``truth``: the videos as the world draws them (the classifier's own ceiling);
- ``vae``: encoded and decoded by the model's VAE (the ceiling of anything the transformer makes);
- ``vae + noise s``: decoded from the latents plus Gaussian noise of std ``s`` (the latents have unit variance):
  how much the decoder tolerates small errors in what the transformer hands it;
- ``predicted from t``: the transformer's one-step estimate of the clean latents from the true latents noised to
  timestep ``t`` (the last step of a generation decodes exactly such an estimate, from t=32 of the 30-step
  schedule): compared with ``vae + noise`` at a similar level, does the transformer's own estimate keep more of
  the shape than the noisy latents it was handed?
- ``denoised from t``: the latents noised to timestep ``t`` of the inference schedule and denoised by the
  transformer with their true caption (SDEdit): can the transformer keep what it is given, from that noise on?
- ``generated``: rendered from pure noise with the caption, as the benchmark renders.

Each stage also reads the shape frame by frame, the first frame apart from the later ones: the VAE encodes the
first frame alone and every later four frames into one latent frame, so a stage that keeps the first frame's
shape and loses the later ones' loses it to that compression.

A stage that loses an attribute the earlier ones keep is where to work: for the bundled model, shape survives
the VAE but not denoising from low noise levels.

Two more readings: how far apart the shapes lie in the latents (:func:`shape_distances`), and how far the
transformer's estimate moves when the caption names another shape (:func:`shape_word_influence`), at each noise
level: a model that draws the shape it is told moves it by about the distance between the shapes. And how far
the latents move when the shape moves by a pixel or two (:func:`shift_distances`): where that is as large as the
distance between shapes, misplacing a shape by that much costs as much as drawing the wrong one. And whether it
redraws a video as the shape its caption names, from the video's own noisy latents (:func:`shape_redraw`), at
each noise level and for each named shape, asked both for the next shape and for the one after.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, cli_entry, setup_logging
from ..io_utils import atomic_write_json
from ..media import frame_grid, save_png
from . import model as world
from .classify import classify_video
from .scenes import COLORS, SHAPES, check_shape_size, make_dataset, render_video, scene_from_caption

logger = logging.getLogger(__name__)

ATTRIBUTES = ("color", "shape", "direction")


def accuracies(videos, captions) -> dict:
    """Colour, shape and direction accuracy of single-shape ``videos`` against their ``captions``, and the shape
    read frame by frame: ``shape_first_frame`` (frame 0, which the causal VAE encodes into a latent frame of its
    own) and ``shape_later_frames`` (the rest, four frames to a latent frame): the share of such frames whose
    shape is the caption's. ``shape_per_shape``: the shape accuracy of each prompted shape (a stage that turns
    squares into circles keeps every circle and loses every square, which the mean alone would not say)."""
    scores = world.score_videos(videos, captions)
    first, later = [], []
    for video, caption in zip(videos, captions):
        truth = scene_from_caption(caption).shapes[0].shape
        hits = [label.shape == truth for label in classify_video(np.asarray(video)).per_frame]
        first.append(hits[0])
        later.extend(hits[1:])
    return {**{a: scores[f"{a}_accuracy"] for a in ATTRIBUTES},
            "shape_first_frame": float(np.mean(first)), "shape_later_frames": float(np.mean(later)) if later else None,
            "shape_per_shape": {shape: scores["per_shape"][shape] for shape in SHAPES if shape in scores["per_shape"]}}


def encode(pipe, videos: np.ndarray) -> torch.Tensor:
    """Scaled posterior means in the transformer's layout ``[B, F_latent, C, h, w]``, as the model was trained."""
    return world.encode_videos(pipe.vae, videos) * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> list[np.ndarray]:
    """Latents ``[B, F_latent, C, h, w]`` -> uint8 videos ``[F, H, W, 3]`` (the pipeline's own decoding)."""
    frames = pipe.vae.decode((latents / pipe.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)).sample
    frames = ((frames.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    return [world.to_uint8_video(v) for v in frames]


def transformer_velocity(pipe, latents: torch.Tensor, embeds: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The transformer's velocity for ``latents [B, F_latent, C, h, w]``, with the rotary position embedding the
    pipeline would pass for latents of this size (models with ``use_rotary_positional_embeddings``)."""
    rotary = world.rotary_embedding(pipe, latents.shape, latents.device)
    return pipe.transformer(hidden_states=latents, encoder_hidden_states=embeds, timestep=timesteps,
                            image_rotary_emb=rotary, return_dict=False)[0]


@torch.no_grad()
def denoise_from(pipe, latents: torch.Tensor, embeds: torch.Tensor, start: int, noise: torch.Tensor,
                 num_inference_steps: int = world.NUM_INFERENCE_STEPS) -> torch.Tensor:
    """Noise ``latents`` to the ``start``-th timestep of the inference schedule and denoise them with the
    transformer (guidance 1, the pipeline's own DDIM steps). ``start=0`` is a full generation from ``noise``
    (the schedule's first timestep has no signal left)."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps)
    steps = scheduler.timesteps[start:]
    x = scheduler.add_noise(latents, noise, steps[:1].repeat(len(latents)))
    for t in steps:
        velocity = transformer_velocity(pipe, x, embeds, t.repeat(len(x)))
        x = scheduler.step(velocity, t, x, return_dict=False)[0]
    return x


@torch.no_grad()
def predict_clean(pipe, latents: torch.Tensor, embeds: torch.Tensor, timestep: int, noise: torch.Tensor):
    """The transformer's estimate of ``latents`` from one look at them noised to ``timestep`` (guidance 1): the
    v-prediction turned into clean latents, as the scheduler does on every step."""
    scheduler = pipe.scheduler
    t = torch.full((len(latents),), timestep)
    noisy = scheduler.add_noise(latents, noise, t)
    return world.clean_from_velocity(scheduler, noisy, transformer_velocity(pipe, noisy, embeds, t), t)


def embed(pipe, captions: list[str]) -> torch.Tensor:
    return world.embed_prompts(pipe, captions, pipe.transformer.config.max_text_seq_length)


def ground_truth(pipe, num_videos: int, seed: int, world_args: dict | None = None):
    """The probe's single-shape world videos: ``(captions, uint8 videos, scaled latents, shape positions)``, the
    positions expanded to the latents' shape. ``world_args``: the world's geometry as the model was trained on it
    (``position_grid``, ``shape_size`` of :func:`~receler.world.scenes.render_video`; see
    :func:`~receler.world.model.trained_world_args`)."""
    pairs = make_dataset(num_videos, seed=seed, two_shape_prob=0.0, **(world_args or {}))
    videos = np.stack([video for _, video in pairs])
    latents = encode(pipe, videos)
    return [caption for caption, _ in pairs], videos, latents, world.shape_positions(latents).expand_as(latents)


def rms_at(difference: torch.Tensor, where: torch.Tensor) -> float:
    """RMS of ``difference`` at the positions ``where`` (in latent stds for the pipeline's scaled latents)."""
    return float(difference[where].pow(2).mean().sqrt())


def probe(pipe, num_videos: int = 48, seed: int = 777, noise_levels=(0.05, 0.1, 0.2),
          starts=(27, 24, 18, 12), predict_at=(29, 27), num_inference_steps: int = world.NUM_INFERENCE_STEPS,
          pictures: dict | None = None, world_args: dict | None = None) -> list[dict]:
    """One ``{"stage", "color", "shape", "direction"}`` per stage (see the module's docstring), with
    ``latent_error`` for the stages that decode changed latents: their RMS distance from the true latents at the
    shape's positions, in latent standard deviations.

    ``starts`` and ``predict_at`` are indices into the ``num_inference_steps`` schedule.
    ``pictures``, when given, is filled with each stage's videos (stage name -> list of uint8 ``[F, H, W, 3]``).
    """
    captions, videos, latents, where = ground_truth(pipe, num_videos, seed, world_args)
    embeds = embed(pipe, captions)
    generator = torch.Generator().manual_seed(seed)
    pictures = {} if pictures is None else pictures

    def stage(name: str, decoded: list, changed: torch.Tensor | None = None) -> dict:
        pictures[name] = decoded
        row = {"stage": name, **accuracies(decoded, captions)}
        if changed is not None:  # how far the latents this stage decoded are from the true ones, where the shape is
            row["latent_error"] = rms_at(changed - latents, where)
        return row

    rows = [stage("truth", list(videos)), stage("vae", decode(pipe, latents))]
    for level in noise_levels:
        noisy = latents + level * torch.randn(latents.shape, generator=generator)
        rows.append(stage(f"vae + noise {level:g}", decode(pipe, noisy), noisy))
    noise = torch.randn(latents.shape, generator=generator)
    pipe.scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    for index in predict_at:
        predicted = predict_clean(pipe, latents, embeds, timesteps[index], noise)
        rows.append(stage(f"predicted from t={timesteps[index]}", decode(pipe, predicted), predicted))
    for start in starts:
        denoised = denoise_from(pipe, latents, embeds, start, noise, num_inference_steps)
        rows.append(stage(f"denoised from t={timesteps[start]}", decode(pipe, denoised), denoised))
        logger.info("%s", rows[-1])
    generated = denoise_from(pipe, latents, embeds, 0, noise, num_inference_steps)
    rows.append(stage("generated", decode(pipe, generated)))
    return rows


@torch.no_grad()
def shape_distances(pipe, num_videos: int = 48, seed: int = 777, world_args: dict | None = None) -> dict[str, float]:
    """How far apart the shapes are in the latents the transformer learns: the same single-shape scenes (colour,
    motion, path, background) drawn as each shape, encoded, and the RMS difference of each pair's latents at the
    positions the shape covers, in units of the latents' spread (the pipeline's scaled latents have unit std).

    A transformer error of that size turns one shape into the other, so small distances make shape hard to learn.
    For scale, ``"circle / another colour"``: the same circles drawn in the palette's next colour, which a model
    learns readily; the squared ratio of the two says how much less a shape counts in the latent loss.
    """
    world_args = world_args or {}
    pairs = make_dataset(num_videos, seed=seed, two_shape_prob=0.0, **world_args)
    scenes = [scene_from_caption(caption) for caption, _ in pairs]
    # Each shape, and for scale the first shape in the palette's next colour.
    variants = {shape: (lambda spec, shape=shape: replace(spec, shape=shape)) for shape in SHAPES}
    variants["another colour"] = lambda spec: replace(spec, shape=SHAPES[0], color=next_color(spec.color))
    latents = {name: encode_varied(pipe, scenes, vary, world_args) for name, vary in variants.items()}
    where = world.shape_positions(latents[SHAPES[0]]).expand_as(latents[SHAPES[0]])
    pairs = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1:]] + [(SHAPES[0], "another colour")]
    return {f"{a} / {b}": rms_at(latents[a] - latents[b], where) for a, b in pairs}


def encode_varied(pipe, scenes, vary, world_args: dict) -> torch.Tensor:
    """Latents of single-shape ``scenes`` drawn with their shape changed by ``vary`` (a ``ShapeSpec`` -> ``ShapeSpec``
    function). Scene ``i`` is drawn with seed ``i``, so every variant of a scene follows the same path."""
    return encode(pipe, np.stack([render_video(replace(scene, shapes=[vary(scene.shapes[0])]), seed=index,
                                               **world_args) for index, scene in enumerate(scenes)]))


def next_color(color: str) -> str:
    """The colour after ``color`` in the world's palette (wrapping round)."""
    names = list(COLORS)
    return names[(names.index(color) + 1) % len(names)]


def shift_video(video: np.ndarray, pixels: int) -> np.ndarray:
    """``video`` with everything drawn moved ``pixels`` to the side that has room for it (right if the last columns
    show only the background in every frame, else left): an exact translation of the scene, as the world would
    draw it there, because the background is uniform."""
    background = video[:1, :1, :1]  # a corner pixel: shapes keep a margin from the border

    def only_background(columns: np.ndarray) -> bool:
        return bool((columns == background).all())

    if only_background(video[:, :, -pixels:]):
        return np.roll(video, pixels, axis=2)
    if only_background(video[:, :, :pixels]):
        return np.roll(video, -pixels, axis=2)
    raise ValueError(f"no room to move the scene by {pixels} px")


def shift_distances(pipe, num_videos: int = 48, seed: int = 777, shifts=(1, 2, 4),
                    world_args: dict | None = None) -> dict[int, float]:
    """How far the latents move when the whole scene moves ``d`` pixels sideways: the RMS difference at the
    shape's positions, in latent stds, for each ``d`` in ``shifts``.

    Compare it with :func:`shape_distances`: where moving a shape by a pixel changes the latents as much as turning
    it into another shape, an error of a pixel in where the transformer puts a shape is as costly as drawing the
    wrong one.
    """
    _, videos, latents, where = ground_truth(pipe, num_videos, seed, world_args)
    return {d: rms_at(encode(pipe, np.stack([shift_video(v, d) for v in videos])) - latents, where) for d in shifts}


def swap_shape(caption: str) -> str:
    """``caption`` naming the next shape instead of its own (circle -> square -> triangle -> circle)."""
    return " ".join(next_shape(word) if word in SHAPES else word for word in caption.split())


@torch.no_grad()
def shape_word_influence(pipe, num_videos: int = 48, seed: int = 777, starts=(29, 27, 24, 18, 12, 6),
                         num_inference_steps: int = world.NUM_INFERENCE_STEPS,
                         world_args: dict | None = None) -> dict[int, float]:
    """Does the transformer draw the shape it is told to? For each timestep (indices into the schedule), the RMS
    difference, at the shape's positions and in latent stds, between its one-step clean estimates of the same
    noised latents captioned with their own shape and with another one.

    Compare it with :func:`shape_distances`: a model that draws the named shape moves its estimate by about the
    distance between the shapes; one that reads the shape only from the noisy latents barely moves it.
    """
    captions, _, latents, where = ground_truth(pipe, num_videos, seed, world_args)
    own, other = embed(pipe, captions), embed(pipe, [swap_shape(c) for c in captions])
    influence = {}
    for t, noise in noise_levels(pipe, starts, latents.shape, seed + 1, num_inference_steps):
        moved = predict_clean(pipe, latents, own, t, noise) - predict_clean(pipe, latents, other, t, noise)
        influence[t] = rms_at(moved, where)
    return influence


def noise_levels(pipe, starts, shape, seed: int, num_inference_steps: int = world.NUM_INFERENCE_STEPS):
    """``(timestep, noise)`` for each index in ``starts`` of the inference schedule, with a fresh Gaussian draw of
    ``shape`` for each, from one generator seeded with ``seed``."""
    pipe.scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    for index in starts:
        yield int(pipe.scheduler.timesteps[index]), torch.randn(shape, generator=generator)


def next_shape(shape: str, ahead: int = 1) -> str:
    """The shape ``ahead`` places after ``shape`` in circle -> square -> triangle -> circle (1: as :func:`swap_shape`
    names it; 2: the shape after next)."""
    return SHAPES[(SHAPES.index(shape) + ahead) % len(SHAPES)]


@torch.no_grad()
def shape_redraw(pipe, num_videos: int = 48, seed: int = 777, starts=(29, 27, 24, 18, 12),
                 num_inference_steps: int = world.NUM_INFERENCE_STEPS,
                 world_args: dict | None = None, ahead: int = 1) -> dict[int, dict]:
    """Can the transformer redraw a video as the shape its caption names (what ``--shape_swap_weight`` trains)?

    Each scene is drawn as its own shape and as the shape ``ahead`` places after it (:func:`next_shape`; same
    colour, path and background). For each timestep (indices into the schedule) the own video's latents are noised
    to it and the transformer's one-step clean estimate is taken under the caption naming that other shape.
    Returns, per timestep: ``error``, the RMS distance
    of that estimate from the other shape's latents where either shape is (latent stds); ``start``, the same
    distance for the own latents (what copying the input would score); ``redrawn``, the share of decoded
    estimates the classifier reads as the named shape, and ``redrawn_per_shape``, split by the named shape.

    The logged swap term averages over all timesteps and the noisiest dominate it; this reads each one apart.
    """
    world_args = world_args or {}
    scenes = [scene_from_caption(caption) for caption, _ in
              make_dataset(num_videos, seed=seed, two_shape_prob=0.0, **world_args)]
    def renamed(spec):
        return replace(spec, shape=next_shape(spec.shape, ahead))

    own = encode_varied(pipe, scenes, lambda spec: spec, world_args)
    other = encode_varied(pipe, scenes, renamed, world_args)
    where = (world.shape_positions(own) | world.shape_positions(other)).expand_as(own)
    captions = [replace(scene, shapes=[renamed(scene.shapes[0])]).caption() for scene in scenes]
    embeds = embed(pipe, captions)
    start = rms_at(own - other, where)
    readings = {}
    for t, noise in noise_levels(pipe, starts, own.shape, seed + 2, num_inference_steps):
        estimate = predict_clean(pipe, own, embeds, t, noise)
        scores = world.score_videos(decode(pipe, estimate), captions)
        readings[t] = {"error": rms_at(estimate - other, where), "start": start, "redrawn": scores["shape_accuracy"],
                       "redrawn_per_shape": {s: scores["per_shape"][s] for s in SHAPES if s in scores["per_shape"]}}
    return readings


def table(rows: list[dict]) -> str:
    lines = ["| stage | colour | shape | direction | shape, frame by frame: first / later | shape of "
             + " / ".join(SHAPES) + " | latent error at the shape |",
             "|---|---|---|---|---|---|---|"]

    def percent(value):
        return "-" if value is None else f"{100 * value:.0f}%"

    for r in rows:
        error = f"{r['latent_error']:.2f}" if "latent_error" in r else "-"
        frames = f"{percent(r['shape_first_frame'])} / {percent(r['shape_later_frames'])}"
        by_shape = " / ".join(percent(r["shape_per_shape"].get(shape)) for shape in SHAPES)
        lines.append(f"| {r['stage']} | " + " | ".join(percent(r[a]) for a in ATTRIBUTES)
                     + f" | {frames} | {by_shape} | {error} |")
    return "\n".join(lines)


def picture(pictures: dict, count: int = 12):
    """One image: a row per stage, the middle frame of each of the first ``count`` videos."""
    rows = [(name, np.stack([video[len(video) // 2] for video in videos[:count]])) for name, videos in pictures.items()]
    return frame_grid(rows, max_frames=count)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.probe", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", default=str(world.WORLD_MODEL_DIR), help="the world model folder")
    p.add_argument("--videos", type=int, default=48, help="single-shape ground-truth videos to probe with")
    p.add_argument("--seed", type=int, default=777, help="seed of the videos and of the noise")
    p.add_argument("--starts", default="27,24,18,12",
                   help="comma-separated indices into the 30-step schedule to denoise from (27 is the fourth-last "
                        "step, a low noise level; 0 would be pure noise)")
    p.add_argument("--predict_at", default="29,27",
                   help="comma-separated indices into the 30-step schedule at which to decode the transformer's "
                        "one-step estimate of the clean latents (29 is the last step, the one a generation decodes)")
    p.add_argument("--position_grid", type=int, default=None,
                   help="start the probe's shapes on a grid of this many pixels (default: the grid the model was "
                        "trained on, from its training_summary.json; 1, any pixel, if it names none)")
    p.add_argument("--shape_size", type=int, default=None,
                   help="side of the probe's shapes in pixels (default: the size the model was trained on, from its "
                        "training_summary.json; the world's 19 px if it names none)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--output", default=None, help="also write the rows to this JSON file")
    p.add_argument("--picture", default=None,
                   help="also save a PNG with a row per stage: the middle frame of the first 12 videos, so you can "
                        "see what each stage draws")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.videos < 1:
        p.error(f"--videos must be at least 1, got {args.videos}")
    if args.position_grid is not None and args.position_grid < 1:
        p.error(f"--position_grid must be at least 1 pixel, got {args.position_grid}")
    if args.shape_size is not None:
        try:
            check_shape_size(args.shape_size, world.WIDTH)
        except ValueError as error:
            p.error(f"--{error}")
    for flag in ("starts", "predict_at"):
        text = getattr(args, flag)
        try:
            setattr(args, flag, [int(s) for s in text.split(",") if s.strip()])
        except ValueError:
            p.error(f"--{flag} {text!r}: give step indices separated by commas, e.g. 27,24,18")
        if any(not 0 < s < world.NUM_INFERENCE_STEPS for s in getattr(args, flag)):
            p.error(f"--{flag}: each index must be between 1 and {world.NUM_INFERENCE_STEPS - 1}")
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (Path(args.model_path) / "model_index.json").is_file():
        raise UserError(f"--model_path {args.model_path} is not a world-model folder (no model_index.json)")
    pipe = world.load_world_pipeline(args.model_path)
    pipe.set_progress_bar_config(disable=True)
    world_args = world.trained_world_args(args.model_path)
    world_args.update({key: getattr(args, key) for key in world_args if getattr(args, key) is not None})
    logger.info("probing the world with %s", world_args)
    pictures = {}
    rows = probe(pipe, args.videos, args.seed, starts=args.starts, predict_at=args.predict_at, pictures=pictures,
                 world_args=world_args)
    print(table(rows))
    distances = shape_distances(pipe, args.videos, args.seed, world_args)
    print("\nlatent distances between shapes, and to another colour (RMS at the shape's positions, in latent stds): "
          + ", ".join(f"{pair} {value:.2f}" for pair, value in distances.items()))
    shifts = shift_distances(pipe, args.videos, args.seed, world_args=world_args)
    print("latent change when the scene moves sideways (RMS at the shape's positions): "
          + ", ".join(f"{d} px {value:.2f}" for d, value in shifts.items()))
    influence = shape_word_influence(pipe, args.videos, args.seed, world_args=world_args)
    print("shape word's influence on the one-step estimate (RMS change at the shape's positions when the caption "
          "names another shape): " + ", ".join(f"t={t} {value:.3f}" for t, value in influence.items()))
    redraws = {}
    for ahead, name in ((1, "the next shape"), (2, "the shape after next")):
        redraws[ahead] = shape_redraw(pipe, args.videos, args.seed, world_args=world_args, ahead=ahead)
        print(f"redrawn as {name} (one-step estimate from the video's own noisy latents under the caption naming "
              "it; distance from that shape's latents, of the distance copying the input leaves; share read as the "
              "named shape, by named shape " + " / ".join(SHAPES) + "):")
        for t, r in redraws[ahead].items():
            by_shape = " / ".join(f"{100 * r['redrawn_per_shape'][s]:.0f}%" if s in r["redrawn_per_shape"] else "-"
                                  for s in SHAPES)
            print(f"  t={t}: {r['error']:.3f} of {r['start']:.3f}, redrawn {100 * r['redrawn']:.0f}% ({by_shape})")
    if args.picture:
        save_png(picture(pictures), args.picture)
    if args.output:
        atomic_write_json(args.output, {"model_path": str(args.model_path), "videos": args.videos,
                                        "world": world_args, "rows": rows,
                                        "shape_distances": distances, "shift_distances": shifts,
                                        "shape_word_influence": influence, "shape_redraw": redraws[1],
                                        "shape_redraw_after_next": redraws[2]})
    return rows


if __name__ == "__main__":
    main()
