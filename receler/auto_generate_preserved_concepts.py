"""Choose the concepts an eraser must preserve: neighbours of the target that it should leave intact.

    python receler/auto_generate_preserved_concepts.py --target_concept nudity --num_concepts 20 \\
        --model_path models/CogVideoX-2b --output_file preserved_concepts.txt

Writes one concept per line to ``--output_file`` (what the trainer's ``--preserved_concepts_file`` reads)
and ``<output_file>.json`` beside it (each concept's score, category and method, and the run's settings).
``--method embedding`` (default) ranks a bundled vocabulary of everyday concepts with the model's own
text encoder, offline; ``--method llm`` asks an OpenAI-compatible endpoint; ``--method list`` filters a
file of your own.
"""

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receler.errors import UserError, cli_entry, setup_logging
from receler.families import FAMILY_NAMES
from receler.preserved_concepts import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LLM_BASE_URL,
    DEFAULT_LLM_MODEL,
    DEFAULT_MAX_SIMILARITY,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_TIMEOUT,
    METHODS,
    generate_preserved_concepts,
    write_preserved_concepts,
)

logger = logging.getLogger("receler.preserved")

DTYPES = ("auto", "float32", "float16", "bfloat16")  # receler.devices.DTYPES, named without importing torch


def add_generation_arguments(
    p: argparse.ArgumentParser,
    num_concepts_default: int = 20,
    seed_help: str = "seed sent to the LLM endpoint (embedding and list are deterministic without it)",
) -> None:
    """The flags that choose preserved concepts, shared with ``augment_prompts.py``."""
    g = p.add_argument_group("preserved concepts")
    g.add_argument("--method", choices=METHODS, default=None,
                   help="embedding: rank a vocabulary of everyday concepts by similarity to the target with the "
                   "model's own text encoder (offline; needs --model_path); llm: ask an OpenAI-compatible chat "
                   "endpoint; list: take concepts from --concepts_file. Default: embedding; without --model_path, "
                   "auto_generate_preserved_concepts.py falls back to list over --concepts_file or the bundled "
                   "vocabulary (one concept of each category in turn), with a warning saying what --model_path adds")
    g.add_argument("--num_concepts", type=int, default=num_concepts_default, help="how many concepts to choose")
    g.add_argument("--seed", type=int, default=0, help=seed_help)

    g = p.add_argument_group("embedding method")
    g.add_argument("--model_path", default=None,
                   help="local diffusers pipeline folder whose text encoder ranks the vocabulary (only its tokenizers "
                   "and text encoders are loaded; nothing is downloaded)")
    g.add_argument("--model_family", default="auto", choices=("auto",) + FAMILY_NAMES,
                   help="model family; auto reads the pipeline class from model_index.json")
    g.add_argument("--vocabulary_file", default=None,
                   help="candidate concepts instead of the bundled receler/data/concept_vocabulary.csv: a CSV with "
                   "columns concept,category (category optional) or a text file with one concept per line")
    g.add_argument("--min_similarity", type=float, default=DEFAULT_MIN_SIMILARITY,
                   help="bottom of the similarity band: less similar concepts count as unrelated. Lowered in steps "
                   "of 0.05 (and logged) when the band holds fewer than --num_concepts")
    g.add_argument("--max_similarity", type=float, default=DEFAULT_MAX_SIMILARITY,
                   help="top of the similarity band: more similar concepts count as near-synonyms of the target and "
                   "are left out (raised only if lowering the bottom to -1 still leaves too few)")
    g.add_argument("--center_embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract the vocabulary's mean embedding before the cosine similarity, which removes the "
                   "direction every prompt shares so the band means the same on every encoder")
    g.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="vocabulary entries per text-encoder batch")
    g.add_argument("--device", default=None, help="torch device for the text encoder (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="text encoder dtype; auto = bfloat16 on a GPU, float32 on a CPU")

    g = p.add_argument_group("llm method")
    g.add_argument("--llm_base_url", default=DEFAULT_LLM_BASE_URL,
                   help="base URL of an OpenAI-compatible API; the request goes to {base_url}/chat/completions "
                   "(e.g. http://localhost:8000/v1 for a local vLLM or llama.cpp server). The API key, if any, is "
                   "read from the OPENAI_API_KEY environment variable")
    g.add_argument("--llm_model", default=DEFAULT_LLM_MODEL, help="model name sent to the endpoint")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to wait for the endpoint's whole answer (connecting, waiting and reading together)")

    g = p.add_argument_group("list method")
    g.add_argument("--concepts_file", default=None,
                   help="candidate concepts, one per line (or a CSV with a 'concept' column); the first "
                   "--num_concepts that do not contain the target's words are taken")


def check_generation_args(args, fallback_to_list: bool = False) -> None:
    """Check the generation flags. Without ``--method``: embedding, or with ``fallback_to_list`` and no
    ``--model_path`` the list method (:func:`default_method`)."""
    if args.num_concepts < 1:
        raise UserError(f"--num_concepts must be at least 1 (got {args.num_concepts}).")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size}).")
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise UserError(f"--timeout must be a positive number of seconds (got {args.timeout}).")
    if args.method == "llm":
        from receler.preserved_concepts import check_llm_url

        check_llm_url(args.llm_base_url)
    if not -1.0 <= args.min_similarity <= args.max_similarity <= 1.0:
        raise UserError(
            f"--min_similarity {args.min_similarity} / --max_similarity {args.max_similarity}: the band must satisfy "
            "-1 <= min <= max <= 1 (cosine similarities), e.g. 0.2 and 0.8."
        )
    if args.method == "list" and args.concepts_file is None:
        raise UserError("--method list needs --concepts_file: a text file with one concept per line.")
    if args.method is None:
        args.method = default_method(args) if fallback_to_list else "embedding"
    if args.method == "embedding" and args.model_path is None:
        raise UserError(
            "--method embedding needs --model_path: the local diffusers pipeline whose text encoder ranks the "
            "vocabulary. Or use --method list --concepts_file FILE, or --method llm with --llm_base_url."
        )


def default_method(args) -> str:
    """``embedding`` when a model is given; otherwise ``list``, with a warning that says what a model adds.

    The seed toolkit's own command (``--target_concept nudity --num_concepts 15 --output_file ...``) names no
    model; it runs, on a plain list, instead of stopping."""
    if args.model_path is not None:
        return "embedding"
    source = f"--concepts_file {args.concepts_file}" if args.concepts_file else (
        "the bundled vocabulary (receler/data/concept_vocabulary.csv), one concept from each category in turn")
    logger.warning(
        "no --model_path, so no text encoder to rank concepts by their relation to the target (--method embedding, "
        "the default with a model): taking them from %s (--method list) instead. For concepts chosen for this "
        "target, add --model_path <your diffusers pipeline folder> (e.g. --model_path ./CogVideoX-5b).", source)
    return "list"


def generate_from_args(args, target_concept: str):
    """Run :func:`generate_preserved_concepts` with the flags of :func:`add_generation_arguments`."""
    dtype = None
    if args.method == "embedding":
        from receler.devices import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        dtype, args.device = resolve_dtype(args.dtype, device), str(device)
    return generate_preserved_concepts(
        target_concept,
        args.num_concepts,
        args.method,
        model_path=args.model_path,
        model_family=args.model_family,
        device=args.device,
        dtype=dtype,
        vocabulary_file=args.vocabulary_file,
        concepts_file=args.concepts_file,
        min_similarity=args.min_similarity,
        max_similarity=args.max_similarity,
        center=args.center_embeddings,
        batch_size=args.batch_size,
        llm_base_url=args.llm_base_url,
        llm_model=args.llm_model,
        timeout=args.timeout,
        seed=args.seed,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Choose concepts to preserve while erasing a target concept: related but distinct concepts "
        "(erasing 'nudity' must not erase 'person' or 'beach'). Writes one concept per line to --output_file, "
        "which the trainer reads with --preserved_concepts_file, and <output_file>.json with each concept's "
        "score, category and method and the run's settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target_concept", required=True, help="the concept being erased, e.g. 'nudity'")
    p.add_argument("--output_file", required=True,
                   help="where to write the concepts, one per line (e.g. preserved_concepts.txt); the JSON sidecar "
                   "goes to <output_file>.json")
    add_generation_arguments(p)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not args.target_concept.strip():
        raise UserError("--target_concept is empty; name the concept being erased (e.g. 'nudity').")
    check_generation_args(args, fallback_to_list=True)
    if Path(args.output_file).is_dir():
        raise UserError(f"--output_file {args.output_file} is a folder; pass a file name such as preserved_concepts.txt.")
    result = generate_from_args(args, args.target_concept.strip())
    text_file, sidecar = write_preserved_concepts(result, args.output_file)
    logger.info("Wrote %d preserved concepts to %s (details in %s).", len(result), text_file, sidecar)
    return result


if __name__ == "__main__":
    main()
