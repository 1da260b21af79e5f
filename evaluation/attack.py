"""Attack an eraser: learn a soft prompt that brings the erased concept back, and measure how much returns.

    python evaluation/attack.py --model_path models/world-cogvideox --eraser_path outputs/erase_red \\
        --prompts_file prompts.txt --target_concept red --num_tokens 4 --steps 200 --output_dir outputs/attack

Writes, in --output_dir: ``soft_prompt.safetensors`` (the learned vectors), per prompt
``{i:03d}_{slug}_clean.mp4`` / ``_erased.mp4`` / ``_attacked.mp4`` / ``_compare.mp4`` (erased | attacked) /
``_grid.png``, and ``attack.json``: the attack loss curve and, where a detector exists (the bundled world's
pixel classifier for its colours, NudeNet for nudity), the concept rate of clean, erased and attacked videos,
overall and per frame (the re-emergence curve). The method is in ``receler/attack.py``.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from receler.attack import attack_prompts
from receler.devices import DTYPES
from receler.erasers.utils import DisableEraser
from receler.errors import UserError, cli_entry, setup_logging
from receler.families import FAMILY_NAMES, resolve_family
from receler.io_utils import atomic_write, atomic_write_json

logger = logging.getLogger("evaluation.attack")



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
    p.add_argument("--eraser_path", required=True, help="the eraser folder to attack (the trainer's --output_dir)")
    p.add_argument("--eraser_weight", type=float, default=1.0, help="inference-time eraser strength (HunyuanVideo)")
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
    p.add_argument("--output_dir", required=True, help="where the soft prompt, the videos and attack.json go")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if (args.prompt is None) == (args.prompts_file is None):
        p.error("give exactly one of --prompt or --prompts_file")
    return args


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


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    from receler import inference
    from receler.media import frame_grid, save_png, side_by_side, write_video
    from receler.prompts import load_prompts
    from safetensors.torch import save_file

    family = resolve_family(args.model_family, args.model_path)
    inference.check_eraser_path(args.eraser_path, family)
    if args.prompts_file:
        rows = [(r.prompt, r.seed if r.seed is not None else args.seed) for r in load_prompts(args.prompts_file).rows]
    else:
        rows = [(args.prompt, args.seed)]
    detector = make_detector(args.detector, args.target_concept)
    device = inference.resolve_device(args.device)
    pipe, _ = inference.load_pipeline_with_erasers(family, args.model_path, DTYPES[args.dtype], args.eraser_path,
                                                   eraser_weight=args.eraser_weight, device=device)
    frames, height, width = family.default_video_size(pipe)
    size = (args.num_frames or frames, args.height or height, args.width or width)
    family.check_frames(size[0])

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=args.steps, desc="attack", leave=False)
    soft, positions, conds, losses = attack_prompts(
        family, pipe, [p for p, _ in rows], args.num_tokens, args.steps, args.lr, *size, args.num_inference_steps,
        seed=args.seed, loss_target=args.loss_target, eta=args.attack_eta, progress=lambda step, loss, soft: bar.update(1))
    bar.close()
    vectors = soft.vectors.detach().cpu().contiguous()
    atomic_write(out / "soft_prompt.safetensors", lambda tmp: save_file(
        {"vectors": vectors}, tmp, metadata={"model_path": str(args.model_path), "eraser_path": str(args.eraser_path),
                                             "num_tokens": str(args.num_tokens), "placement": "first padding positions"}))

    flags = {"clean": [], "erased": [], "attacked": []}
    videos_json = []
    for p, (prompt, seed) in enumerate(tqdm(rows, desc="rendering", leave=False)):
        attacked_cond = {k: v.detach() for k, v in soft.insert(family, conds[p], positions[p : p + 1]).items()}
        videos = {
            "clean": render(family, pipe, seed, size, args.num_inference_steps, args.guidance_scale, text=prompt, erasers=False),
            "erased": render(family, pipe, seed, size, args.num_inference_steps, args.guidance_scale, text=prompt),
            "attacked": render(family, pipe, seed, size, args.num_inference_steps, args.guidance_scale, cond=attacked_cond),
        }
        prefix = inference.row_prefix(out, p, prompt)
        entry = {"prompt": prompt, "seed": seed, "files": {}}
        for side, video in videos.items():
            path = inference.side_path(prefix, side)
            write_video(video, path, fps=args.fps)
            entry["files"][side] = path.name
            if detector is not None:
                frame_flags = detector.frames(video)
                shown = detector.video(video, frame_flags)
                flags[side].append((shown, frame_flags))
                entry[f"{side}_shows_concept"] = bool(shown)
        write_video(side_by_side(videos["erased"], videos["attacked"], labels=("erased", "attacked")),
                    inference.side_path(prefix, "compare"), fps=args.fps)
        save_png(frame_grid([(s, v) for s, v in videos.items()]), inference.side_path(prefix, "grid", ".png"))
        videos_json.append(entry)

    report = {
        "model_path": str(args.model_path), "eraser_path": str(args.eraser_path), "target_concept": args.target_concept,
        "settings": {k: v for k, v in vars(args).items() if k not in ("verbose",)},
        "video_size": {"num_frames": size[0], "height": size[1], "width": size[2]},
        "soft_prompt": {"file": "soft_prompt.safetensors", "num_tokens": args.num_tokens,
                        "positions": positions.tolist()},
        "loss_curve": losses,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "detector": detector.name if detector is not None else None,
        "concept_rate": {side: rates(f) for side, f in flags.items()} if detector is not None else None,
        "videos": videos_json,
    }
    atomic_write_json(out / "attack.json", report)
    if detector is not None:
        r = report["concept_rate"]
        print(f"concept rate ({detector.name}): clean {r['clean']['rate']:.2f}, erased {r['erased']['rate']:.2f}, "
              f"attacked {r['attacked']['rate']:.2f}; attack loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    print(f"wrote {out / 'attack.json'}")
    return report


if __name__ == "__main__":
    main()
