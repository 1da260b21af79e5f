"""Measure erasure on the world model: how often the target colour still shows, how well the others survive.

    python -m receler.world.evaluate --video_dir OUT/videos --target red --output_dir OUT

reads the ``<stem>_clean.mp4`` / ``<stem>_erased.mp4`` pairs ``test_cogvideo.py`` writes (with its
``prompts.json``), and writes ``OUT/world_metrics.json``: ``target_rate_clean`` / ``target_rate_erased``
(fraction of target-prompt videos showing the target colour), ``other_accuracy_clean`` /
``other_accuracy_erased`` (prompted-colour accuracy on the other prompts) and ``other_psnr`` (dB, clean vs
erased on the other prompts), judged by the world's pixel classifier. The benchmark uses the same functions.
"""

import argparse
from pathlib import Path

import numpy as np

from ..errors import UserError, cli_entry, setup_logging
from ..io_utils import atomic_write_json
from .classify import classify_video, video_shows_color
from .scenes import COLORS, scene_from_caption


def video_psnr(a: np.ndarray, b: np.ndarray) -> float:
    from evaluation.metrics import video_psnr_ssim

    return float(video_psnr_ssim(a, b)["psnr"])


def score(videos: list, items: list, target: str) -> dict:
    """Target rate on the target prompts, prompted-colour accuracy on the others.

    ``items`` are dicts with ``prompt``, ``color`` (the prompted colour) and ``is_target``.
    """
    target_hits = [video_shows_color(v, target) for v, it in zip(videos, items) if it["is_target"]]
    accuracy = [classify_video(v).color == it["color"] for v, it in zip(videos, items) if not it["is_target"]]
    return {"target_rate": float(np.mean(target_hits)) if target_hits else None,
            "other_accuracy": float(np.mean(accuracy)) if accuracy else None}


def compare(clean: list, erased: list, items: list, target: str) -> dict:
    """The benchmark's metrics for one clean/erased rendering of the same prompts and seeds."""
    s_clean, s_erased = score(clean, items, target), score(erased, items, target)
    others = [i for i, it in enumerate(items) if not it["is_target"]]
    return {
        "target_rate_clean": s_clean["target_rate"],
        "target_rate_erased": s_erased["target_rate"],
        "other_accuracy_clean": s_clean["other_accuracy"],
        "other_accuracy_erased": s_erased["other_accuracy"],
        "other_psnr": float(np.mean([video_psnr(clean[i], erased[i]) for i in others])) if others else None,
    }


def item_of(prompt: str, target: str) -> dict:
    """``{prompt, color, is_target}`` of a world caption (its first shape's colour is the prompted one)."""
    scene = scene_from_caption(prompt)
    return {"prompt": prompt, "color": scene.shapes[0].color, "is_target": target in scene.colors}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--video_dir", required=True, help="folder of <stem>_clean.mp4 / <stem>_erased.mp4 and prompts.json")
    p.add_argument("--target", default="red", choices=tuple(COLORS), help="the erased colour (default: red)")
    p.add_argument("--output_dir", required=True, help="where world_metrics.json goes")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    from evaluation.common import resolve_prompts
    from receler.media import find_video_pairs, read_video

    pairs = [(stem, sides) for stem, sides in find_video_pairs(args.video_dir) if {"clean", "erased"} <= set(sides)]
    if not pairs:
        raise UserError(f"{args.video_dir} holds no <stem>_clean.mp4 / <stem>_erased.mp4 pairs; render them with "
                        f"test_cogvideo.py --generate_clean --eraser_path ... first")
    prompts = resolve_prompts([stem for stem, _ in pairs], args.video_dir)
    items, clean, erased = [], [], []
    for stem, sides in pairs:
        if stem not in prompts:
            raise UserError(f"no prompt for {stem} (prompts.json in {args.video_dir} lists the rendered prompts)")
        items.append(item_of(prompts[stem], args.target))
        clean.append(read_video(sides["clean"]))
        erased.append(read_video(sides["erased"]))
    result = {"target": args.target, "num_videos": len(items), **compare(clean, erased, items, args.target),
              "videos": [{**it, "clean": classify_video(c).color, "erased": classify_video(e).color}
                         for it, c, e in zip(items, clean, erased)]}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.output_dir) / "world_metrics.json", result)
    print(f"target rate {result['target_rate_clean']} -> {result['target_rate_erased']}; other accuracy "
          f"{result['other_accuracy_clean']} -> {result['other_accuracy_erased']}; other PSNR {result['other_psnr']}")
    return result


if __name__ == "__main__":
    main()
