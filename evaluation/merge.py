"""Merge what sharded runs wrote into the files one process writes, checking that every row is there exactly once.

    python evaluation/merge.py outputs/videos              # prompts.shard-K-of-N.json -> prompts.json
    python evaluation/merge.py outputs/eval outputs/attack  # nudity / preservation / attack shards

Runs with ``--shard K/N`` or under ``accelerate launch`` note their rows in ``<kind>.shard-K-of-N.json`` next to
their outputs, and the last shard to finish merges by itself. This command merges by hand (e.g. after a shard
that died was rerun with other flags, or to check a folder): every kind found in a folder is merged:

- ``prompts`` (the rendering scripts) -> ``prompts.json``
- ``attack`` (``evaluation/attack.py``) -> ``attack.json``
- ``nudity`` (``evaluation/eval_nudity.py``) -> ``nudity.json``, ``nudity.csv``
- ``preservation`` (``evaluation/eval_preservation.py``) -> ``preservation.json``, ``preservation.csv``

A row that no shard finished, or that two shard files hold, is refused with its index and name; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import receler  # noqa: F401
    import evaluation  # noqa: F401
except ImportError:  # run as `python evaluation/merge.py` without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from receler.errors import UserError, cli_entry, setup_logging
from receler.sharding import kinds_in


def _merge_prompts(folder):
    from receler.inference import PROMPTS_JSON, merge_prompts

    return f"{len(merge_prompts(folder))} prompts -> {Path(folder) / PROMPTS_JSON}"


def _merge_attack(folder):
    from evaluation.attack import merge_attack

    return f"{len(merge_attack(folder)['videos'])} prompts -> {Path(folder) / 'attack.json'}"


def _merge_nudity(folder):
    from evaluation.eval_nudity import merge_shards

    result = merge_shards(folder)
    return f"{result['num_videos']} videos, {len(result['skipped'])} skipped -> {Path(folder) / 'nudity.json'}"


def _merge_preservation(folder):
    from evaluation.eval_preservation import merge_shards

    result = merge_shards(folder)
    return f"{result['num_pairs']} pairs, {len(result['skipped'])} skipped -> {Path(folder) / 'preservation.json'}"


MERGERS = {"prompts": _merge_prompts, "attack": _merge_attack, "nudity": _merge_nudity, "preservation": _merge_preservation}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="merge.py",
        description="Merge the <kind>.shard-K-of-N.json files that sharded runs (--shard K/N, accelerate launch) wrote "
        "into prompts.json / attack.json / nudity.json / preservation.json, refusing a row that is missing or present twice.",
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="folders holding shard files: a rendering run's --output_path, an evaluation's --output_dir")
    p.add_argument("--kind", choices=tuple(MERGERS), default=None,
                   help="merge only this kind of shard file (default: every kind found in each folder)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging(args.verbose)
    merged = {}
    for folder in args.folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder} is not a folder. Pass the folder a sharded run wrote into (its --output_path / --output_dir).")
        kinds = [k for k in kinds_in(folder) if k in MERGERS and (args.kind is None or k == args.kind)]
        if not kinds:
            what = f"{args.kind}.shard-K-of-N.json" if args.kind else "<kind>.shard-K-of-N.json"
            raise UserError(f"{folder} holds no {what} files: nothing to merge. Sharded runs (--shard K/N or accelerate "
                            "launch) write them next to their outputs.")
        for kind in kinds:
            line = MERGERS[kind](folder)
            merged[(str(folder), kind)] = line
            print(f"{kind}: {line}")
    return merged


if __name__ == "__main__":
    main()
