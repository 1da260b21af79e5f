"""Train an eraser that removes a concept from a text-to-video model, from prompts alone.

    python receler/train_unlearning_prompt_only.py --model_path models/world-cogvideox \\
        --target_concept red --prompts_file prompts.csv --output_dir runs/erase_red
    receler-train ...                  (the same command, installed as an entry point)

The output folder is the eraser (``eraser_config.json`` + weights), loadable by ``test_cogvideo.py``;
it also holds ``args.json``, ``train_log.jsonl``, ``loss.png`` and ``checkpoints/step_N/``. The flags are
the fields of :class:`receler.config.TrainConfig`; the training itself is :func:`receler.training.train`.

Exit codes: 0 finished (or stopped at ``--max_steps``), 2 a user error (one message, nothing overwritten),
130 stopped by Ctrl-C after saving a resumable checkpoint (so ``set -e`` scripts stop there).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receler.config import TrainConfig, build_parser, config_from_namespace  # noqa: E402
from receler.errors import RunInterrupted, cli_entry, setup_logging  # noqa: E402

DESCRIPTION = (
    "Train an eraser (a small adapter in every transformer block) that erases a concept from a text-to-video "
    "diffusion model, from prompts alone (T2VUnlearning). Only the eraser weights train; the backbone stays "
    "bit-identical."
)


def parse_args(argv=None) -> TrainConfig:
    """The :class:`~receler.config.TrainConfig` a command line asks for (validated)."""
    return config_from_namespace(build_parser(DESCRIPTION).parse_args(argv))


@cli_entry
def main(argv=None) -> dict:
    config = parse_args(argv)
    setup_logging(config.verbose)
    from receler.training import train

    result = train(config)
    if result.stopped == "interrupted":
        raise RunInterrupted(interrupted_message(result))
    return result.summary


def interrupted_message(result) -> str:
    """What a run stopped by Ctrl-C or SIGTERM saved, and how to continue it (the CLI then exits 130)."""
    checkpoint = result.output_dir / "checkpoints" / f"step_{result.updates}"
    if not checkpoint.is_dir():
        return (f"training stopped after {result.updates} updates, before anything was learned worth saving; "
                f"nothing to resume in {result.output_dir}.")
    return (f"training stopped after {result.updates} updates ({result.signal or 'Ctrl-C or SIGTERM'}). Saved: "
            f"the erasers trained so far in {result.output_dir} and the checkpoint {checkpoint}. The eraser is not "
            f"finished: continue with --resume_from {checkpoint}.")


if __name__ == "__main__":
    main()
