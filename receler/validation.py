"""Validation renders during training (``--validation_prompts FILE --validation_every N``).

Every N updates (and after the last one) each validation prompt is rendered twice with its fixed seed, on
the model being trained: clean (erasers off) and erased. The clean renders never change, so they are
rendered once. ``<output_dir>/validation/step_N/`` receives what the inference scripts write for a prompt
(``{i:03d}_{slug}_clean.mp4`` / ``_erased.mp4`` / ``_compare.mp4`` side by side / ``_grid.png``, and
``prompts.json``), so the evaluation tools and the report read it as they read any rendered folder. The
tracker gets each prompt's grid and the mean PSNR between the clean and erased renders (how far the erasers
have moved the model). On the world model (every validation prompt is one of its captions) the pixel
classifier scores both sides: the share of the target's prompts that still show it and the accuracy on the
other prompts, in ``scores.json`` and the tracker: the curve that shows erasing progress.

Renders run the model's own diffusers pipeline from the prompts' precomputed embeddings (the text encoder
is gone by then) at guidance 1, one conditional pass per step as the training trajectory: compare the two
sides, not their quality with the model's usual guidance. They need the VAE, which training alone never
loads: it is loaded only when validation is asked for.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .erasers.utils import erasers_disabled
from .io_utils import atomic_write_json
from .media import frame_grid, save_png, side_by_side, to_uint8_frames, write_video

logger = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
SCORES_NAME = "scores.json"


def read_validation_prompts(path, seed: int) -> list:
    """``[(prompt, seed)]`` of a validation prompt file (a row's ``seed`` column overrides ``seed``)."""
    from .prompts import load_prompts

    return [(row.prompt, seed if row.seed is None else row.seed) for row in load_prompts(path).rows]


def video_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 videos; identical videos count as 100 dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else min(100.0, 10.0 * math.log10(255.0**2 / mse))


# ------------------------------------------------------------------------------------------ world model


def world_target(prompts: list, target_concept: str):
    """The world benchmark's target when every prompt is a world caption and the concept one of its
    attributes (``red``, ``triangle``, ``left``, ``red triangle``); else None."""
    from .world.scenes import scene_from_caption
    from .world.targets import parse_target

    try:
        for prompt in prompts:
            scene_from_caption(prompt)
        return parse_target(target_concept)
    except ValueError:
        return None


def world_scores(videos: list, prompts: list, target) -> dict:
    """The world classifier's reading of one side: ``target_shown`` over the prompts that ask for the target
    (an object with all its attributes is visible), and the prompted colour / shape / direction / background
    accuracy over the other prompts (``other_*``)."""
    from .world.measure import read_video, shows_target
    from .world.model import score_videos
    from .world.scenes import scene_from_caption

    asks = [any(all(getattr(spec, a) == v for a, v in target.fixed) for spec in scene_from_caption(p).shapes)
            for p in prompts]
    with_target = [v for v, a in zip(videos, asks) if a]
    others = [(v, p) for v, p, a in zip(videos, prompts, asks) if not a]
    out = {"target_prompts": len(with_target), "other_prompts": len(others), "target_shown": None}
    if with_target:
        out["target_shown"] = float(np.mean([shows_target(read_video(v), target) for v in with_target]))
    if others:
        scores = score_videos([v for v, _ in others], [p for _, p in others])
        for key in ("color_accuracy", "shape_accuracy", "direction_accuracy", "background_accuracy"):
            out[f"other_{key}"] = scores[key]
    return out


# --------------------------------------------------------------------------------------------- renders


class Validator:
    """Renders the validation prompts on the trainer's pipeline and writes ``validation/step_N``.

    ``conds``: each prompt's conditioning (``{kwarg: tensor [1, ...]}``, encoded with the training prompts);
    ``rows``: ``[(prompt, seed)]``. ``pipe`` must hold the VAE.
    """

    def __init__(self, family, pipe, rows: list, conds: list, resolved, num_inference_steps: int, output_dir,
                 target_concept: str, tracker=None, fps: float = 8):
        from .inference import slugify

        if getattr(pipe, "vae", None) is None:
            raise ValueError("validation renders need the pipeline's VAE (load it with with_vae=True)")
        self.family, self.pipe, self.rows, self.conds = family, pipe, list(rows), list(conds)
        self.size = (resolved.num_frames, resolved.height, resolved.width)
        self.steps, self.tracker, self.fps = num_inference_steps, tracker, fps
        self.folder = Path(output_dir) / VALIDATION_DIR
        self.stems = [f"{i:03d}_{slugify(prompt)}" for i, (prompt, _) in enumerate(self.rows)]
        self.target = world_target([p for p, _ in self.rows], target_concept)
        self._clean = None
        self._clean_scores = None
        self.last_step = None
        if self.target is not None:
            logger.info("validation prompts are world captions: the classifier scores %r at every validation",
                        self.target.name)

    @torch.no_grad()
    def render(self, erased: bool) -> list:
        """One uint8 video per prompt, erasers on or off, each from a fresh CPU generator with its seed."""
        transformer = self.pipe.transformer
        device = next(p for p in transformer.parameters()).device
        frames, height, width = self.size
        videos = []
        was_training = transformer.training
        self.pipe.set_progress_bar_config(disable=True)
        try:
            with nullcontext() if erased else erasers_disabled(transformer):
                for cond, (_, seed) in zip(self.conds, self.rows):
                    embeds = self.family.pipeline_embedding_kwargs({k: v.to(device) for k, v in cond.items()})
                    out = self.pipe(**embeds, num_inference_steps=self.steps, num_frames=frames, height=height,
                                    width=width, guidance_scale=1.0, generator=torch.Generator().manual_seed(int(seed)),
                                    output_type="np")
                    videos.append(to_uint8_frames(np.asarray(out.frames[0])))
        finally:
            transformer.train(was_training)
        return videos

    def clean(self) -> list:
        if self._clean is None:
            self._clean = self.render(erased=False)
        return self._clean

    def run(self, step: int) -> dict:
        """Render, write ``validation/step_<step>/`` and log to the tracker; returns the step's numbers."""
        clean, erased = self.clean(), self.render(erased=True)
        folder = self.folder / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        images = {}
        for stem, (prompt, _), a, b in zip(self.stems, self.rows, clean, erased):
            write_video(a, folder / f"{stem}_clean.mp4", fps=self.fps)
            write_video(b, folder / f"{stem}_erased.mp4", fps=self.fps)
            write_video(side_by_side(a, b), folder / f"{stem}_compare.mp4", fps=self.fps)
            grid = frame_grid([("clean", a), ("erased", b)])
            save_png(grid, folder / f"{stem}_grid.png")
            images[f"validation/{stem}"] = np.asarray(grid.convert("RGB"))
        atomic_write_json(folder / "prompts.json", {stem: prompt for stem, (prompt, _) in zip(self.stems, self.rows)})
        numbers = {"step": step, "psnr_clean_erased": float(np.mean([video_psnr(a, b) for a, b in zip(clean, erased)]))}
        if self.target is not None:
            prompts = [p for p, _ in self.rows]
            if self._clean_scores is None:
                self._clean_scores = world_scores(clean, prompts, self.target)
            numbers.update(target=self.target.name, clean=self._clean_scores,
                           erased=world_scores(erased, prompts, self.target))
            atomic_write_json(folder / SCORES_NAME, numbers)
        if self.tracker is not None:
            scalars = {"validation/psnr_clean_erased": numbers["psnr_clean_erased"]}
            for side in ("clean", "erased") if self.target is not None else ():
                scalars.update({f"validation/{k}_{side}": v for k, v in numbers[side].items()
                                if isinstance(v, float)})
            self.tracker.log(scalars, step)
            self.tracker.log_images(images, step)
        self.last_step = step
        shown = numbers.get("erased", {}).get("target_shown")
        logger.info("validation at update %d: %s (PSNR clean vs erased %.1f dB%s)", step, folder,
                    numbers["psnr_clean_erased"], "" if shown is None else f", target shown in {shown:.0%} erased")
        return numbers
