"""Prompt files for erasing a concept from the world model: training pairs and the held-out evaluation set.

    python -m receler.world.files --target red --output_dir OUT [--quick]

writes ``OUT/train_prompts.csv`` (``prompt,preserve_prompt[,anchor_prompt]``: target captions of the seen
combinations, each with the same scene in another value and, with ``--anchors``, with the target left unsaid, or
with ``--anchor_to VALUE``, with that value in the target's place) and ``OUT/eval_prompts.csv`` (``prompt,seed,group,background,color,is_target,class``:
seen captions with new seeds, held-out captions, two-shape scenes and other values, on both backgrounds), readable
by the training CLI and by ``test_cogvideo.py --prompt_file``. Targets: a colour (``red``), a shape (``triangle``),
a direction (``left``) or a combination (``"red triangle"``).
"""

import argparse
import csv
import io
from pathlib import Path

from ..errors import UserError, cli_entry
from ..io_utils import atomic_write_text
from .targets import (MultiTarget, check_anchor_to, evaluation_items, multi_training_rows, parse_targets, prompt_rows,
                      training_rows)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_prompt_files(output_dir, target, quick: bool = False, anchors: bool = False,
                       anchor_to: str | None = None) -> tuple[Path, Path]:
    """``(train_prompts.csv, eval_prompts.csv)`` for ``target`` (a :class:`Target`) in ``output_dir``; with
    ``anchors`` the training file has an ``anchor_prompt`` column (the caption with the target left unsaid, or
    with the value ``anchor_to`` in its place; ``anchor_to`` implies ``anchors``)."""
    if anchor_to is not None:
        check_anchor_to(target, anchor_to)
    out = Path(output_dir)
    train = out / "train_prompts.csv"
    rows = (multi_training_rows(target, anchor_to) if isinstance(target, MultiTarget)
            else training_rows(target, anchor_to=anchor_to))
    if not anchors and anchor_to is None:
        rows = [{k: v for k, v in row.items() if k != "anchor_prompt"} for row in rows]
    atomic_write_text(train, _csv(rows))
    evaluation = out / "eval_prompts.csv"
    atomic_write_text(evaluation, _csv(prompt_rows(evaluation_items(target, quick=quick))))
    return train, evaluation


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.files", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="red",
                   help="what to erase: a colour, a shape, a direction, a combination such as 'red triangle', or "
                        "several joined by '+' (red+green: one training file with a 'concept' column)")
    p.add_argument("--output_dir", required=True, help="folder for train_prompts.csv and eval_prompts.csv")
    p.add_argument("--quick", action="store_true", help="the reduced evaluation set (a few prompts of each group)")
    p.add_argument("--anchors", action="store_true",
                   help="add an anchor_prompt column to train_prompts.csv: each caption with the target left unsaid "
                        "('a circle moving left ...' for red), for the trainer's anchored target")
    p.add_argument("--anchor_to", metavar="VALUE",
                   help="like --anchors, but the anchor names this value in the target's place ('a blue circle moving "
                        "left ...' for red with --anchor_to blue): the eraser is told what to draw instead")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    try:
        target = parse_targets(args.target)
    except ValueError as err:
        raise UserError(f"--target: {err}") from None
    try:
        paths = write_prompt_files(args.output_dir, target, args.quick, args.anchors, args.anchor_to)
    except ValueError as err:
        raise UserError(str(err)) from None
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
