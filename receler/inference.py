"""Render clean and erased videos (and training-free baselines) side by side, for any model family.

The pipeline and the erasers load once. Every prompt is then rendered on that one model:

- ``clean``: erasers off (inside :class:`~receler.erasers.utils.DisableEraser`), the frozen model;
- ``erased``: erasers on;
- ``negprompt``: erasers off, the concept as negative prompt (the negative-prompt baseline);
- ``safree``: erasers off, SAFREE's filtered text embedding (:mod:`receler.baselines.safree`; the official
  variant also guides away from its keyword negative prompt).

Each pass draws from a fresh CPU ``torch.Generator().manual_seed(seed)``, so every side starts from the
same initial latents and schedulers that add noise at each step (CogVideoX's DPM) draw the same noise:
the sides differ by the erasers (or the baseline) and nothing else.

Per prompt, with prefix ``{output_dir}/{i:03d}_{slug}`` for row ``i`` of a prompt file:
``<prefix>_<side>.mp4`` for every side rendered, ``<prefix>_compare.mp4`` (clean on the left, erased, or
else the baseline, on the right; exactly twice as wide; written whenever the clean video exists) and
``<prefix>_grid.png`` (a row of frames per side). ``prompts.json`` (``{stem: prompt}``) next to the videos
is kept up to date for the evaluation. Prompt-file runs resume: rows whose outputs exist are skipped and
a row with some sides missing renders only those. Under ``accelerate launch`` or with ``--shard K/N`` each
process renders its share of the rows (:func:`shard_jobs`, :mod:`receler.sharding`).

The family-specific scripts (``test_cogvideo.py``, ``test_hunyuan.py``, ``test_wan.py``) add their own
flags to :func:`build_parser` and say which pipeline arguments each side gets.
"""

from __future__ import annotations

import argparse
import json
import math
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import check_eraser_family, load_eraser_stack, load_erasers, read_eraser_folder, resolve_eraser_path
from .devices import DTYPES, resolve_device, resolve_dtype
from .erasers.utils import DisableEraser
from .errors import UserError
from .flag_checks import check_floats, check_ints
from .io_utils import atomic_write_json, make_folder
from .media import frame_grid, read_video, save_png, side_by_side, write_video
from .prompts import load_prompts
from .sharding import ShardLog, add_shard_argument, current_shard, fingerprint, merge_rows, process_device

logger = logging.getLogger(__name__)

PROMPTS_JSON = "prompts.json"
BASELINES = ("none", "negative_prompt", "safree")
TILING_MIN_SIZE = 256  # --vae_tiling's default turns tiling on from this frame size
#: File suffix of each baseline's videos (one word: ``find_video_pairs`` splits names at the last ``_``).
BASELINE_SIDES = {"negative_prompt": "negprompt", "safree": "safree"}


# ----------------------------------------------------------------------------------------------- names


def slugify(text: str, max_length: int = 48) -> str:
    """A file-name-safe short form of a prompt: lower-case ASCII words joined by ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    slug = slug[:max_length].rstrip("_")
    return slug or "prompt"


def row_prefix(output_dir, index: int, prompt: str) -> Path:
    """``{output_dir}/{index:03d}_{slug}``: the output prefix of row ``index`` of a prompt file."""
    return Path(output_dir) / f"{index:03d}_{slugify(prompt)}"


def side_path(prefix: Path, side: str, extension: str = ".mp4") -> Path:
    return prefix.with_name(f"{prefix.name}_{side}{extension}")


def existing_side_path(prefix: Path, side: str) -> Path | None:
    """The video of ``side`` if it exists; ``erased`` also accepts the original release's ``_erase.mp4``."""
    path = side_path(prefix, side)
    if path.exists():
        return path
    if side == "erased" and side_path(prefix, "erase").exists():
        return side_path(prefix, "erase")
    return None


# -------------------------------------------------------------------------------------------- loading


def check_pipeline_folder(model_path, family) -> str:
    """Fail clearly unless ``model_path`` holds a pipeline of ``family`` (any of its variants, e.g. CogVideoX
    image-to-video); returns the pipeline class name from ``model_index.json``."""
    from .families import family_of_pipeline_class
    from .families.base import check_model_folder

    pipeline_class = str(check_model_folder(model_path).get("_class_name", ""))
    owner = family_of_pipeline_class(pipeline_class)
    if owner is not family:
        hint = f" Use {owner.inference.script} (or receler-infer) for it." if owner else ""
        raise UserError(
            f"{model_path} holds a {pipeline_class or 'unknown'} pipeline, not a {family.display_name} one.{hint}"
        )
    return pipeline_class


def eraser_weights(paths, weights) -> list:
    """One finite weight per eraser of ``--eraser_path`` (a single ``--eraser_weight`` applies to all)."""
    weights = [float(weights)] if isinstance(weights, (int, float)) else [float(w) for w in weights]
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise UserError(f"--eraser_weight must be a finite number (got {bad[0]})")
    count = len(paths) if paths else 1
    if len(weights) == 1:
        return weights * count
    if len(weights) != count:
        raise UserError(f"--eraser_weight: {len(weights)} weights for {count} erasers; give one weight for all or one "
                        f"per --eraser_path, in the same order")
    return weights


def check_eraser_path(eraser_path, family=None) -> None:
    """Fail before the (slow) model load when the eraser folder or file is missing or unreadable, or (with
    ``family``) holds erasers of another model family. Shapes are checked when the erasers load."""
    if eraser_path is None:
        return
    config, state, weights = read_eraser_folder(eraser_path)
    if family is not None:
        check_eraser_family(state, family.layout, source=str(weights), config=config)


def read_component_config(model_path, component: str) -> dict:
    """``<model_path>/<component>/config.json`` (``{}`` if absent), to check a model before loading it."""
    path = Path(model_path) / component / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None


def load_pipeline_with_erasers(
    family,
    model_path,
    dtype=torch.float32,
    eraser_path=None,
    eraser_rank: int | None = None,
    eraser_weight=1.0,
    device="cpu",
    cpu_offload: bool = False,
    pipeline_class=None,
    setup: Callable | None = None,
):
    """Load the pipeline once, put the erasers on its transformer, move it to ``device``.

    ``eraser_path``: a folder (or weights file), or a list of them, stacked (summed at every block) with the
    weights ``eraser_weight`` (one number, or one per eraser). ``pipeline_class`` rebuilds the pipeline from the
    same components as another class of the family (e.g. ``CogVideoXVideoToVideoPipeline``); ``setup(pipe)`` runs
    before the erasers load (scheduler, VAE tiling...). Returns ``(pipe, eraser_config)``; ``eraser_config`` is
    ``None`` without an eraser (the first eraser's config for a stack).
    """
    pipe = family.load_pipeline(model_path, dtype=dtype)
    if pipeline_class is not None and not isinstance(pipe, pipeline_class):
        name_or_path = getattr(pipe, "name_or_path", None)
        pipe = pipeline_class(**pipe.components)
        if name_or_path is not None:
            pipe.register_to_config(_name_or_path=name_or_path)
    if setup is not None:
        setup(pipe)
    config = None
    paths = None if eraser_path is None else (list(eraser_path) if isinstance(eraser_path, (list, tuple)) else [eraser_path])
    if paths is not None and len(paths) > 1:
        configs = load_eraser_stack(pipe.transformer, family.layout, paths, eraser_weights(paths, eraser_weight))
        config = configs[0]
        logger.info("stacked %d %s erasers (weights %s) from %s", len(paths), family.display_name,
                    eraser_weights(paths, eraser_weight), ", ".join(map(str, paths)))
    elif paths is not None:
        weight = eraser_weights(paths, eraser_weight)[0]
        config = load_erasers(pipe.transformer, family.layout, paths[0], eraser_rank=eraser_rank, eraser_weight=weight)
        rank = _loaded_rank(pipe.transformer, family)
        logger.info("loaded %s erasers (rank %s, weight %s) from %s", family.display_name, rank, weight, paths[0])
    elif eraser_rank is not None:
        logger.warning("--eraser_rank is ignored without --eraser_path")
    device = torch.device(device)
    if cpu_offload:
        if device.type != "cuda":
            raise UserError("--use_cpu_offload moves each model to the GPU only while it runs; it needs a CUDA GPU")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(leave=False)
    return pipe, config


def _loaded_rank(transformer, family) -> int | None:
    from .erasers.wrapper import collect_erasers

    erasers = collect_erasers(transformer, family.layout)
    return next(iter(erasers.values())).down.out_features if erasers else None


def text_kwargs(family, pipe) -> dict:
    """Pipeline arguments that size the text conditioning as the model expects (the family says which)."""
    return family.pipeline_text_kwargs(pipe)


# ----------------------------------------------------------------------------------------------- sides


@dataclass
class Side:
    """One rendering of every prompt: its file suffix, whether the erasers are on, its own pipeline arguments."""

    name: str
    erasers: bool
    kwargs: dict = field(default_factory=dict)
    safree: object = None  # a receler.baselines.safree.Safree for the SAFREE baseline


def build_sides(
    *,
    erasers_loaded: bool,
    generate_clean: bool,
    baseline: str = "none",
    negative_prompt: str | None = None,
    concept: str = "nudity",
    render_kwargs: Callable = lambda negative_prompt: {"negative_prompt": negative_prompt} if negative_prompt else {},
    safree=None,
) -> list:
    """The sides a run renders, clean first.

    ``render_kwargs(negative_prompt)`` gives a side's pipeline arguments for a negative prompt (or
    ``None``). With ``baseline="negative_prompt"`` the baseline side uses ``negative_prompt`` (default: the
    concept) and the clean and erased sides use none; otherwise ``negative_prompt`` applies to every side.
    """
    if baseline not in BASELINES:
        raise UserError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    plain_negative = None if baseline == "negative_prompt" else negative_prompt
    sides = []
    if generate_clean:
        sides.append(Side("clean", erasers=False, kwargs=render_kwargs(plain_negative)))
    if erasers_loaded:
        sides.append(Side("erased", erasers=True, kwargs=render_kwargs(plain_negative)))
    if baseline == "negative_prompt":
        sides.append(Side("negprompt", erasers=False, kwargs=render_kwargs(negative_prompt or concept)))
    elif baseline == "safree":
        if safree is None:
            raise ValueError("baseline 'safree' needs a Safree instance")
        # the official variant guides away from its keyword negative prompt (the family's render_kwargs
        # turns it into that family's guidance arguments); the adapted one renders like the clean side
        negative = getattr(safree, "negative_prompt", None) or plain_negative
        if negative != plain_negative and plain_negative:
            logger.info("SAFREE's official variant renders with its keyword negative prompt; --negative_prompt "
                        "applies to the other videos")
        sides.append(Side("safree", erasers=False, kwargs=render_kwargs(negative), safree=safree))
    if not sides:
        raise UserError(
            "nothing to render: pass --eraser_path (erased video), --baseline negative_prompt|safree, and/or "
            "--generate_clean (the video of the unchanged model)."
        )
    return sides


# -------------------------------------------------------------------------------------------- rendering


def _frames_of(output) -> np.ndarray:
    frames = output.frames[0] if hasattr(output, "frames") else output[0][0]
    if isinstance(frames, torch.Tensor):
        frames = frames.float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
        frames = frames.transpose(0, 2, 3, 1)  # [F, C, H, W] -> [F, H, W, C]
    return frames


def compare_partner(names) -> str | None:
    """The side shown next to the clean video: the erased one, else the first baseline."""
    return next((name for name in names if name != "clean"), None)


def outputs_complete(prefix, names) -> bool:
    """Whether every output of one prompt exists: each side's video, the grid, and the comparison when
    the clean video exists (and there is something to compare it with)."""
    prefix = Path(prefix)
    if any(existing_side_path(prefix, name) is None for name in names):
        return False
    if not side_path(prefix, "grid", ".png").exists():
        return False
    has_clean = existing_side_path(prefix, "clean") is not None
    return side_path(prefix, "compare").exists() or not (has_clean and compare_partner(names))


def side_names(args) -> list:
    """The side names a run of an inference script renders, from its flags (before anything loads)."""
    names = (["clean"] if args.generate_clean else []) + (["erased"] if args.eraser_path is not None else [])
    return names + ([BASELINE_SIDES[args.baseline]] if args.baseline in BASELINE_SIDES else [])


def pending(jobs, names, resume: bool) -> list:
    """The jobs still to render (all of them unless resuming)."""
    return [job for job in jobs if not resume or not outputs_complete(job.prefix, names)]


class Renderer:
    """Renders the sides of one prompt on one loaded pipeline with the same seed.

    ``call_kwargs`` are the pipeline arguments shared by every side (steps, size, frames, guidance, text
    length, an input image or video...); each :class:`Side` adds its own.
    """

    def __init__(self, pipe, sides: list, call_kwargs: dict, fps: float = 8):
        self.pipe, self.sides, self.call_kwargs, self.fps = pipe, list(sides), dict(call_kwargs), fps

    def render_side(self, side: Side, prompt: str, seed: int) -> np.ndarray:
        """One video ``[F, H, W, 3]`` (float in [0, 1]) for ``prompt``, from a fresh CPU generator."""
        generator = torch.Generator().manual_seed(int(seed))
        kwargs = {**self.call_kwargs, **side.kwargs, "generator": generator, "output_type": "np"}
        with torch.no_grad():
            if side.erasers:
                return self._call(side, prompt, kwargs)
            with DisableEraser(self.pipe.transformer):
                return self._call(side, prompt, kwargs)

    def _call(self, side, prompt, kwargs):
        if side.safree is not None:
            result = side.safree.filter(prompt, num_inference_steps=kwargs.get("num_inference_steps"))
            if result.changed and result.filter_steps > 0:
                with side.safree.applied(self.pipe, result) as embeds:
                    return _frames_of(self.pipe(**kwargs, **embeds))
        return _frames_of(self.pipe(prompt=prompt, **kwargs))

    def render(self, prompt: str, seed: int, only=None) -> dict:
        """``{side name: frames}`` for every side (or those named in ``only``)."""
        return {s.name: self.render_side(s, prompt, seed) for s in self.sides if only is None or s.name in only}

    def write_prompt(self, prefix, prompt: str, seed: int, resume: bool = False) -> dict:
        """Render and write every output of one prompt; with ``resume`` only what is missing.

        Returns ``{"rendered": [side names], "skipped": bool}``.
        """
        prefix = Path(prefix)
        make_folder(prefix.parent)
        names = [s.name for s in self.sides]
        if resume and outputs_complete(prefix, names):
            return {"rendered": [], "skipped": True}
        existing = {name: existing_side_path(prefix, name) for name in names} if resume else {n: None for n in names}
        missing = [name for name in names if existing[name] is None]
        has_clean = "clean" in names or (resume and existing_side_path(prefix, "clean") is not None)
        compare_path, grid_path = side_path(prefix, "compare"), side_path(prefix, "grid", ".png")
        other = compare_partner(names)
        want_compare = has_clean and other is not None

        frames = {}
        for name in missing:
            side = next(s for s in self.sides if s.name == name)
            logger.debug("rendering %s (%s, seed %d)", name, prompt, seed)
            frames[name] = self.render_side(side, prompt, seed)
            write_video(frames[name], side_path(prefix, name), fps=self.fps)

        def get(name):
            if name not in frames:
                path = existing[name] if name in existing and existing[name] else existing_side_path(prefix, name)
                frames[name] = read_video(path)
            return frames[name]

        if want_compare:
            write_video(side_by_side(get("clean"), get(other), labels=("clean", other)), compare_path, fps=self.fps)
        rows = (["clean"] if has_clean and "clean" not in names else []) + names
        save_png(frame_grid([(name, get(name)) for name in rows]), grid_path)
        return {"rendered": missing, "skipped": False}



# ------------------------------------------------------------------------------------------ prompt runs


@dataclass
class PromptJob:
    prompt: str
    seed: int
    prefix: Path
    index: int | None = None


def plan_jobs(prompt=None, prompt_file=None, output_path=None, seed: int = 42, folder: bool = False) -> tuple:
    """``(jobs, output_folder, resumable)`` from ``--prompt`` / ``--prompt_file`` and ``--output_path``.

    A single prompt writes ``<output_path minus .mp4>_<side>.mp4``: ``output_path`` is a prefix (default
    ``output.mp4``), with or without ``.mp4``, as the original release's ``--output_path ./output/test``
    (``test_clean.mp4``, ``test_erased.mp4``). Only an existing folder, a path ending in ``/`` or ``folder=True``
    (``--output_dir``) holds ``<slug>_<side>.mp4`` instead. A prompt file writes
    ``<output_path>/{i:03d}_{slug}_<side>.mp4`` (default folder ``output``) and resumes.
    """
    if (prompt is None) == (prompt_file is None):
        raise UserError("pass exactly one of --prompt (one prompt) or --prompt_file (a .txt or .csv of prompts)")
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt is empty; give the text to render")
        prefix = single_prompt_prefix(output_path, prompt, folder)
        return [PromptJob(prompt, seed, prefix)], prefix.parent, False
    folder = Path(output_path or "output")
    if folder.suffix.lower() == ".mp4":
        raise UserError(
            f"--output_path {folder} names a video, but --prompt_file renders many: pass a folder instead."
        )
    table = load_prompts(prompt_file)
    jobs = [
        PromptJob(row.prompt, seed if row.seed is None else row.seed, row_prefix(folder, i, row.prompt), i)
        for i, row in enumerate(table.rows)
    ]
    return jobs, folder, True


def single_prompt_prefix(output_path, prompt: str, folder: bool = False) -> Path:
    """Where one prompt's outputs go: ``<prefix>_<side>.mp4`` (see :func:`plan_jobs`)."""
    text = str(output_path or "output.mp4")
    path = Path(text)
    if path.suffix.lower() == ".mp4":
        return path.with_suffix("")
    if folder or path.is_dir() or text.endswith(("/", os.sep)):
        return path / slugify(prompt)
    logger.info("--output_path %s is not a folder: writing %s_clean.mp4, %s_erased.mp4, ... (end it with / for a "
                "folder)", text, path, path)
    return path


def update_prompts_json(folder, mapping: dict) -> None:
    """Merge ``{stem: prompt}`` into ``folder/prompts.json`` (atomically; other stems are kept)."""
    path = Path(folder) / PROMPTS_JSON
    current = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            logger.warning("%s is not valid JSON; rewriting it", path)
        if not isinstance(current, dict):
            current = {}
    merged = {**current, **mapping}
    if merged != current:
        atomic_write_json(path, dict(sorted(merged.items())))


def all_done(args, jobs, folder, resumable: bool) -> dict | None:
    """Before loading the model: when resuming and every job's outputs exist, say so and return the
    counts ``run_jobs`` would; else ``None``."""
    if jobs and (not resumable or args.overwrite or pending(jobs, side_names(args), resume=True)):
        return None  # (a shard may hold no rows at all: more processes than prompts)
    log = prompt_log(args)
    for job in jobs:
        log.add(job)
    log.finish()
    if jobs:
        logger.info("all %d prompts in %s are already rendered; nothing to do (--overwrite renders them again)", len(jobs), folder)
    return {"rendered": 0, "skipped": len(jobs)}


def run_jobs(renderer: Renderer, jobs: list, folder, resume: bool = True, progress: bool = True, log=None) -> dict:
    """Render every job (tqdm over prompts), noting each in ``log`` (default: ``prompts.json``). Returns counts."""
    folder = Path(folder)
    make_folder(folder)
    log = log or PromptsJsonLog()
    rendered = skipped = 0
    for job in tqdm(jobs, desc="prompts", unit="prompt", disable=not progress or len(jobs) < 2):
        result = renderer.write_prompt(job.prefix, job.prompt, job.seed, resume=resume)
        log.add(job)
        if result["skipped"]:
            skipped += 1
            logger.debug("skipped %s: its outputs exist", job.prefix.name)
        else:
            rendered += 1
            logger.info("wrote %s_{%s}", job.prefix, ",".join(result["rendered"] + ["compare", "grid"]))
    if skipped:
        logger.info("%d prompts already rendered (skipped); delete their files or pass --overwrite to redo them", skipped)
    logger.info("%d prompt%s rendered into %s", rendered, "" if rendered == 1 else "s", folder)
    log.finish()
    return {"rendered": rendered, "skipped": skipped}


# ---------------------------------------------------------------------------------------------- the CLIs


def build_parser(defaults: "InferenceDefaults") -> argparse.ArgumentParser:
    """The flags every inference script shares, with the family's defaults (steps, guidance, fps...) and texts."""
    p = argparse.ArgumentParser(description=defaults.description, epilog=defaults.epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    g = p.add_argument_group("what to render")
    g.add_argument("--prompt", default=None, help="one prompt to render")
    g.add_argument("--prompt_file", "--prompt_path", dest="prompt_file", default=None,
                   help="many prompts: .txt (one per line) or .csv with a 'prompt' column; a 'seed' or 'evaluation_seed' "
                   "column overrides --seed per row. Writes {i:03d}_{slug}_<side>.mp4 per row and resumes: rows whose "
                   "outputs exist are skipped")
    g.add_argument("--output_path", default=None,
                   help="with --prompt: the prefix of the outputs, with or without .mp4 (default output.mp4 -> "
                   "output_clean.mp4, output_erased.mp4 ...; ./output/test -> ./output/test_clean.mp4 ...), or an "
                   "existing folder / a path ending in / (-> FOLDER/<slug>_clean.mp4 ...); with --prompt_file: a folder "
                   "(default: output)")
    g.add_argument("--output_dir", default=None,
                   help="a folder for the outputs (created if missing), with --prompt or --prompt_file; instead of "
                   "--output_path")
    g.add_argument("--seed", type=int, default=42,
                   help="seed of a CPU torch.Generator, fresh for every side, so every side starts from the same latents "
                   "(CPU generators give the same video on any machine; CUDA generators do not) (default: 42)")
    g.add_argument("--overwrite", action="store_true", help="with --prompt_file: render every row again instead of skipping done ones")
    add_shard_argument(g, "--prompt_file rows")

    g = p.add_argument_group("model and eraser")
    g.add_argument("--model_path", required=True, help="local diffusers pipeline folder (nothing is downloaded)")
    g.add_argument("--eraser_path", "--eraser_ckpt_path", dest="eraser_path", default=None, nargs="+",
                   help="eraser folder (eraser_config.json + eraser_weights.safetensors or .pt) or a weights file; "
                   "several erasers (of one model family, any ranks) are stacked: their outputs add up at every "
                   "block, h + sum_i w_i eraser_i(h). Optional when only a baseline or the clean video is rendered")
    g.add_argument("--eraser_weight", type=float, default=[1.0], nargs="+",
                   help="inference-time eraser strength: every eraser adds w * eraser(h) to its attention's output (0 "
                   "renders the clean model, 1 as trained, values in between a partial erasure); one weight for all "
                   "erasers or one per --eraser_path (default: 1.0)")
    g.add_argument("--eraser_rank", type=int, default=None,
                   help="expected eraser rank; default: read from the checkpoint (a mismatch is an error)")
    g.add_argument("--generate_clean", action="store_true",
                   help="also render the clean video (erasers off, same model, same seed) and the side-by-side comparison; "
                   "without it only the erased (and baseline) videos are rendered")
    g.add_argument("--dtype", choices=("auto",) + tuple(DTYPES), default="auto",
                   help="backbone dtype; erasers always compute in float32. auto = bfloat16 on a GPU, float32 on a CPU (default: auto)")
    g.add_argument("--use_fp16", action="store_true", help="alias for --dtype float16")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--use_cpu_offload", "--cpu_offload", dest="use_cpu_offload", action="store_true",
                   help="keep models on the CPU and move each to the GPU only while it runs (diffusers' model CPU offload): "
                   "slower, for GPUs with little memory")
    g.add_argument("--vae_tiling", action=argparse.BooleanOptionalAction, default=None,
                   help="decode the video in tiles to save memory (--vae_tiling / --no-vae_tiling). Default: on for videos "
                   f"at least {TILING_MIN_SIZE} px on a side (as the original scripts for full-size models), off for smaller "
                   "ones, where tiles would be smaller than the VAE supports")

    g = p.add_argument_group("video")
    g.add_argument("--num_inference_steps", type=int, default=defaults.num_inference_steps,
                   help=f"denoising steps (default: {defaults.num_inference_steps})")
    g.add_argument("--guidance_scale", type=float, default=defaults.guidance_scale, help=defaults.guidance_help)
    g.add_argument("--num_frames", type=int, default=None, help=defaults.frames_help)
    g.add_argument("--height", type=int, default=None, help=defaults.size_help.format(what="height"))
    g.add_argument("--width", type=int, default=None, help=defaults.size_help.format(what="width"))
    g.add_argument("--fps", type=float, default=defaults.fps, help=f"frames per second of the mp4 files (default: {defaults.fps:g})")
    g.add_argument("--negative_prompt", default=None,
                   help="negative prompt. With --baseline negative_prompt it is the baseline's (default: --concept) and the "
                   "clean/erased videos use none; otherwise every video uses it")

    g = p.add_argument_group("baselines (training-free, on the unchanged model)")
    g.add_argument("--baseline", choices=BASELINES, default="none",
                   help="also render a baseline next to the eraser: negative_prompt (the concept as negative prompt, written "
                   "as _negprompt.mp4) or safree (SAFREE's token projection, _safree.mp4) (default: none)")
    g.add_argument("--concept", default="nudity",
                   help="the erased concept, for the baselines: the default negative prompt and SAFREE's default keyword list (default: nudity)")
    g.add_argument("--safree_variant", choices=("official", "adapted"), default="official",
                   help="SAFREE: official = as the authors' released code: their CogVideoX pipeline for CogVideoX, and the "
                   "same pipeline, the nearest they released, on Wan's UMT5 and HunyuanVideo's Llama and CLIP encoders "
                   "(keyword vectors from one token's state, tokens tested by writing the pad id in their place, "
                   "projection (I - P_C) P_I, the first 13/50 of the steps, and the keywords joined as the negative prompt "
                   "at the model's guidance: --guidance_scale, or for HunyuanVideo --true_cfg_scale with embedded guidance "
                   "1.0); adapted = this project's earlier adaptation (mean-pooled vectors, tokens deleted, projection "
                   "P_I (I - P_C), the first 13 steps, no negative prompt). docs/safree.md lists every difference "
                   "(default: official)")
    g.add_argument("--safree_keywords", nargs="+", default=None, metavar="KEYWORD",
                   help="SAFREE: keywords spanning the concept subspace (or one .txt file, one per line). Default for nudity: "
                   "official: the authors' list (\"Sexual Acts\", Naked, Nudity, \"Sexual Orientation\", \"Sexual "
                   "Attraction\", \"Sexual Intercourse\"); adapted: \"Sexual Acts\", \"Content Meant to Arouse Sexual "
                   "Excitement\", Nudity, Naked, Nude, Topless, Pornography, ... (receler.baselines.safree); for another "
                   "concept: the concept itself")
    g.add_argument("--safree_alpha", type=float, default=0.01,
                   help="SAFREE: a token is a trigger when removing it moves the prompt farther from the concept subspace "
                   "than (1 + alpha) x the mean over the other tokens (paper: 0.01) (default: 0.01)")
    g.add_argument("--safree_steps", default=None,
                   help="SAFREE: the first K denoising steps use the filtered embedding, then the original one. A share of "
                   "the steps A/B (13/50 = steps 0-12 of 50, 8 of 30), 'all', a whole number of steps, or 'auto' = the "
                   "variant's self-validating filtering (official: the authors' formula, at most gamma + 1 steps; "
                   "adapted: K = round(gamma * sigmoid(1 - cos(original, filtered)))) (default: 13/50 for official, "
                   "13 for adapted)")
    g.add_argument("--safree_gamma", type=float, default=10.0,
                   help="SAFREE: the step bound of --safree_steps auto (paper: 10) (default: 10)")
    g.add_argument("--safree_projection", choices=("input_space", "plain"), default="input_space",
                   help="SAFREE: project trigger tokens onto the orthogonal complement of the concept subspace within the "
                   "prompt's input space, as the paper (input_space; in the variant's order), or onto the complement only "
                   "(plain) (default: input_space)")

    g = p.add_argument_group("logging")
    g.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def finish_args(args) -> None:
    """Aliases and cheap checks, before anything heavy loads."""
    if getattr(args, "use_fp16", False):
        args.dtype = "float16"
    for name in ("num_inference_steps",):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.eraser_rank is not None and args.eraser_rank < 1:
        raise UserError(f"--eraser_rank must be at least 1 (got {args.eraser_rank})")
    if not args.fps > 0 or not math.isfinite(args.fps):
        raise UserError(f"--fps must be positive (got {args.fps})")
    args.eraser_weight = eraser_weights(args.eraser_path, args.eraser_weight)
    if args.output_dir is not None:
        if args.output_path is not None:
            raise UserError("pass --output_path (a prefix or a folder) or --output_dir (a folder), not both")
        args.output_path, args.output_folder = args.output_dir, True
    current_shard(getattr(args, "shard", None))  # a malformed --shard fails before the prompt file is read
    if args.num_frames is not None and args.num_frames < 1:
        raise UserError(f"--num_frames must be at least 1 (got {args.num_frames})")
    # 0 is not "the model's default" (leave the flag out for that): it would be replaced without a word
    check_ints(args, ("height", "width"), hint="; leave it out for the model's own size")
    check_floats(args, ("guidance_scale", "true_cfg_scale", "safree_gamma"), low=0.0)
    check_floats(args, ("strength",), low=0.0, above=True, high=1.0)
    if args.eraser_path is None and args.baseline == "none" and not args.generate_clean:
        raise UserError(
            "nothing to render: pass --eraser_path (erased video), --baseline negative_prompt|safree, and/or "
            "--generate_clean (the video of the unchanged model)."
        )
    if args.baseline == "safree":
        from .baselines.safree import parse_steps

        if args.safree_steps is not None:
            args.safree_steps = parse_steps(args.safree_steps)
        if args.safree_alpha < 0:
            raise UserError(f"--safree_alpha must be >= 0 (paper: 0.01), got {args.safree_alpha}")


def precheck_video_args(family, args) -> None:
    """Check the frame count and size given on the command line before the model loads (the model's own
    defaults are checked once it has)."""
    if args.num_frames is not None:
        args.num_frames = family.round_frames(args.num_frames)
    if args.height is not None or args.width is not None:
        family.check_size(args.height or 16, args.width or 16)


def make_safree(args, family, pipe):
    """The SAFREE baseline from the ``--safree_*`` flags, or ``None`` when ``--baseline`` is not safree."""
    if args.baseline != "safree":
        return None
    from .baselines.safree import Safree, default_keywords, read_keywords

    variant = getattr(args, "safree_variant", "official")
    keywords = read_keywords(args.safree_keywords) or default_keywords(args.concept, variant)
    return Safree(
        family, pipe, keywords, alpha=args.safree_alpha, steps=args.safree_steps, gamma=args.safree_gamma,
        projection=args.safree_projection, variant=variant,
    )


def video_size(family, pipe, args, defaults: tuple | None = None) -> tuple:
    """``(num_frames, height, width)``: the flags, else ``defaults``, else the model's own; checked."""
    frames, height, width = defaults or family.default_video_size(pipe)
    args.num_frames = family.round_frames(args.num_frames or frames)
    args.height = args.height or height
    args.width = args.width or width
    family.check_size(args.height, args.width)
    return args.num_frames, args.height, args.width


def setup_vae(pipe, args) -> None:
    """``--vae_tiling`` (default: on from :data:`TILING_MIN_SIZE` px) and batch slicing where the VAE has them."""
    tiling = args.vae_tiling
    if tiling is None:
        tiling = max(args.height, args.width) >= TILING_MIN_SIZE
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    if tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    elif not tiling and hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


__all__ = [
    "BASELINES",
    "InferenceDefaults",
    "InferencePlan",
    "PromptJob",
    "Renderer",
    "Side",
    "all_done",
    "build_parser",
    "build_sides",
    "check_eraser_path",
    "check_pipeline_folder",
    "finish_args",
    "load_pipeline_with_erasers",
    "make_safree",
    "outputs_complete",
    "pending",
    "plan_jobs",
    "precheck_video_args",
    "read_component_config",
    "resolve_device",
    "resolve_dtype",
    "row_prefix",
    "run_jobs",
    "setup_vae",
    "side_names",
    "side_path",
    "slugify",
    "text_kwargs",
    "update_prompts_json",
    "video_size",
    "merge_prompts",
    "shard_jobs",
]


# ------------------------------------------------------------------------------------- the CLIs' run


def plan_run(args, family) -> tuple:
    """The checks every inference CLI makes before loading anything, then its plan.

    Returns ``(jobs, folder, resumable, done)``; ``done`` is the summary when every output already exists.
    """
    check_pipeline_folder(args.model_path, family)
    precheck_video_args(family, args)
    if args.eraser_path is not None:
        args.eraser_path = [resolve_eraser_path(path) for path in args.eraser_path]
        for path in args.eraser_path:
            check_eraser_path(path, family)
    elif args.eraser_weight != [1.0]:
        logger.warning("--eraser_weight is ignored without --eraser_path")
    jobs, folder, resumable = plan_jobs(args.prompt, args.prompt_file, args.output_path, args.seed,
                                        folder=getattr(args, "output_folder", False))
    jobs = shard_jobs(args, jobs, folder)
    return jobs, folder, resumable, all_done(args, jobs, folder, resumable)


def cfg_negative_prompt(args, default_guidance: float) -> Callable:
    """``render_kwargs`` for models whose negative prompt acts through classifier-free guidance (CogVideoX, Wan)."""

    def render_kwargs(negative_prompt):
        if negative_prompt and args.guidance_scale <= 1:
            raise UserError(
                f"a negative prompt needs classifier-free guidance, but --guidance_scale is {args.guidance_scale}; "
                f"pass --guidance_scale > 1 (default {default_guidance:g})."
            )
        return {"negative_prompt": negative_prompt} if negative_prompt else {}

    return render_kwargs


def render_run(args, family, jobs, folder, resumable, setup, render_kwargs, call_kwargs=None, eraser_weight=None,
               pipeline_class=None) -> dict:
    """Load the pipeline and erasers once, then render every job's sides (the shared part of every inference CLI).

    ``call_kwargs(pipe)`` adds the family's own pipeline arguments; ``render_kwargs(negative_prompt)`` turns a
    side's negative prompt into pipeline arguments.
    """
    device = resolve_device(process_device(args.device))
    dtype = resolve_dtype(args.dtype, device)
    eraser_weight = args.eraser_weight if eraser_weight is None else eraser_weight
    pipe, _ = load_pipeline_with_erasers(
        family, args.model_path, dtype, args.eraser_path, args.eraser_rank, eraser_weight=eraser_weight, device=device,
        cpu_offload=args.use_cpu_offload, pipeline_class=pipeline_class, setup=setup,
    )
    kwargs = {"num_inference_steps": args.num_inference_steps, "height": args.height, "width": args.width,
              **text_kwargs(family, pipe), **(call_kwargs(pipe) if call_kwargs else {})}
    sides = build_sides(
        erasers_loaded=args.eraser_path is not None,
        generate_clean=args.generate_clean,
        baseline=args.baseline,
        negative_prompt=args.negative_prompt,
        concept=args.concept,
        render_kwargs=render_kwargs,
        safree=make_safree(args, family, pipe),
    )
    renderer = Renderer(pipe, sides, kwargs, fps=args.fps)
    return run_jobs(renderer, jobs, folder, resume=resumable and not args.overwrite, log=prompt_log(args))


# ----------------------------------------------------------------------------------------- sharded runs
# Under accelerate launch or with --shard, each process renders its share of the rows (receler.sharding) and
# notes them in its own prompts.shard-K-of-N.json: one writer per file, so processes sharing the folder (on
# one machine or across a cluster's file system) never lose each other's updates to prompts.json. The last
# shard to finish writes prompts.json from all of them.

PROMPTS_KIND = "prompts"


class PromptsJsonLog:
    """One process: every finished row goes straight into ``prompts.json``."""

    def add(self, job: PromptJob) -> None:
        update_prompts_json(job.prefix.parent, {job.prefix.name: job.prompt})

    def finish(self) -> None:
        pass


class ShardPromptLog:
    """One shard of a sharded run: finished rows go into the shard's own file; the last shard merges."""

    def __init__(self, shard_log: ShardLog, folder):
        self.shard_log, self.folder = shard_log, Path(folder)

    def add(self, job: PromptJob) -> None:
        self.shard_log.add(job.index or 0, {"stem": job.prefix.name, "prompt": job.prompt, "seed": job.seed})

    def finish(self) -> None:
        if self.shard_log.finish():
            mapping = merge_prompts(self.folder)
            logger.info("every shard is done: %s lists all %d prompts", self.folder / PROMPTS_JSON, len(mapping))
        else:
            logger.info("other shards are still rendering into %s; the last to finish writes %s (or run "
                        "evaluation/merge.py %s)", self.folder, PROMPTS_JSON, self.folder)


def shard_jobs(args, jobs: list, folder) -> list:
    """This process's share of ``jobs`` (``--shard`` and/or the launcher's processes); all of them for one process.

    Row ``i`` keeps its seed and its output names, so the shards together render exactly what one process does.
    The run's log (where finished rows are noted) is kept on ``args`` for :func:`all_done` and :func:`render_run`.
    """
    shard = current_shard(getattr(args, "shard", None))
    args.prompt_log = None
    if not shard.enabled:
        return jobs
    rows = [[job.prefix.name, job.seed] for job in jobs]
    plan = fingerprint({"rows": rows, "sides": side_names(args)})
    log = ShardLog(folder, PROMPTS_KIND, shard, [job.prefix.name for job in jobs], plan)
    args.prompt_log = ShardPromptLog(log, folder)
    mine = shard.select(jobs)
    logger.info("shard %s renders %d of the %d prompts", shard, len(mine), len(jobs))
    return mine


def prompt_log(args):
    return getattr(args, "prompt_log", None) or PromptsJsonLog()


def merge_prompts(folder) -> dict:
    """Write ``prompts.json`` from the ``prompts.shard-K-of-N.json`` files of ``folder``, refusing a row that is
    missing or present twice (:func:`receler.sharding.merge_rows`); returns ``{stem: prompt}``."""
    records, _ = merge_rows(folder, PROMPTS_KIND)
    mapping = {record["stem"]: record["prompt"] for record in records}
    update_prompts_json(folder, mapping)
    return mapping


# ------------------------------------------------------------------------------ a family's inference CLI


@dataclass(frozen=True)
class InferenceDefaults:
    """What a family's inference CLI defaults to, and the texts of its ``--help``."""

    script: str                  # the inference script of the family, e.g. "test_cogvideo.py"
    num_inference_steps: int
    guidance_scale: float | None
    fps: float
    guidance_help: str
    frames_help: str
    size_help: str               # "{what}" becomes height / width
    description: str
    epilog: str
    video_size: tuple | None = None  # (frames, height, width) to render when the flags give none; None: the model's


class InferencePlan:
    """One run of a family's inference CLI: the flags it adds, its checks before the model loads, and how every
    side calls the pipeline. This base renders text to video with classifier-free guidance; families whose
    CLI needs more subclass it (their ``inference_plan``)."""

    pipeline_class = None  # render with another pipeline class of the family, built from the loaded components

    def __init__(self, family, args):
        self.family, self.args = family, args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The family's own flags (none here)."""

    @property
    def eraser_weight(self) -> float:
        return self.args.eraser_weight

    def check(self) -> None:
        """Checks of the flags, before anything is rendered or loaded."""

    def prepare(self) -> None:
        """Inputs read before the model loads (only when there is something to render)."""

    def setup(self, pipe) -> None:
        """Once the pipeline is loaded, before the erasers: the video size (flags, else the defaults, else the
        model's own) and the VAE's tiling."""
        args = self.args
        video_size(self.family, pipe, args, defaults=self.family.inference.video_size)
        setup_vae(pipe, args)
        logger.info("%d frames at %dx%d, %d steps, guidance %s", args.num_frames, args.height, args.width,
                    args.num_inference_steps, args.guidance_scale)

    def call_kwargs(self, pipe) -> dict:
        """The pipeline arguments every side shares (besides steps, size and text length)."""
        return {"guidance_scale": self.args.guidance_scale, "num_frames": self.args.num_frames}

    def render_kwargs(self, negative_prompt) -> dict:
        """A side's own pipeline arguments for its negative prompt (or ``None``)."""
        return cfg_negative_prompt(self.args, self.family.inference.guidance_scale)(negative_prompt)

    def run(self) -> dict:
        args, family = self.args, self.family
        jobs, folder, resumable, done = plan_run(args, family)
        self.check()
        if done is not None:
            return done
        self.prepare()
        return render_run(args, family, jobs, folder, resumable, self.setup, self.render_kwargs,
                          call_kwargs=self.call_kwargs, eraser_weight=self.eraser_weight,
                          pipeline_class=self.pipeline_class)
