"""CLI: write a tiny random-weight pipeline folder (no download, seconds on a CPU)."""

import argparse
import logging

from receler.errors import cli_entry, setup_logging
from receler.tiny import TINY_FAMILIES, save_tiny_pipeline

logger = logging.getLogger("receler.tiny")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m receler.tiny",
        description="Write a tiny diffusers pipeline folder with random weights, built offline, "
        "for tests and demos in place of a real video model.",
    )
    p.add_argument("--family", choices=TINY_FAMILIES, default="cogvideox", help="model family to build (default: cogvideox)")
    p.add_argument("--output_dir", required=True, help="folder to write the pipeline into (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    p.add_argument(
        "--scheduler",
        choices=["ddim", "dpm"],
        default=None,
        help="CogVideoX only: DDIM like CogVideoX-2b (default) or the DPM solver used for 5b",
    )
    p.add_argument(
        "--rotary",
        action="store_true",
        help="CogVideoX only: rotary position embeddings like CogVideoX-5b (default: sincos like 2b)",
    )
    p.add_argument(
        "--llama_tokenizer",
        choices=["words", "chars"],
        default="words",
        help="HunyuanVideo only: 'words' (default) writes the tiny word-level Llama tokenizer with its "
        "prompt_template.json; 'chars' writes a character-level one and no template file, like a folder whose "
        "tokenizer is not the original",
    )
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    kwargs = {"seed": args.seed}
    if args.family == "cogvideox":
        kwargs.update(scheduler=args.scheduler or "ddim", rotary=args.rotary)
    if args.family == "hunyuan_video":
        kwargs.update(llama_tokenizer=args.llama_tokenizer)
    folder = save_tiny_pipeline(args.family, args.output_dir, **kwargs)
    logger.info("wrote a tiny %s pipeline to %s", args.family, folder)


if __name__ == "__main__":
    main()
