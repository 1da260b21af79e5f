"""Prompt files for erasing a colour from the world model: training pairs and the evaluation set.

    python -m receler.world.files --target red --output_dir OUT [--quick]

writes ``OUT/train_prompts.csv`` (``prompt,preserve_prompt``: every scene with the target colour, and the same
scene in another colour) and ``OUT/eval_prompts.csv`` (``prompt,seed,color,is_target``: the fixed evaluation
set, 72 prompts or 14 with ``--quick``), readable by the training CLI and by ``test_cogvideo.py --prompt_file``.
"""

import argparse
import csv
import io
from pathlib import Path

from ..errors import cli_entry
from ..io_utils import atomic_write_text
from .scenes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, evaluation_prompts


def training_pairs(target: str) -> list:
    """Prompts naming the target colour, each with a preserve prompt: the same scene in another colour."""
    others = [c for c in COLORS if c != target]
    scenes = [(s, d, b) for s in SHAPES for d in DIRECTIONS for b in BACKGROUNDS]
    pairs = []
    for i, (shape, direction, background) in enumerate(scenes):
        caption = f"a {{}} {shape} moving {direction} on a {background} background"
        pairs.append((caption.format(target), caption.format(others[i % len(others)])))
    return pairs


def _csv(header: list, rows: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_prompt_files(output_dir, target: str, quick: bool = False) -> tuple:
    out = Path(output_dir)
    train = out / "train_prompts.csv"
    atomic_write_text(train, _csv(["prompt", "preserve_prompt"], training_pairs(target)))
    items = evaluation_prompts(target_color=target, quick=quick)
    evaluation = out / "eval_prompts.csv"
    atomic_write_text(evaluation, _csv(["prompt", "seed", "color", "is_target"],
                                       [(it["prompt"], it["seed"], it["color"], int(it["is_target"])) for it in items]))
    return train, evaluation


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.files", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="red", choices=tuple(COLORS), help="the colour to erase (default: red)")
    p.add_argument("--output_dir", required=True, help="folder for train_prompts.csv and eval_prompts.csv")
    p.add_argument("--quick", action="store_true", help="the reduced evaluation set (14 prompts)")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    for path in write_prompt_files(args.output_dir, args.target, args.quick):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
