"""Training prompt pairs for an eraser: the target concept in video-caption templates, each paired with the
same caption about a concept to preserve.

    python receler/augment_prompts.py --target_concept nudity --num_prompts 64 \\
        --preserved_concepts_file preserved_concepts.txt --output_file nudity_pairs.csv

The output is a CSV with columns ``prompt,preserve_prompt``, which the trainer reads as its
``--prompts_file``: ``prompt`` is e.g. "cinematic close-up of nudity, soft light" and ``preserve_prompt``
"cinematic close-up of a beach, soft light". Every prompt contains the target concept verbatim (the
trainer's localization finds it by its tokens); no preserve prompt contains the target's words. Preserved
concepts come from ``--preserved_concepts_file`` or are chosen on the spot with the flags of
``auto_generate_preserved_concepts.py`` (``--method embedding --model_path ...``, ``llm``, ``list``).
With ``--base_prompts_file``, your own prompts that mention the target come first, each with its own
preserve prompt or, if it has none, the same prompt with a preserved concept in place of the target.
The same flags and ``--seed`` give the same file.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import random
import re
from pathlib import Path
from typing import Sequence


from receler.auto_generate_preserved_concepts import add_generation_arguments, check_generation_args, generate_from_args
from receler.errors import UserError, cli_entry, setup_logging
from receler.io_utils import atomic_write_text
from receler.preserved_concepts import (
    VocabularyEntry,
    contains_target,
    exclude_target,
    read_concept_entries,
    write_preserved_concepts,
)
from receler.prompts import load_prompts

logger = logging.getLogger("receler.augment")

#: Caption templates; ``{x}`` is the concept. They read like video captions and make sense for a person,
#: an object, a place, a style or an abstract concept alike.
TEMPLATES: tuple[str, ...] = (
    "a video of {x} walking on a beach at sunset",
    "cinematic close-up of {x}, soft light",
    "a short film scene showing {x} in a quiet city street at night",
    "{x} in a sunlit park, handheld camera, natural colors",
    "a slow-motion shot of {x} in the rain",
    "aerial drone footage of {x} near a mountain lake",
    "a documentary clip about {x}, shot on 35mm film",
    "a time-lapse video of {x} from morning to evening",
    "an animated cartoon of {x}, bright colors",
    "a music video featuring {x} under neon lights",
    "a vintage home movie of {x}, film grain, warm tones",
    "a tracking shot following {x} through a crowded market",
    "{x} in a cozy living room, warm evening light",
    "a wide shot of {x} in a snowy forest",
    "a video of {x} on a rooftop overlooking the skyline",
    "a news report showing {x}, steady camera",
    "a dreamy sequence of {x} in a field of flowers",
    "a black and white film scene with {x}",
    "{x} by a swimming pool on a summer afternoon",
    "a high-quality 4k video of {x}, studio lighting",
    "a panning shot of {x} in an art gallery",
    "a 3d animation of {x}, smooth motion",
    "{x} near a window, sunlight streaming in, slow camera push",
    "a travel vlog clip with {x} on a tropical island",
    "an oil painting of {x} coming to life, gentle motion",
    "a video of {x} in a bustling train station",
    "a handheld smartphone video of {x} at a party",
    "a nature documentary shot of {x} at dawn",
    "a cinematic scene of {x} in a desert at golden hour",
    "a close-up video of {x}, shallow depth of field, bokeh",
    "{x} on a sailboat, ocean waves, bright sunshine",
    "a realistic video of {x} in a modern kitchen",
    "a fashion film featuring {x}, elegant slow motion",
    "an anime-style clip of {x} under cherry blossoms",
    "a security camera view of {x} in a parking lot",
    "a video of {x} in a quiet library, soft ambient light",
    "{x} at a riverside at dusk, reflections on the water",
    "a first-person video of {x} on a hiking trail",
    "a stop-motion animation of {x} on a wooden table",
    "a dramatic scene of {x} during a thunderstorm",
    "a watercolor-style animation of {x}",
    "a video of {x} in a sunny garden, birds singing",
    "a cinematic shot of {x} in a candlelit room",
    "a slow pan across {x} in a museum hall",
    "a video of {x} at a beach bonfire at night",
    "{x} in a misty forest at sunrise, volumetric light",
    "a commercial featuring {x}, clean white background",
    "a video of {x} on a city bridge at night, car lights passing",
)


def target_pattern(target: str) -> re.Pattern:
    """The target as a whole phrase, case-insensitive, any run of spaces between its words."""
    words = target.split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.IGNORECASE)


def substitute_concept(prompt: str, target: str, replacement: str) -> str | None:
    """``prompt`` with every mention of ``target`` replaced by ``replacement``; None if it has none."""
    pattern = target_pattern(target)
    if not pattern.search(prompt):
        return None
    return pattern.sub(lambda _: replacement, prompt)


class _Cycle:
    """Endless draws from ``items``: each pass over them in a fresh shuffled order, so every item is used
    equally often."""

    def __init__(self, items: Sequence, rng: random.Random):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def usable_templates(target: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Templates whose own words do not mention the target (for "beach", no "... on a beach at sunset":
    its preserve prompt would still show a beach)."""
    return [t for t in templates if "{x}" in t and not contains_target(t.replace("{x}", " "), target)]


def augment_prompt_pairs(
    target_concept: str,
    preserved_concepts: Sequence[str],
    num_prompts: int,
    seed: int = 0,
    base_rows: Sequence | None = None,
    templates: Sequence[str] = TEMPLATES,
) -> list[tuple[str, str]]:
    """``(prompt, preserve_prompt)`` pairs: first one per base row mentioning the target (``base_rows``:
    :class:`~receler.prompts.PromptRow`, their own preserve prompt kept, else the target substituted),
    then ``num_prompts`` template pairs. Templates and concepts are drawn in shuffled passes (each used
    equally often) from generators seeded by ``seed``; a (template, concept) pair repeats only once every
    combination has been used."""
    target = " ".join(target_concept.split())
    if not target:
        raise UserError("--target_concept is empty; name the concept being erased (e.g. 'nudity').")
    if num_prompts < 0:
        raise UserError(f"--num_prompts must be 0 or more (got {num_prompts}).")
    kept, dropped = exclude_target([VocabularyEntry(c) for c in preserved_concepts if c.strip()], target)
    if dropped:
        logger.warning("Left out %d preserved concepts that contain the target's words: %s", len(dropped), ", ".join(dropped))
    concepts = [e.concept for e in kept]
    if not concepts:
        raise UserError(
            f"no preserved concept is left for {target!r} (each one given contains the target's words). Give "
            "concepts distinct from the target, e.g. with auto_generate_preserved_concepts.py."
        )
    concept_cycle = _Cycle(concepts, random.Random(f"{seed}:concepts"))
    pairs: list[tuple[str, str]] = []

    if base_rows:
        skipped, unsafe = 0, 0
        for row in base_rows:
            if not target_pattern(target).search(row.prompt):
                skipped += 1
                continue
            preserve = row.preserve_prompt
            if not preserve:
                preserve = substitute_concept(row.prompt, target, concept_cycle.next())
                if contains_target(preserve, target):  # e.g. another form of the target is still there
                    unsafe += 1
                    continue
            elif contains_target(preserve, target):
                logger.warning("The base prompt file's preserve prompt %r mentions %r; kept as given.", preserve, target)
            pairs.append((row.prompt, preserve))
        if skipped:
            logger.info("Skipped %d base prompts that do not mention %r (a training prompt must contain it).", skipped, target)
        if unsafe:
            logger.warning("Skipped %d base prompts whose substituted preserve prompt still mentioned %r.", unsafe, target)
        logger.info("Took %d prompt pairs from the base prompts file.", len(pairs))

    if num_prompts:
        usable = usable_templates(target, templates)
        if len(usable) < len(templates):
            logger.info("Skipped %d templates that mention %r themselves.", len(templates) - len(usable), target)
        if not usable:
            raise UserError(f"every caption template mentions {target!r}; no template pairs can be made for it.")
        template_cycle = _Cycle(usable, random.Random(f"{seed}:templates"))
        used: set = set()
        for _ in range(num_prompts):
            template = template_cycle.next()
            concept = concept_cycle.next()
            if len(used) < len(usable) * len(concepts):
                for _ in range(len(concepts)):
                    if (template, concept) not in used:
                        break
                    concept = concept_cycle.next()
            used.add((template, concept))
            pairs.append((template.format(x=target), template.format(x=concept)))
    return pairs


def pairs_to_csv(pairs: Sequence[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt", "preserve_prompt"])
    writer.writerows(pairs)
    return buffer.getvalue()


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Make training prompt pairs for an eraser: the target concept in video-caption templates "
        "('cinematic close-up of {x}, soft light', ...), each paired with the same caption about a concept to "
        "preserve. Writes a CSV with columns prompt,preserve_prompt that the trainer reads as --prompts_file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target_concept", required=True,
                   help="the concept being erased, written as the prompts should contain it (e.g. 'nudity')")
    p.add_argument("--output_file", required=True, help="the CSV to write (columns prompt,preserve_prompt)")
    p.add_argument("--num_prompts", type=int, default=64,
                   help="template pairs to generate (after the pairs from --base_prompts_file; 0 = base prompts only)")
    p.add_argument("--preserved_concepts_file", default=None,
                   help="concepts to preserve, one per line (e.g. from auto_generate_preserved_concepts.py). Without "
                   "it, they are chosen now with the flags below")
    p.add_argument("--base_prompts_file", default=None,
                   help="your own prompts (.txt or .csv, as the trainer reads them): those mentioning the target are "
                   "kept, with their preserve_prompt or, if they have none, a preserved concept in place of the target")
    p.add_argument("--preserved_output_file", default=None,
                   help="when concepts are chosen here, also write them (one per line, plus a .json sidecar) to this file")
    add_generation_arguments(p, num_concepts_default=20,
                             seed_help="seed for the order of templates and concepts (also sent to an LLM endpoint)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    target = " ".join(args.target_concept.split())
    if not target:
        raise UserError("--target_concept is empty; name the concept being erased (e.g. 'nudity').")
    output = Path(args.output_file)
    if output.suffix.lower() != ".csv":
        raise UserError(f"--output_file {output} must end in .csv: the trainer reads prompt pairs from a CSV file.")
    if output.is_dir():
        raise UserError(f"--output_file {output} is a folder; pass a file name such as pairs.csv.")
    if args.num_prompts < 0:
        raise UserError(f"--num_prompts must be 0 or more (got {args.num_prompts}).")
    base_rows = load_prompts(args.base_prompts_file).rows if args.base_prompts_file else None
    if args.num_prompts == 0 and not base_rows:
        raise UserError("--num_prompts 0 without --base_prompts_file makes no pairs; ask for at least one prompt.")

    if args.preserved_concepts_file:
        concepts = [e.concept for e in read_concept_entries(
            args.preserved_concepts_file, what="Preserved concepts file", flag="--preserved_concepts_file")]
        logger.info("Read %d preserved concepts from %s.", len(concepts), args.preserved_concepts_file)
    else:
        check_generation_args(args)
        result = generate_from_args(args, target)
        concepts = result.names
        if args.preserved_output_file:
            write_preserved_concepts(result, args.preserved_output_file)
            logger.info("Wrote the chosen concepts to %s.", args.preserved_output_file)

    pairs = augment_prompt_pairs(target, concepts, args.num_prompts, args.seed, base_rows)
    if not pairs:
        raise UserError(
            f"no prompt pair was made: no row of {args.base_prompts_file} mentions {target!r}. Check the target's "
            "spelling or ask for template pairs with --num_prompts."
        )
    atomic_write_text(output, pairs_to_csv(pairs))
    logger.info("Wrote %d prompt pairs to %s.", len(pairs), output)
    return pairs


if __name__ == "__main__":
    main()
