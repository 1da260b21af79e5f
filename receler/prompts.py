"""Prompt files: the one loader shared by training, inference and evaluation.

Two formats are read:

* ``.txt``: one prompt per line. Blank lines, lines whose first non-space character is ``#`` and
  placeholder lines (``...``, as example files in READMEs end) are skipped, and the log says how many.
* ``.csv`` (and ``.tsv``): a header row, then one prompt per row. The prompt column is found by name,
  case-insensitively, from :data:`PROMPT_COLUMNS` (first match wins), so the public benchmark files
  (Ring-A-Bell, MMA-Diffusion, UnlearnDiff, I2P, T2VSafetyBench, the T2VUnlearning release) load as
  they are. A preserve prompt comes from :data:`PRESERVE_COLUMNS` (Ring-A-Bell's ``normal prompt``
  included) and a per-row seed from :data:`SEED_COLUMNS`. Every other column is kept in
  :attr:`PromptRow.extra`.

Files are read as UTF-8; a byte-order mark is dropped. Quoted fields may hold commas, quotes and line
breaks. Rows whose prompt is empty (blank rows, trailing lines) or a ``...`` placeholder are skipped.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from receler.errors import UserError

logger = logging.getLogger(__name__)

#: Accepted names for the prompt column, in order of preference (compared after normalisation:
#: lower case, with ``_``, ``-`` and runs of spaces read as one space).
PROMPT_COLUMNS: tuple[str, ...] = (
    "prompt",
    "prompts",
    "adv_prompt",  # MMA-Diffusion adversarial prompts
    "sensitive prompt",  # Ring-A-Bell style exports
    "nudity_prompt",
    "unsafe_prompt",
    "target_prompt",  # MMA-Diffusion: the prompt the attack aims at
    "text",
    "caption",
    "captions",
    "sentence",
    "description",
    "query",
)

#: Accepted names for the preserve-prompt column (Ring-A-Bell calls it ``normal prompt``).
PRESERVE_COLUMNS: tuple[str, ...] = (
    "preserve_prompt",
    "preservation_prompt",
    "normal prompt",
    "safe_prompt",
)

#: Accepted names for a per-row seed (``evaluation_seed``: UnlearnDiff and the face sets; ``sd_seed``: I2P).
SEED_COLUMNS: tuple[str, ...] = ("seed", "evaluation_seed", "sd_seed")

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".tsv")

_FIELD_SIZE_LIMIT = 16 * 1024 * 1024  # long prompts are fine; the csv default stops at 128 KiB


@dataclass
class PromptRow:
    """One prompt of a prompt file."""

    prompt: str
    preserve_prompt: str | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PromptTable:
    """The rows of a prompt file and the columns they came from (``None`` for ``.txt`` files)."""

    rows: list[PromptRow]
    prompt_column: str
    preserve_column: str | None = None
    seed_column: str | None = None
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]

    @property
    def prompts(self) -> list[str]:
        return [row.prompt for row in self.rows]

    @property
    def preserve_prompts(self) -> list[str | None]:
        return [row.preserve_prompt for row in self.rows]

    @property
    def seeds(self) -> list[int | None]:
        return [row.seed for row in self.rows]


def is_placeholder(text: str) -> bool:
    """``...`` (or ``…``) alone on a line: the "and so on" of an example list, never a prompt or a concept."""
    return re.fullmatch(r"\.{3,}|…+", text.strip()) is not None


def normalize_column_name(name: str) -> str:
    """``" Normal_Prompt "`` -> ``"normal prompt"``: how column names are compared."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


def find_column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` present in ``header`` (normalised comparison), as spelled in the file."""
    by_name: dict[str, str] = {}
    for column in header:
        by_name.setdefault(normalize_column_name(column), column)
    for candidate in candidates:
        hit = by_name.get(normalize_column_name(candidate))
        if hit is not None:
            return hit
    return None


def load_prompts(path) -> PromptTable:
    """Read a ``.txt`` or ``.csv`` prompt file; see the module docstring for the rules.

    Raises :class:`~receler.errors.UserError` for a missing or unreadable file, an unsupported
    extension, a CSV without a recognisable prompt column, a bad seed value, or a file with no prompts.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"Prompt file '{path}' does not exist. Check the path (relative paths are resolved from "
            f"'{Path.cwd()}') or pass the file you meant."
        )
    if path.is_dir():
        raise UserError(f"Prompt file '{path}' is a folder. Pass a .txt or .csv file inside it instead.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise UserError(
            f"Prompt file '{path}' has the unsupported extension '{path.suffix or '(none)'}'. Use a .txt "
            "file (one prompt per line) or a .csv file with a header row and a 'prompt' column."
        )
    text = _read_text(path)
    if suffix == ".txt":
        table = _parse_txt(text, path)
    else:
        table = _parse_csv(text, path, delimiter="\t" if suffix == ".tsv" else ",")
    if not table.rows:
        raise UserError(
            f"Prompt file '{path}' contains no prompts"
            + (f" (column '{table.prompt_column}' is empty in every row)" if suffix != ".txt" else "")
            + ". Add at least one prompt"
            + (" (blank lines, lines starting with '#' and '...' lines are skipped)." if suffix == ".txt" else ".")
        )
    return table


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"Prompt file '{path}' cannot be read ({err.strerror}). Check its permissions.") from None
    if not data.strip():
        raise UserError(f"Prompt file '{path}' is empty. Add prompts to it (one per line, or CSV rows under a header).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"Prompt file '{path}' is not valid UTF-8 (byte {err.start}). Re-save it as UTF-8 "
            "(most editors and spreadsheet programs offer 'CSV UTF-8')."
        ) from None


def _parse_txt(text: str, path: Path) -> PromptTable:
    rows, comments, placeholders = [], 0, 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments += 1
        elif is_placeholder(stripped):
            placeholders += 1
        else:
            rows.append(PromptRow(prompt=stripped))
    logger.info("Read %d prompts from %s (one per line)%s.", len(rows), path, skipped_note(comments, placeholders))
    return PromptTable(rows=rows, prompt_column="line", path=path)


def skipped_note(comments: int, placeholders: int) -> str:
    """``"; skipped 1 comment line and 1 '...' placeholder line"`` for a log message ("" when nothing was skipped)."""
    parts = [f"{n} {what} line{'s' if n != 1 else ''}" for n, what in ((comments, "'#' comment"),
                                                                       (placeholders, "'...' placeholder")) if n]
    return f"; skipped {' and '.join(parts)}" if parts else ""


def _parse_csv(text: str, path: Path, delimiter: str) -> PromptTable:
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(min(_FIELD_SIZE_LIMIT, sys.maxsize))
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:
        raise UserError(f"Prompt file '{path}' is not valid CSV ({err}). Check its quoting, or save it again.") from None

    # The header is the first row that is not blank.
    while records and not any(cell.strip() for cell in records[0]):
        records.pop(0)
    if not records:
        raise UserError(f"Prompt file '{path}' is empty. Add a header row with a 'prompt' column and one prompt per row.")
    header = [cell.strip() or f"unnamed_{i}" for i, cell in enumerate(records[0])]

    prompt_column = find_column(header, PROMPT_COLUMNS)
    if prompt_column is None:
        raise UserError(
            f"Prompt file '{path}' has no recognisable prompt column. Columns found: "
            f"{', '.join(repr(c) for c in header)}. Accepted names (case-insensitive): "
            f"{', '.join(repr(c) for c in PROMPT_COLUMNS)}. Rename the prompt column to 'prompt' "
            "(or save the prompts as a .txt file, one per line)."
        )
    preserve_column = find_column(header, PRESERVE_COLUMNS)
    seed_column = find_column(header, SEED_COLUMNS)
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    special = {prompt_column, preserve_column, seed_column}
    logger.info(
        "Reading prompts from %s: prompt column '%s'%s%s.",
        path,
        prompt_column,
        f", preserve column '{preserve_column}'" if preserve_column else "",
        f", seed column '{seed_column}'" if seed_column else "",
    )

    rows: list[PromptRow] = []
    skipped = placeholders = 0
    for line_number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            skipped += 1
            continue
        if len(record) > len(header):
            logger.warning(
                "%s row %d has %d fields but the header has %d; the extra fields are ignored "
                "(a prompt with a comma must be quoted).",
                path,
                line_number,
                len(record),
                len(header),
            )

        def cell(column):
            i = index[column]
            return record[i].strip() if i < len(record) else ""

        prompt = cell(prompt_column)
        if not prompt:
            skipped += 1
            continue
        if is_placeholder(prompt):
            placeholders += 1
            continue
        preserve = cell(preserve_column) if preserve_column else ""
        seed = _parse_seed(cell(seed_column), path, line_number, seed_column) if seed_column else None
        extra = {name: cell(name) for name in header if name not in special}
        rows.append(PromptRow(prompt=prompt, preserve_prompt=preserve or None, seed=seed, extra=extra))
    if skipped:
        logger.info("Skipped %d rows of %s with an empty prompt.", skipped, path)
    if placeholders:
        logger.info("Skipped %d rows of %s whose prompt is a '...' placeholder.", placeholders, path)
    return PromptTable(
        rows=rows, prompt_column=prompt_column, preserve_column=preserve_column, seed_column=seed_column, path=path
    )


def _parse_seed(value: str, path: Path, line_number: int, column: str) -> int | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not number.is_integer():
        raise UserError(
            f"Prompt file '{path}' row {line_number}: seed column '{column}' holds {value!r}, which is not a "
            "whole number. Fix that cell (or leave it empty to use the --seed flag)."
        )
    return int(value) if value.lstrip("+-").isdigit() else int(number)
