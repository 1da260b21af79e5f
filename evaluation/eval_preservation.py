"""How much the eraser changes videos it should leave alone: PSNR / SSIM between clean and erased
renders of the same prompt and seed, and optionally the CLIP score of each side against its prompt.

Example:
    python evaluation/eval_preservation.py --video_dir outputs/safe --output_dir outputs/eval \
        --clip_model_path /models/clip-vit-large-patch14 --prompt_file evaluation/data/safe_prompts.csv

Writes ``OUT/preservation.json`` (means over videos, per-pair values, skipped pairs, protocol) and
``OUT/preservation.csv`` (one row per pair).

With ``--shard K/N`` (or under ``accelerate launch``) a process scores every N-th prompt's videos into
``OUT/preservation.shard-K-of-N.json``; the last shard to finish (or ``evaluation/merge.py OUT``) writes the files above.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

# scripts/demo.sh runs this file by path; from a checkout that is not installed, make the repository importable.
try:
    import receler  # noqa: F401
    import evaluation  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

from evaluation.common import PROMPTS_JSON, add_eraser_path_argument, record_on_model_card, resolve_prompts
from evaluation.metrics import (
    IDENTICAL_PSNR,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    ClipScorer,
    MetricError,
    mean_or_none,
    video_psnr_ssim,
)
from receler.errors import UserError, cli_entry, setup_logging
from receler.io_utils import atomic_write_json, atomic_write_text
from receler.media import VideoReadError, find_video_pairs, read_video
from receler.sharding import Shard, ShardLog, add_shard_argument, current_shard, fingerprint, merge_rows, process_device

logger = logging.getLogger("eval_preservation")

PRESERVATION_KIND = "preservation"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eval_preservation.py",
        description=(
            "Preservation metrics for pairs <stem>_clean.mp4 / <stem>_erased.mp4 in --video_dir: per-frame PSNR "
            f"(identical frames = {IDENTICAL_PSNR:g} dB) and SSIM (Gaussian window, per RGB channel), averaged per "
            "video and over videos; with --clip_model_path also the CLIP score of each side against its prompt."
        ),
    )
    parser.add_argument("--video_dir", required=True, help="Folder holding the rendered .mp4 pairs (not searched recursively).")
    add_eraser_path_argument(parser)
    parser.add_argument("--output_dir", required=True, help="Folder for preservation.json and preservation.csv (created if missing).")
    parser.add_argument(
        "--clip_model_path",
        default=None,
        help=(
            "Local CLIP model folder in transformers format (CLIPModel + tokenizer + preprocessor_config.json). "
            "When given, the CLIP score (100 x cosine of image and text embeddings, clipped at 0, averaged over "
            "frames) is computed for every side. Nothing is downloaded. Default: no CLIP score."
        ),
    )
    parser.add_argument(
        "--prompt_file",
        default=None,
        help=(
            "Prompt file (.txt/.csv) the videos were rendered from, for the CLIP score: a video named 007_... takes "
            f"row 7; names without numbers are matched by sorted order. Without it, {PROMPTS_JSON} next to the "
            "videos (written by the inference scripts: {stem: prompt}) is used if present."
        ),
    )
    parser.add_argument("--reference_side", default="clean", help="Side used as reference for PSNR/SSIM (default: %(default)s).")
    parser.add_argument("--candidate_side", default="erased", help="Side compared to the reference (default: %(default)s).")
    parser.add_argument(
        "--frame_stride",
        type=int,
        default=1,
        help="Use every k-th frame (frames 0, k, 2k, ...) for all metrics. Default: 1 (every frame).",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="Frames per CLIP forward pass (default: %(default)s).")
    parser.add_argument("--device", default="cpu", help="Torch device for CLIP, e.g. cuda (default: %(default)s).")
    add_shard_argument(parser, "pairs (video groups <stem>_*.mp4 in sorted order)")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    args = parser.parse_args(argv)
    if args.frame_stride < 1:
        raise UserError(f"--frame_stride {args.frame_stride} must be 1 or more (1 = every frame).")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size} must be 1 or more.")
    if args.reference_side == args.candidate_side:
        raise UserError(f"--reference_side and --candidate_side are both '{args.reference_side}'; compare two different sides.")
    return args


def protocol_dict(args) -> dict:
    return {
        "reference_side": args.reference_side,
        "candidate_side": args.candidate_side,
        "frame_stride": args.frame_stride,
        "psnr": f"per frame over RGB, data range 255; identical frames = {IDENTICAL_PSNR:g} dB; mean over frames, then over videos",
        "ssim": (
            f"per frame, per RGB channel averaged; Gaussian window {SSIM_WINDOW} (sigma {SSIM_SIGMA}), K1={SSIM_K1}, "
            f"K2={SSIM_K2}, valid region; mean over frames, then over videos"
        ),
        "clip_score": "max(100 * cos(image, text), 0) per frame, mean over frames, then over videos",
        "clip_model_path": args.clip_model_path,
    }


def _read(path, stride):
    return read_video(path)[::stride]


def pair_groups(args) -> list:
    """``[(stem, {side: path}), ...]`` of ``args.video_dir``: one group per prompt (a row)."""
    groups = find_video_pairs(args.video_dir)
    if not groups:
        raise UserError(
            f"No .mp4 videos found in '{args.video_dir}'. Pass the folder the inference script wrote its "
            f"<stem>_{args.reference_side}.mp4 / <stem>_{args.candidate_side}.mp4 pairs to."
        )
    return groups


def make_scorer(args, scorer=None):
    if args.clip_model_path and scorer is None:
        scorer = ClipScorer(args.clip_model_path, device=process_device(args.device), batch_size=args.batch_size)
    return scorer


def score_pairs(args, groups: list, prompts: dict, scorer=None) -> list:
    """One record per group: ``{"pair": metrics}`` or ``{"skipped": why}``."""
    records = []
    sides_needed = (args.reference_side, args.candidate_side)
    for stem, sides in tqdm(groups, desc="preservation", unit="pair"):
        missing = [side for side in sides_needed if side not in sides]
        if missing:
            records.append({"skipped": {"stem": stem, "reason": f"no _{' / _'.join(missing)} video", "files": sorted(p.name for p in sides.values())}})
            continue
        ref_path, cand_path = sides[args.reference_side], sides[args.candidate_side]
        try:
            ref = _read(ref_path, args.frame_stride)
            cand = _read(cand_path, args.frame_stride)
            numbers = video_psnr_ssim(ref, cand)
        except (VideoReadError, MetricError) as err:
            logger.warning("Skipping '%s': %s", stem, err)
            records.append({"skipped": {"stem": stem, "reason": str(err), "files": [ref_path.name, cand_path.name]}})
            continue
        record = {
            "stem": stem,
            "reference": ref_path.name,
            "candidate": cand_path.name,
            "frames_compared": numbers["frames_compared"],
            "psnr": numbers["psnr"],
            "ssim": numbers["ssim"],
            "prompt": prompts.get(stem),
            "clip_score": None,
        }
        if scorer is not None:
            prompt = prompts.get(stem)
            if prompt is None:
                logger.warning("No prompt known for '%s'; its CLIP score is left out.", stem)
            else:
                record["clip_score"] = {args.reference_side: scorer.score(ref, prompt), args.candidate_side: scorer.score(cand, prompt)}
        record["psnr_per_frame"] = numbers["psnr_per_frame"]
        record["ssim_per_frame"] = numbers["ssim_per_frame"]
        records.append({"pair": record})
    return records


def result_from_records(records: list, protocol: dict, video_dir: str, with_clip: bool) -> dict:
    """The preservation.json content from every group's record (one process's, or the merged shards')."""
    pairs = [record["pair"] for record in records if "pair" in record]
    skipped = [record["skipped"] for record in records if "skipped" in record]
    clip = None
    if with_clip:
        sides_needed = (protocol["reference_side"], protocol["candidate_side"])
        clip = {
            side: mean_or_none([p["clip_score"][side] if p["clip_score"] else None for p in pairs]) for side in sides_needed
        }
    if not pairs:
        logger.warning("No complete, readable pair in '%s'; every metric is null. See 'skipped'.", video_dir)
    return {
        "psnr": mean_or_none([p["psnr"] for p in pairs]),
        "ssim": mean_or_none([p["ssim"] for p in pairs]),
        "clip_score": clip,
        "num_pairs": len(pairs),
        "protocol": protocol,
        "video_dir": video_dir,
        "pairs": pairs,
        "skipped": skipped,
    }


def evaluate_folder(args, scorer=None) -> dict:
    groups = pair_groups(args)
    scorer = make_scorer(args, scorer)
    prompts = resolve_prompts([stem for stem, _ in groups], args.video_dir, args.prompt_file) if scorer else {}
    records = score_pairs(args, groups, prompts, scorer)
    return result_from_records(records, protocol_dict(args), str(Path(args.video_dir).resolve()), scorer is not None)


def write_result(output_dir, result: dict) -> None:
    output_dir = Path(output_dir)
    protocol = result["protocol"]
    atomic_write_json(output_dir / "preservation.json", result)
    atomic_write_text(output_dir / "preservation.csv", csv_text(result, protocol["reference_side"], protocol["candidate_side"]))


def merge_shards(output_dir) -> dict:
    """Write preservation.json / .csv from the ``preservation.shard-K-of-N.json`` files of ``output_dir``."""
    records, meta = merge_rows(output_dir, PRESERVATION_KIND)
    result = result_from_records(records, meta["protocol"], meta["video_dir"], meta["clip"])
    write_result(output_dir, result)
    return result


def evaluate_shard(args, shard: Shard, scorer=None) -> dict | None:
    """Score this shard's pairs into ``preservation.shard-K-of-N.json``; the merged result when every shard is done."""
    groups = pair_groups(args)
    mine = shard.select(range(len(groups)))
    scorer = make_scorer(args, scorer) if mine else None
    with_clip = bool(args.clip_model_path) or scorer is not None
    # Prompts are matched over the whole folder (by row number or sorted position), as one process does.
    prompts = resolve_prompts([stem for stem, _ in groups], args.video_dir, args.prompt_file) if with_clip else {}
    protocol, video_dir = protocol_dict(args), str(Path(args.video_dir).resolve())
    plan = fingerprint({"videos": [[stem, sorted(p.name for p in sides.values())] for stem, sides in groups],
                        "protocol": protocol})
    log = ShardLog(args.output_dir, PRESERVATION_KIND, shard, [stem for stem, _ in groups], plan,
                   meta={"protocol": protocol, "video_dir": video_dir, "clip": with_clip})
    for index, record in zip(mine, score_pairs(args, [groups[i] for i in mine], prompts, scorer)):
        log.add(index, record, write=False)
    return merge_shards(args.output_dir) if log.finish() else None


def csv_text(result: dict, reference_side: str, candidate_side: str) -> str:
    columns = ["stem", "reference", "candidate", "frames_compared", "psnr", "ssim", f"clip_{reference_side}", f"clip_{candidate_side}", "prompt"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for pair in result["pairs"]:
        clip = pair["clip_score"] or {}
        writer.writerow(
            {
                "stem": pair["stem"],
                "reference": pair["reference"],
                "candidate": pair["candidate"],
                "frames_compared": pair["frames_compared"],
                "psnr": f"{pair['psnr']:.4f}",
                "ssim": f"{pair['ssim']:.6f}",
                f"clip_{reference_side}": "" if reference_side not in clip else f"{clip[reference_side]:.4f}",
                f"clip_{candidate_side}": "" if candidate_side not in clip else f"{clip[candidate_side]:.4f}",
                "prompt": pair["prompt"] or "",
            }
        )
    return buffer.getvalue()


def format_summary(result: dict) -> str:
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [
        f"pairs compared: {result['num_pairs']} (skipped {len(result['skipped'])})",
        f"PSNR (dB):      {num(result['psnr'], '.2f')}",
        f"SSIM:           {num(result['ssim'], '.4f')}",
    ]
    if result["clip_score"] is not None:
        for side, value in result["clip_score"].items():
            lines.append(f"CLIP score {side + ':':<8}{num(value, '.2f')}")
    return "\n".join(lines)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    output_dir = Path(args.output_dir)
    shard = current_shard(args.shard)
    if shard.enabled:
        result = evaluate_shard(args, shard)
        if result is None:
            print(f"shard {shard}: wrote {output_dir / shard.file_name(PRESERVATION_KIND)}; the last shard to finish "
                  f"writes preservation.json (or run evaluation/merge.py {output_dir})")
            return None
    else:
        result = evaluate_folder(args)
        write_result(output_dir, result)
    print(format_summary(result))
    record_on_model_card(args.eraser_path, "preservation", result, output_dir / "preservation.json")
    print(f"wrote {output_dir / 'preservation.json'} and {output_dir / 'preservation.csv'}")
    return result


if __name__ == "__main__":
    main()
