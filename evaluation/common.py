"""Helpers shared by the evaluation CLIs: which prompt belongs to which rendered video."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from receler.errors import UserError
from receler.media import stem_index
from receler.prompts import load_prompts

logger = logging.getLogger(__name__)

#: File the inference scripts may write next to the videos: ``{stem: prompt}``.
PROMPTS_JSON = "prompts.json"


def read_prompts_json(path) -> dict[str, str]:
    """Read a ``prompts.json`` mapping video stem -> prompt.

    Accepted shapes: ``{stem: "prompt"}``, ``{stem: {"prompt": "..."}}``, or a list of objects with
    ``stem`` and ``prompt`` keys.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"Cannot read '{path}' ({err}). Fix or delete it (it maps video names to prompts).") from None
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(d.get("stem"), d) for d in data if isinstance(d, dict)]
    else:
        raise UserError(f"'{path}' must hold a JSON object {{video_stem: prompt}}; found {type(data).__name__}.")
    mapping = {}
    for stem, value in items:
        if isinstance(value, dict):
            value = value.get("prompt")
        if stem is not None and isinstance(value, str):
            mapping[str(stem)] = value
    return mapping


def resolve_prompts(stems: Sequence[str], video_dir=None, prompt_file=None) -> dict[str, str]:
    """The prompt of each video stem, where one is known.

    With ``prompt_file``: a stem starting with a number (``007_...``) takes that row of the file; a
    folder whose stems carry no numbers is matched by sorted position. Otherwise the
    ``prompts.json`` written next to the videos is used, if present. Stems without a prompt are left out.
    """
    if prompt_file is not None:
        table = load_prompts(prompt_file)
        indices = [stem_index(stem) for stem in stems]
        if all(i is None for i in indices):
            indices = list(range(len(stems)))
            logger.info("Video names carry no row numbers; matching %s to the videos by sorted order.", prompt_file)
        mapping = {}
        for stem, i in zip(stems, indices):
            if i is not None and 0 <= i < len(table.rows):
                mapping[stem] = table.rows[i].prompt
            else:
                logger.warning("No prompt in %s for video '%s' (row %s).", prompt_file, stem, i)
        return mapping
    if video_dir is not None and (Path(video_dir) / PROMPTS_JSON).is_file():
        mapping = read_prompts_json(Path(video_dir) / PROMPTS_JSON)
        logger.info("Read prompts of %d videos from %s.", len(mapping), Path(video_dir) / PROMPTS_JSON)
        return {stem: mapping[stem] for stem in stems if stem in mapping}
    return {}


# ------------------------------------------------------------------------------------------- model card


def add_eraser_path_argument(parser) -> None:
    """``--eraser_path``: the eraser(s) the videos were rendered with, whose model cards get the numbers."""
    parser.add_argument("--eraser_path", default=None, nargs="+",
                        help="the eraser folder the videos were rendered with (several for a stack): its model card "
                        "(README.md) gets this evaluation's numbers in their own section (optional)")


def record_on_model_card(eraser_path, section: str, result: dict, json_path) -> None:
    """Put ``result`` (a metrics JSON) in the ``section`` of the model card of ``eraser_path`` (when given; a list
    for a stack of erasers, whose cards each get the section, named for the stack)."""
    if eraser_path is None:
        return
    from receler.model_card import update_model_card

    paths = list(eraser_path) if isinstance(eraser_path, (list, tuple)) else [eraser_path]
    if len(paths) > 1:
        section = f"{section} (stacked with {len(paths) - 1} other eraser{'s' if len(paths) > 2 else ''})"
    for path in paths:
        card = update_model_card(path, section, result, source=str(json_path))
        if card is not None:
            print(f"updated the model card {card}")
