"""How long the evaluation takes per rendered video on a CPU, and print a table.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_speed.py                       # CogVideoX size, 49 x 480x720
    OMP_NUM_THREADS=1 python benchmarks/bench_eval_speed.py --num_frames 81 --height 480 --width 832   # Wan 2.1

Decides whether the evaluation CLIs need sharding like the renders: a rendered video costs minutes of GPU
time, so an evaluation step that takes seconds per video on a CPU runs as one process over the merged folder.
Every stage is the code the evaluation CLIs run, on a synthetic video pair written as mp4 (a moving gradient
with noise, so the encoder and decoder do real work):

- ``decode``: :func:`receler.media.read_video` of one mp4
- ``nudenet``: NudeNet over every frame of one video (``evaluation/eval_nudity.py``, needs ``.[eval]``)
- ``psnr+ssim``: PSNR and SSIM of one clean/erased pair (``evaluation/eval_preservation.py``)
- ``clip``: CLIP ViT-L/14 image embeddings of every frame of one video (``--clip_model_path``); random weights
  built from the architecture's config (nothing is downloaded; the time does not depend on the weights)
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_frames", type=int, default=49, help="frames per video (default: 49, CogVideoX)")
    p.add_argument("--height", type=int, default=480, help="video height (default: 480)")
    p.add_argument("--width", type=int, default=720, help="video width (default: 720)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per stage; the table shows the fastest (default: 2)")
    p.add_argument("--stages", default="decode,nudenet,psnr+ssim,clip", help="comma-separated stages to time")
    p.add_argument("--prompts", type=int, default=1000, help="prompt-set size for the 'one process, N prompts' column")
    return p.parse_args(argv)


def synthetic_video(frames: int, height: int, width: int, shift: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        base = (x + 3 * f + shift) % 256
        video[f, ..., 0] = base
        video[f, ..., 1] = (y + 2 * f) % 256
        video[f, ..., 2] = (x + y + shift) % 256
        video[f] = np.clip(video[f].astype(np.int16) + rng.integers(-8, 9, video[f].shape), 0, 255).astype(np.uint8)
    return video


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def clip_vit_l14(folder: Path):
    """A ClipScorer over a randomly initialised CLIP ViT-L/14 saved in ``folder`` (the scorer's own loading path)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from evaluation.metrics import ClipScorer
    from receler.tiny.hunyuan_video import build_clip_tokenizer

    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           patch_size=14, image_size=224),
        projection_dim=768,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=build_clip_tokenizer()).save_pretrained(folder)
    return ClipScorer(folder)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from evaluation.metrics import video_psnr_ssim
    from receler.media import read_video, write_video

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    shape = (args.num_frames, args.height, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_video(synthetic_video(*shape, shift=0, seed=0), tmp / "a_clean.mp4", fps=8)
        write_video(synthetic_video(*shape, shift=5, seed=1), tmp / "a_erased.mp4", fps=8)
        clean, erased = read_video(tmp / "a_clean.mp4"), read_video(tmp / "a_erased.mp4")
        for stage in stages:
            if stage == "decode":
                seconds = fastest(lambda: read_video(tmp / "a_clean.mp4"), args.repeats)
                rows.append((stage, "video", seconds))
            elif stage == "nudenet":
                from evaluation.nudity import detect_frames, load_detector

                detector = load_detector()
                seconds = fastest(lambda: detect_frames(detector, clean), args.repeats)
                rows.append((stage, "video", seconds))
            elif stage == "psnr+ssim":
                seconds = fastest(lambda: video_psnr_ssim(clean, erased), args.repeats)
                rows.append((stage, "pair", seconds))
            elif stage == "clip":
                scorer = clip_vit_l14(tmp / "clip")
                seconds = fastest(lambda: scorer.image_embeddings(clean), args.repeats)
                rows.append(("clip ViT-L/14", "video", seconds))
            else:
                raise SystemExit(f"unknown stage {stage!r}; choose from decode, nudenet, psnr+ssim, clip")

    print(f"{args.num_frames} frames at {args.height}x{args.width}, torch threads {torch.get_num_threads()}, "
          f"fastest of {args.repeats}")
    print(f"| stage | per | seconds | s/frame | {args.prompts} prompts x 2 sides, one process |")
    print("|---|---|---|---|---|")
    for stage, per, seconds in rows:
        videos = args.prompts * (1 if per == "pair" else 2)
        print(f"| {stage} | {per} | {seconds:.2f} | {seconds / args.num_frames:.3f} | {videos * seconds / 3600:.2f} h |")


if __name__ == "__main__":
    main()
