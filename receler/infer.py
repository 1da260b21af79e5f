"""The inference CLI of every family: clean vs erased renders (and baselines) side by side.

    receler-infer --model_path models/CogVideoX-5b --eraser_path erasers/x --prompt "..." --generate_clean

reads the family from the model folder and takes that family's flags and defaults; ``test_cogvideo.py``,
``test_hunyuan.py``, ``test_wan.py`` ... are the same CLI bound to one family. The rendering itself is
:mod:`receler.inference`; the family's defaults and extra flags are its ``inference`` and
``inference_plan`` (``receler/families/``).
"""

import argparse

from . import inference
from .errors import cli_entry, setup_logging
from .families import FAMILY_NAMES, all_families, get_family, resolve_family


def plan_class(family):
    return family.inference_plan or inference.InferencePlan


def build_parser(family) -> argparse.ArgumentParser:
    parser = inference.build_parser(family.inference)
    plan_class(family).add_arguments(parser)
    return parser


def parse_args(family, argv=None):
    args = build_parser(family).parse_args(argv)
    inference.finish_args(args)
    return args


def run(family, argv=None) -> dict:
    args = parse_args(family, argv)
    setup_logging(args.verbose)
    return plan_class(family)(family, args).run()


def family_cli(name: str) -> tuple:
    """``(build_parser, parse_args, main)`` of the inference CLI bound to family ``name`` (the seed-named
    scripts are these three functions)."""
    family = get_family(name)

    @cli_entry
    def main(argv=None):
        return run(family, argv)

    return (lambda: build_parser(family)), (lambda argv=None: parse_args(family, argv)), main


@cli_entry
def main(argv=None):
    """``receler-infer``: the family comes from ``--model_path`` (``--model_family`` overrides it)."""
    pre = argparse.ArgumentParser(
        prog="receler-infer", add_help=False,
        description="Render prompts clean (erasers off) and erased on one loaded model, side by side. The model "
        "family is read from --model_path; `receler-infer --model_path FOLDER --help` lists its flags. Families: "
        + ", ".join(f"{f.display_name} ({f.inference.script})" for f in all_families()),
    )
    pre.add_argument("--model_path", help="local diffusers pipeline folder (nothing is downloaded)")
    pre.add_argument("--model_family", default="auto", choices=("auto",) + FAMILY_NAMES,
                     help="model family (default: read from the folder's model_index.json)")
    pre.add_argument("-h", "--help", action="store_true", help="show the flags (of --model_path's family) and exit")
    known, rest = pre.parse_known_args(argv)
    if known.model_path is None:
        if known.help:
            pre.print_help()
            raise SystemExit(0)
        pre.error("--model_path is required (the family's flags depend on it)")
    family = resolve_family(known.model_family, known.model_path)
    forwarded = ["--model_path", known.model_path, *rest] + (["--help"] if known.help else [])
    return run(family, forwarded)


if __name__ == "__main__":
    main()
