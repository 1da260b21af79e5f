"""Attack an eraser: learn a soft prompt that brings the erased concept back, and measure how much returns.

    python evaluation/attack.py --model_path models/world-cogvideox --eraser_path outputs/erase_red \\
        --prompts_file prompts.txt --target_concept red --num_tokens 4 --steps 200 --output_dir outputs/attack

Writes, in --output_dir: ``soft_prompt.safetensors`` (the learned vectors), per prompt
``{i:03d}_{slug}_clean.mp4`` / ``_erased.mp4`` / ``_attacked.mp4`` / ``_compare.mp4`` (erased | attacked) /
``_grid.png``, and ``attack.json``: the attack loss curve and, where a detector exists (the bundled world's
pixel classifier for its colours, NudeNet for nudity), the concept rate of clean, erased and attacked videos,
overall and per frame (the re-emergence curve). The method is in ``receler/attack.py``.

A rerun with the same settings reuses the soft prompt in --output_dir and keeps the rows rendered with it.
Under ``accelerate launch`` or with ``--shard K/N`` shard 0 learns the soft prompt, the other shards wait for its
file, and every shard renders its own rows into ``attack.shard-K-of-N.json``; the last to finish (or
``evaluation/merge.py``) writes ``attack.json``.
"""

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.common import record_on_model_card
from receler.attack import attack_prompts
from receler.devices import DTYPES
from receler.erasers.utils import DisableEraser
from receler.errors import UserError, cli_entry, setup_logging
from receler.families import FAMILY_NAMES, resolve_family
from receler.flag_checks import check_floats, check_ints
from receler.io_utils import atomic_write, atomic_write_json, make_folder
from receler.sharding import (ShardLog, add_shard_argument, current_shard, fingerprint, merge_rows, process_device,
                              read_shard_file, shard_files)

logger = logging.getLogger("evaluation.attack")

SIDES = ("clean", "erased", "attacked")
ATTACK_KIND = "attack"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"


# ---------------------------------------------------------------------------------------- detectors


class WorldColorDetector:
    """The bundled world's pixel classifier: does a frame / a video show the target colour?"""

    def __init__(self, color: str):
        self.color = color
        self.name = f"world colour classifier ({color})"

    def frames(self, video: np.ndarray) -> list:
        from receler.world.classify import DEFAULT_MIN_COLOR_FRACTION, frame_color_fractions

        return [frame_color_fractions(f)[self.color] >= DEFAULT_MIN_COLOR_FRACTION for f in video]

    def video(self, video: np.ndarray, frame_flags: list) -> bool:
        return sum(frame_flags) * 2 > len(frame_flags)  # as video_shows_color: most frames show it


class NudityDetector:
    """NudeNet over frames with the paper's protocol (evaluation/nudity.py): a video counts if any frame does."""

    name = "NudeNet, paper protocol (8 exposed classes, score floor)"

    def __init__(self):
        from evaluation.nudity import load_detector

        self.detector = load_detector()

    def frames(self, video: np.ndarray) -> list:
        from evaluation.nudity import detect_frames, frame_is_nude

        return [frame_is_nude(d) for d in detect_frames(self.detector, video)]

    def video(self, video: np.ndarray, frame_flags: list) -> bool:
        return any(frame_flags)


def make_detector(kind: str, concept: str):
    from receler.world.scenes import COLORS

    if kind == "auto":
        kind = "world" if concept in COLORS else "nudenet" if concept.lower() in ("nudity", "naked", "nude") else "none"
    if kind == "world":
        if concept not in COLORS:
            raise UserError(f"--detector world measures the world's colours ({', '.join(COLORS)}); got --target_concept {concept!r}")
        return WorldColorDetector(concept)
    if kind == "nudenet":
        return NudityDetector()
    return None


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Attack an eraser with a learned soft prompt (a few vectors appended to "
                                "the prompt's text conditioning) and measure how much of the erased concept comes back.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", required=True, help="local diffusers pipeline folder (nothing is downloaded)")
    p.add_argument("--model_family", default="auto", choices=("auto",) + FAMILY_NAMES, help="model family")
    p.add_argument("--eraser_path", required=True, nargs="+",
                   help="the eraser folder to attack (the trainer's --output_dir); several: attack their stack (summed)")
    p.add_argument("--eraser_weight", type=float, default=[1.0], nargs="+",
                   help="inference-time eraser strength: w * eraser(h) is added (any family; 1 = as trained); one for "
                   "all erasers or one per --eraser_path")
    p.add_argument("--prompts_file", default=None, help="concept prompts (.txt or .csv with a 'prompt' column; per-row seeds)")
    p.add_argument("--prompt", default=None, help="one concept prompt instead of --prompts_file")
    p.add_argument("--target_concept", required=True, help="the erased concept (chooses the detector)")
    p.add_argument("--detector", choices=("auto", "world", "nudenet", "none"), default="auto",
                   help="how to tell whether a frame shows the concept: the world's pixel classifier (its colours), "
                   "NudeNet (nudity), or none; auto picks by --target_concept")
    p.add_argument("--num_tokens", type=int, default=8, help="learned soft tokens (1-16 typical; more is stronger)")
    p.add_argument("--steps", type=int, default=500, help="attack optimisation steps (the attack budget)")
    p.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate of the soft tokens")
    p.add_argument("--attack_eta", type=float, default=1.0,
                   help="target o_0 + eta (o_c - o_0) of the frozen model; 1 = its own output on the concept prompt")
    p.add_argument("--loss_target", choices=("ff", "ff_all", "velocity"), default="velocity",
                   help="what the attack compares: the prediction that steers sampling (velocity, strongest on the world "
                   "benchmark) or the training losses' feed-forward output")
    p.add_argument("--seed", type=int, default=42, help="seed of the soft prompt, the timesteps and the renders (CPU generators)")
    p.add_argument("--num_frames", type=int, default=None, help="frames (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="width (default: the model's)")
    p.add_argument("--num_inference_steps", type=int, default=30, help="denoising steps of the attack's trajectories and renders")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="guidance of the renders (1: none)")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the mp4 files")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="backbone dtype")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--output_dir", required=True,
                   help="where the soft prompt, the videos and attack.json go. A rerun with the same settings reuses the "
                   "soft prompt learned there and keeps the rows already rendered with it")
    add_shard_argument(p, "--prompts_file rows (the soft prompt is learned once, by shard 0; the others wait for it)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if (args.prompt is None) == (args.prompts_file is None):
        p.error("give exactly one of --prompt or --prompts_file")
    check_args(args)
    return args


def check_args(args) -> None:
    """The numeric flags, before the model loads (a zero size would silently become the model's default)."""
    check_ints(args, ("num_tokens", "steps", "num_inference_steps"))
    check_ints(args, ("num_frames", "height", "width"), hint="; leave it out for the model's own")
    check_floats(args, ("lr",), low=0.0, above=True)
    check_floats(args, ("fps",), low=0.0, above=True)
    check_floats(args, ("attack_eta", "guidance_scale"), low=0.0)
    from receler.inference import eraser_weights

    args.eraser_weight = eraser_weights(args.eraser_path, args.eraser_weight)  # finite, one per eraser
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UserError(f"--output_dir {args.output_dir} is a file, not a folder: pass the folder the attack should "
                        f"write to.")


def render(family, pipe, seed, size, steps, guidance, text=None, cond=None, erasers=True) -> np.ndarray:
    """One video as uint8 [F, H, W, 3], from a prompt or from precomputed conditioning."""
    kwargs = dict(num_frames=size[0], height=size[1], width=size[2], num_inference_steps=steps,
                  guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np",
                  **family.pipeline_text_kwargs(pipe))
    if cond is not None:
        kwargs.update(family.pipeline_embedding_kwargs(cond))
    else:
        kwargs["prompt"] = text
    with torch.no_grad():
        if erasers:
            out = pipe(**kwargs)
        else:
            with DisableEraser(pipe.transformer):
                out = pipe(**kwargs)
    frames = np.asarray(out.frames[0])
    return (frames * 255).round().clip(0, 255).astype(np.uint8) if frames.dtype != np.uint8 else frames


def rates(flags: list) -> dict:
    """Video-level rate and the per-frame re-emergence curve of one side."""
    video = [v for v, _ in flags]
    frames = np.array([f for _, f in flags], dtype=float)
    return {"rate": float(np.mean(video)) if video else None,
            "per_frame": frames.mean(axis=0).tolist() if len(frames) else []}


# ------------------------------------------------------------------------------- soft prompt, reused


def eraser_digest(eraser_path) -> str:
    """A hash of the eraser's weights file (of each, for a stack): a soft prompt learned against other weights is
    never reused."""
    from receler.checkpoint import WEIGHTS_PT, WEIGHTS_SAFETENSORS

    digest = hashlib.sha256()
    for path in (eraser_path if isinstance(eraser_path, (list, tuple)) else [eraser_path]):
        path = Path(path)
        if path.is_dir():
            path = next(p for p in (path / WEIGHTS_SAFETENSORS, path / WEIGHTS_PT) if p.exists())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _paths(paths) -> str:
    """The eraser path as reports show it (one path, or the list of a stack)."""
    return str(paths[0]) if len(paths) == 1 else ", ".join(map(str, paths))


def learn_settings(args, prompts: list, size: tuple) -> dict:
    """Everything the learned soft prompt depends on; a soft prompt in --output_dir learned with the same is reused."""
    keys = ("model_path", "eraser_weight", "num_tokens", "steps", "lr", "attack_eta", "loss_target", "seed",
            "num_inference_steps", "dtype")
    return {**{k: str(getattr(args, k)) for k in keys}, "eraser": eraser_digest(args.eraser_path), "prompts": prompts,
            "video_size": list(size)}


def save_soft_prompt(path, vectors, losses, settings, args) -> None:
    from safetensors.torch import save_file

    metadata = {"model_path": str(args.model_path), "eraser_path": _paths(args.eraser_path), "num_tokens": str(args.num_tokens),
                "placement": "first padding positions", "settings": json.dumps(settings, sort_keys=True),
                "loss_curve": json.dumps(losses)}
    atomic_write(path, lambda tmp: save_file({"vectors": vectors}, tmp, metadata=metadata))


def load_soft_prompt(path, settings) -> tuple | None:
    """``(vectors, losses)`` of a soft prompt file learned with ``settings``, else ``None``."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            vectors = f.get_tensor("vectors")
        if metadata.get("settings") != json.dumps(settings, sort_keys=True):
            return None
        return vectors, json.loads(metadata["loss_curve"])
    except Exception as err:  # a file being replaced, or one from an older version without settings
        logger.debug("not reusing %s: %s", path, err)
        return None


def wait_for_soft_prompt(path, settings, shard, poll_seconds: float = 5.0) -> tuple:
    """Shards other than 0 render with the soft prompt shard 0 learns (learned once, the same for every row)."""
    logger.info("shard %s waits for shard 0 to learn the soft prompt (%s)", shard, path)
    started = last_note = time.monotonic()
    while (found := load_soft_prompt(path, settings)) is None:
        time.sleep(poll_seconds)
        if time.monotonic() - last_note > 600:
            last_note = time.monotonic()
            logger.warning("shard %s has waited %.0f min for %s: is shard 0 running (same flags)?", shard,
                           (last_note - started) / 60, path)
    return found


# ------------------------------------------------------------------------------------------- the rows


def previous_records(out: Path) -> dict:
    """Rows an earlier run wrote into ``out`` (attack.json and shard files), keyed by ``(index, stem, seed, run)``."""
    entries = []
    if (out / "attack.json").is_file():
        try:
            entries += json.loads((out / "attack.json").read_text()).get("videos", [])
        except (OSError, ValueError):
            pass
    for path in shard_files(out, ATTACK_KIND):
        try:
            entries += list(read_shard_file(path)["done"].values())
        except UserError:
            pass
    return {(e.get("index"), e.get("stem"), e.get("seed"), e.get("run")): e for e in entries if isinstance(e, dict)}


def render_row(family, pipe, args, size, vectors, detector, out, index, prompt, seed, run) -> dict:
    """Render one prompt clean, erased and attacked; write its videos; return its record for attack.json."""
    from receler import inference
    from receler.attack import padding_positions
    from receler.media import frame_grid, save_png, side_by_side, write_video

    device = next(pipe.transformer.parameters()).device
    with torch.no_grad():
        cond = {k: v.detach() for k, v in family.encode_prompts(pipe, [prompt], device).items()}
    positions = padding_positions(family, pipe, [prompt], args.num_tokens).to(device)
    attacked_cond = family.with_soft_tokens(cond, positions, vectors.to(device))
    steps, guidance = args.num_inference_steps, args.guidance_scale
    videos = {
        "clean": render(family, pipe, seed, size, steps, guidance, text=prompt, erasers=False),
        "erased": render(family, pipe, seed, size, steps, guidance, text=prompt),
        "attacked": render(family, pipe, seed, size, steps, guidance, cond=attacked_cond),
    }
    prefix = inference.row_prefix(out, index, prompt)
    entry = {"index": index, "stem": prefix.name, "prompt": prompt, "seed": seed, "run": run, "files": {}}
    frame_flags = {}
    for side, video in videos.items():
        path = inference.side_path(prefix, side)
        write_video(video, path, fps=args.fps)
        entry["files"][side] = path.name
        if detector is not None:
            frame_flags[side] = [bool(f) for f in detector.frames(video)]
            entry[f"{side}_shows_concept"] = bool(detector.video(video, frame_flags[side]))
    if detector is not None:
        entry["frames_show_concept"] = frame_flags
    write_video(side_by_side(videos["erased"], videos["attacked"], labels=("erased", "attacked")),
                inference.side_path(prefix, "compare"), fps=args.fps)
    save_png(frame_grid([(s, v) for s, v in videos.items()]), inference.side_path(prefix, "grid", ".png"))
    return entry


def reusable(entry, out: Path) -> bool:
    from receler import inference

    files = [out / name for name in entry.get("files", {}).values()]
    prefix = out / entry["stem"]
    extra = [inference.side_path(prefix, "compare"), inference.side_path(prefix, "grid", ".png")]
    return len(files) == len(SIDES) and all(p.is_file() for p in files + extra)


def build_report(meta: dict, entries: list) -> dict:
    """attack.json from the run's fixed fields and every row's record (rates computed over the rows)."""
    concept_rate = None
    if meta["detector"] is not None:
        concept_rate = {side: rates([(e[f"{side}_shows_concept"], e["frames_show_concept"][side]) for e in entries])
                        for side in SIDES}
    report = {k: v for k, v in meta.items() if k != "detector"}
    return {**report, "detector": meta["detector"], "concept_rate": concept_rate, "videos": entries}


def summary_line(report: dict) -> str | None:
    if report["detector"] is None:
        return None
    r, losses = report["concept_rate"], report["loss_curve"]
    return (f"concept rate ({report['detector']}): clean {r['clean']['rate']:.2f}, erased {r['erased']['rate']:.2f}, "
            f"attacked {r['attacked']['rate']:.2f}; attack loss {losses[0]:.4g} -> {losses[-1]:.4g}")


def merge_attack(folder) -> dict:
    """Write attack.json from the ``attack.shard-K-of-N.json`` files of ``folder`` (every row exactly once)."""
    records, meta = merge_rows(folder, ATTACK_KIND)
    report = build_report(meta, records)
    atomic_write_json(Path(folder) / "attack.json", report)
    return report


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    from receler import inference
    from receler.attack import padding_positions
    from receler.prompts import load_prompts

    family = resolve_family(args.model_family, args.model_path)
    for path in args.eraser_path:
        inference.check_eraser_path(path, family)
    shard = current_shard(args.shard)
    if args.prompts_file:
        rows = [(r.prompt, r.seed if r.seed is not None else args.seed) for r in load_prompts(args.prompts_file).rows]
    else:
        rows = [(args.prompt, args.seed)]
    detector = make_detector(args.detector, args.target_concept)
    device = inference.resolve_device(process_device(args.device))
    pipe, _ = inference.load_pipeline_with_erasers(family, args.model_path, DTYPES[args.dtype], args.eraser_path,
                                                   eraser_weight=args.eraser_weight, device=device)
    frames, height, width = family.default_video_size(pipe)
    size = (family.round_frames(args.num_frames or frames), args.height or height, args.width or width)

    out = Path(args.output_dir)
    make_folder(out)
    prompts = [p for p, _ in rows]
    settings = learn_settings(args, prompts, size)
    soft_path = out / SOFT_PROMPT_FILE
    found = load_soft_prompt(soft_path, settings)
    if found is None and shard.index != 0:
        found = wait_for_soft_prompt(soft_path, settings, shard)
    if found is not None:
        vectors, losses = found
        logger.info("using the soft prompt in %s (learned with the same settings)", soft_path)
    else:
        with tqdm(total=args.steps, desc="attack", leave=False) as bar:  # closed too when the prompts are refused
            soft, _, _, losses = attack_prompts(
                family, pipe, prompts, args.num_tokens, args.steps, args.lr, *size, args.num_inference_steps,
                seed=args.seed, loss_target=args.loss_target, eta=args.attack_eta,
                progress=lambda step, loss, soft: bar.update(1))
        vectors = soft.vectors.detach().cpu().contiguous()
        save_soft_prompt(soft_path, vectors, losses, settings, args)

    # A row is redone unless an earlier run rendered it with this soft prompt and these render settings.
    run = fingerprint({"soft_prompt": settings, "guidance_scale": args.guidance_scale, "fps": args.fps,
                       "detector": detector.name if detector is not None else None})
    previous = previous_records(out)
    meta = {
        "model_path": str(args.model_path), "eraser_path": _paths(args.eraser_path), "target_concept": args.target_concept,
        "settings": {k: v for k, v in vars(args).items() if k not in ("verbose", "shard")},
        "video_size": {"num_frames": size[0], "height": size[1], "width": size[2]},
        "soft_prompt": {"file": SOFT_PROMPT_FILE, "num_tokens": args.num_tokens,
                        "positions": padding_positions(family, pipe, prompts, args.num_tokens).tolist()},
        "loss_curve": losses,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "detector": detector.name if detector is not None else None,
    }
    stems = [inference.row_prefix(out, i, prompt).name for i, prompt in enumerate(prompts)]
    log = None
    if shard.enabled:
        plan = fingerprint({"rows": [[stem, seed] for stem, (_, seed) in zip(stems, rows)], "run": run})
        log = ShardLog(out, ATTACK_KIND, shard, stems, plan, meta=meta)
    mine = shard.select(range(len(rows)))
    entries = []
    for i in tqdm(mine, desc="rendering", leave=False):
        prompt, seed = rows[i]
        entry = previous.get((i, stems[i], seed, run))
        if entry is None or not reusable(entry, out):
            entry = render_row(family, pipe, args, size, vectors, detector, out, i, prompt, seed, run)
        else:
            logger.info("row %d (%s) is already rendered with this soft prompt; kept", i, stems[i])
        entries.append(entry)
        if log is not None:
            log.add(i, entry)

    report = build_report(meta, entries)
    if log is None:
        atomic_write_json(out / "attack.json", report)
    elif log.finish():
        report = merge_attack(out)
        logger.info("every shard is done: attack.json holds all %d prompts", len(report["videos"]))
    else:
        print(f"shard {shard}: wrote {log.path}; the last shard to finish writes attack.json "
              f"(or run evaluation/merge.py {out})")
        return report
    if summary_line(report):
        print(summary_line(report))
    record_on_model_card(args.eraser_path, "attack", card_numbers(report), out / "attack.json")
    print(f"wrote {out / 'attack.json'}")
    return report


def card_numbers(report: dict) -> dict:
    """What the model card shows of an attack: its budget, its loss, and the concept rate per side."""
    settings = report.get("settings", {})
    numbers = {"target_concept": report.get("target_concept"), "prompts": len(report.get("videos", [])),
               "soft_tokens": settings.get("num_tokens"), "attack_steps": settings.get("steps"),
               "attack_loss_first": report.get("loss_first"), "attack_loss_last": report.get("loss_last"),
               "detector": report.get("detector")}
    for side, rate in (report.get("concept_rate") or {}).items():
        numbers[f"concept_rate_{side}"] = rate.get("rate")
    return numbers


if __name__ == "__main__":
    main()
