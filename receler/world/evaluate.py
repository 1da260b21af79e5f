"""Measure erasure on the world model from rendered videos: is the concept gone, what replaced it, what survives.

    python -m receler.world.evaluate --video_dir OUT/videos --target red --output_dir OUT

reads the ``<stem>_clean.mp4`` / ``<stem>_erased.mp4`` pairs ``test_cogvideo.py`` writes (with its
``prompts.json``) for prompts of the benchmark's evaluation set (``python -m receler.world.files``), and writes
``OUT/world_metrics.json``: target shown per group (seen / unseen / two-shape) clean and erased, the substitution
histogram, whether the rest of the prompt survived, the other values' accuracy (mean and worst) and PSNR.
:mod:`receler.world.measure` defines every number; the benchmark uses the same function.
"""

import argparse
from pathlib import Path

from ..errors import UserError, cli_entry, setup_logging
from ..io_utils import atomic_write_json
from .measure import measure
from .targets import evaluation_items, parse_target


def items_for(prompts: list[str], target) -> list[dict]:
    """The evaluation item of each rendered prompt (group, class, shapes), from the target's evaluation set."""
    known = {it["prompt"]: it for quick in (True, False) for it in evaluation_items(target, quick=quick)}
    missing = [p for p in prompts if p not in known]
    if missing:
        raise UserError(
            f"{len(missing)} rendered prompt(s) are not in the world benchmark's evaluation set for {target.name!r}, "
            f"e.g. {missing[0]!r}. Render the prompts of `python -m receler.world.files --target {target.name!r}` "
            f"(eval_prompts.csv), or pass the --target they were written for."
        )
    return [known[p] for p in prompts]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m receler.world.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--video_dir", required=True, help="folder of <stem>_clean.mp4 / <stem>_erased.mp4 and prompts.json")
    p.add_argument("--target", default="red",
                   help="the erased concept: a colour, shape, direction or combination such as 'red triangle'")
    p.add_argument("--output_dir", required=True, help="where world_metrics.json goes")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    from evaluation.common import resolve_prompts
    from receler.media import find_video_pairs, read_video

    try:
        target = parse_target(args.target)
    except ValueError as err:
        raise UserError(f"--target: {err}") from None
    pairs = [(stem, sides) for stem, sides in find_video_pairs(args.video_dir) if {"clean", "erased"} <= set(sides)]
    if not pairs:
        raise UserError(f"{args.video_dir} holds no <stem>_clean.mp4 / <stem>_erased.mp4 pairs; render them with "
                        f"test_cogvideo.py --generate_clean --eraser_path ... first")
    prompts = resolve_prompts([stem for stem, _ in pairs], args.video_dir)
    unknown = [stem for stem, _ in pairs if stem not in prompts]
    if unknown:
        raise UserError(f"no prompt for {unknown[0]} (prompts.json in {args.video_dir} lists the rendered prompts)")
    items = items_for([prompts[stem] for stem, _ in pairs], target)
    clean = [read_video(sides["clean"]) for _, sides in pairs]
    erased = [read_video(sides["erased"]) for _, sides in pairs]
    result = measure(clean, erased, items, target)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.output_dir) / "world_metrics.json", result)
    shown = result["target_shown"]
    print(f"{target.label}: shown {shown['clean']['all']:.0%} -> {shown['erased']['all']:.0%}; most common substitute "
          f"{result['substitution']['top']} ({result['substitution']['share']:.0%}); rest of prompt survives "
          f"{result['rest_of_prompt']['all']:.0%}; other accuracy worst class "
          f"{result['other_accuracy']['clean']['worst']:.0%} -> {result['other_accuracy']['erased']['worst']:.0%}; "
          f"PSNR {result['other_psnr']['mean']:.1f} dB mean, {result['other_psnr']['worst']:.1f} dB worst class")
    return result


if __name__ == "__main__":
    main()
