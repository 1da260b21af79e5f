"""Preserved concepts: neighbours of the target concept that an eraser must leave intact.

Erasing "nudity" should not also erase "person", "swimsuit" or "beach". The trainer's preservation loss
keeps the model's output unchanged on prompts about such neighbours; this module chooses them. Three
methods, all returning a :class:`PreservedConcepts`:

* ``embedding`` (default, offline): every entry of a vocabulary of everyday concepts
  (``receler/data/concept_vocabulary.csv``, columns ``concept,category``) and the target are encoded with
  the pipeline's own text encoder (through the model family's ``encode_prompts``), mean-pooled over their
  non-padding tokens, centred on the vocabulary's mean embedding (which removes the direction every
  prompt shares, so cosines spread out the same way whatever the encoder) and compared by cosine
  similarity. Picked: entries inside a similarity band ``[min_similarity, max_similarity]`` (related, but
  not near-synonyms of the target: those score above the band's top), never an entry containing the
  target's words, taken round-robin across categories in order of similarity so the set covers people,
  places, clothing, styles ... rather than twenty kinds of one thing. When the band holds fewer than
  requested, it is widened deterministically (the bottom first, then the top) and the widening is logged.
* ``llm``: an OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``) is asked for
  related-but-distinct concepts as a JSON list; the reply is parsed leniently (a JSON list, an object
  holding a list, or one concept per line / a numbered list).
* ``list``: the first concepts of a user's file that pass the same exclusion (without a file: the bundled
  vocabulary, taken in turn across its categories; what the CLI falls back to when no model is given).

:func:`generate_preserved_concepts` is the one entry point (the trainer's ``--auto_generate_preserved``
and ``augment_prompts.py`` call it); :func:`write_preserved_concepts` writes the result as a text file
(one concept per line, what ``--preserved_concepts_file`` reads) plus a JSON sidecar with the scores,
categories and settings.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from receler.errors import UserError
from receler.io_utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("embedding", "llm", "list")

#: The bundled vocabulary (package data).
VOCABULARY_FILE = Path(__file__).resolve().parent / "data" / "concept_vocabulary.csv"

#: Similarity band on *centred* cosine similarity (see the module docstring). Near-synonyms of a concept
#: typically score well above 0.8 once the shared direction is removed, related concepts in the tenths
#: above zero and unrelated ones around zero; the band is widened automatically when it holds too few.
DEFAULT_MIN_SIMILARITY = 0.2
DEFAULT_MAX_SIMILARITY = 0.8
#: How far each widening step moves a bound of the band.
WIDEN_STEP = 0.05
#: Scores are compared after rounding, so the same run gives the same picks whatever the batch size.
SCORE_DECIMALS = 6

DEFAULT_BATCH_SIZE = 64
DEFAULT_LLM_BASE_URL = "https://api.openai.com/v1"
DEFAULT_LLM_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT = 60.0
UNCATEGORIZED = "uncategorized"

#: Words that never make an entry "contain the target" on their own ("a woman" does not contain "a dog").
STOPWORDS = frozenset(
    "a an the of in on at to with and or by for from into over under near is are as its it this that "
    "some any his her their".split()
)

#: Keys under which an LLM's JSON object may hold the list, in order of preference.
_LIST_KEYS = ("concepts", "preserved_concepts", "related_concepts", "items", "list", "results", "data", "answer")


# ------------------------------------------------------------------------------------------ results
@dataclass
class VocabularyEntry:
    concept: str
    category: str = UNCATEGORIZED


@dataclass
class PreservedConcept:
    """One chosen concept: its score (cosine similarity to the target, ``None`` outside ``embedding``)."""

    concept: str
    category: str | None = None
    score: float | None = None
    method: str = "embedding"

    def to_json(self) -> dict:
        return {"concept": self.concept, "score": self.score, "category": self.category, "method": self.method}


@dataclass
class PreservedConcepts:
    """What :func:`generate_preserved_concepts` returns: the concepts in order of choice, plus how."""

    target_concept: str
    method: str
    concepts: list[PreservedConcept]
    settings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.concept for c in self.concepts]

    def __len__(self) -> int:
        return len(self.concepts)

    def to_json(self) -> dict:
        return {
            "target_concept": self.target_concept,
            "method": self.method,
            "num_concepts": len(self.concepts),
            "concepts": [c.to_json() for c in self.concepts],
            "settings": self.settings,
            "details": self.details,
        }


# ------------------------------------------------------------------------------ target exclusion
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def stem(word: str) -> str:
    """A deliberately small stemmer: plurals (``dogs``, ``dresses``, ``puppies``) and ``-ing`` forms
    (``running`` -> ``run``, ``painting`` -> ``paint``). Enough to match a concept's word forms."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]  # running -> run, but falling -> fall
        return w
    if len(w) > 4 and (w.endswith(("ches", "shes")) or (w.endswith("es") and w[-3] in "sxz")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def target_stems(target: str) -> list[str]:
    """The stems an entry must not contain: the target's words minus stopwords (all of them if every
    word is a stopword)."""
    words = _words(target)
    content = [w for w in words if w not in STOPWORDS] or words
    return sorted({stem(w) for w in content})


def contains_target(text: str, target: str) -> bool:
    """Whether ``text`` mentions the target: the target as a whole phrase (case-insensitive), or any word whose
    stem equals a target word's stem, or starts with it when that stem has 4+ letters (``swim`` ->
    ``swimsuit``, ``paint`` -> ``painter``)."""
    phrase = " ".join(target.lower().split())
    if phrase and re.search(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", " ".join(text.lower().split())):
        return True
    stems = target_stems(target)
    for word in _words(text):
        s = stem(word)
        for t in stems:
            if s == t or word == t or (len(t) >= 4 and (s.startswith(t) or word.startswith(t))):
                return True
    return False


# -------------------------------------------------------------------------------- concept files
def _read_text_file(path: Path, what: str, flag: str) -> str:
    if not path.exists():
        raise UserError(f"{what} '{path}' ({flag}) does not exist. Check the path or pass the file you meant.")
    if path.is_dir():
        raise UserError(f"{what} '{path}' ({flag}) is a folder; pass a .txt or .csv file.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{what} '{path}' ({flag}) is not valid UTF-8. Re-save it as UTF-8.") from None
    except OSError as err:
        raise UserError(f"{what} '{path}' ({flag}) cannot be read ({err.strerror}). Check its permissions.") from None


def read_concept_entries(path, what: str = "Concept file", flag: str = "--concepts_file") -> list[VocabularyEntry]:
    """Concepts of a ``.csv`` (a header with a ``concept`` column, optionally ``category``) or of any
    other text file (one concept per line; blank lines, ``#`` comments and ``...`` skipped). Duplicates (case-
    insensitive) keep their first occurrence."""
    path = Path(path)
    text = _read_text_file(path, what, flag)
    entries: list[VocabularyEntry] = []
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "concept" not in header:
            raise UserError(
                f"{what} '{path}' ({flag}) is a CSV without a 'concept' column (found: {', '.join(header) or 'nothing'}). "
                "Give it a header row 'concept,category', or write one concept per line in a .txt file."
            )
        ci = header.index("concept")
        gi = header.index("category") if "category" in header else None
        for row in rows[1:]:
            concept = " ".join(row[ci].split()) if ci < len(row) else ""
            category = row[gi].strip() if gi is not None and gi < len(row) and row[gi].strip() else UNCATEGORIZED
            if concept:
                entries.append(VocabularyEntry(concept, category))
    else:
        from receler.prompts import is_placeholder

        for line in text.splitlines():
            concept = " ".join(line.split())
            if concept and not concept.startswith("#") and not is_placeholder(concept):
                entries.append(VocabularyEntry(concept, UNCATEGORIZED))
    unique, seen = [], set()
    for entry in entries:
        if entry.concept.lower() not in seen:
            seen.add(entry.concept.lower())
            unique.append(entry)
    if not unique:
        raise UserError(f"{what} '{path}' ({flag}) lists no concepts. Add one concept per line (or CSV rows under 'concept').")
    return unique


def load_vocabulary(path=None) -> list[VocabularyEntry]:
    """The vocabulary the embedding method ranks: ``path`` or the bundled one."""
    return read_concept_entries(path or VOCABULARY_FILE, what="Vocabulary file", flag="--vocabulary_file")


def exclude_target(entries: Iterable[VocabularyEntry], target: str) -> tuple[list[VocabularyEntry], list[str]]:
    """Split ``entries`` into those that do not mention the target and the names of those that do."""
    kept, dropped = [], []
    for entry in entries:
        (dropped.append(entry.concept) if contains_target(entry.concept, target) else kept.append(entry))
    return kept, dropped


# ------------------------------------------------------------------------------ embedding method
def load_text_pipeline(model_path, model_family: str = "auto", dtype=None):
    """``(family, pipe)`` with the tokenizers and text encoders only: the transformer and the VAE are not
    loaded (a real transformer is 5-26 GB); ``pipe.transformer`` keeps only its config. Never downloads."""
    import torch

    from receler.families import resolve_family

    family = resolve_family(model_family, model_path)
    pipe = family.load_pipeline(model_path, dtype=dtype or torch.float32, with_vae=False, with_transformer=False)
    return family, pipe


def pooled_text_embeddings(family, pipe, prompts: Sequence[str], device):
    """Mean of each prompt's token embeddings (as the transformer receives them) over its non-padding
    tokens: the family's attention mask when it gives one (HunyuanVideo), else the tokens whose id is not
    the tokenizer's pad id (T5-style encoders: CogVideoX, Wan). ``[len(prompts), dim]`` float32 on CPU."""
    import torch

    with torch.no_grad():
        cond = family.encode_prompts(pipe, list(prompts), device)
    states = cond["encoder_hidden_states"].float()
    length = states.shape[1]
    mask = cond.get("encoder_attention_mask")
    if mask is None:
        pad = getattr(pipe.tokenizer, "pad_token_id", None)
        rows = []
        for prompt in prompts:
            ids = list(family.prompt_token_ids(pipe, prompt))[:length]
            ids += [pad] * (length - len(ids))
            rows.append([pad is None or i != pad for i in ids])
        mask = torch.tensor(rows)
    mask = mask.to(states.device, torch.float32)[:, :length]
    mask[mask.sum(dim=1) == 0] = 1.0  # an all-padding prompt (cannot happen for a non-empty one) averages everything
    pooled = (states * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    return pooled.cpu()


def pipeline_encoder(family, pipe, device) -> Callable:
    """An ``encode_fn`` (list of texts -> ``[n, dim]`` tensor) over the pipeline's own text encoder.

    The pipelines warn for every batch holding a text longer than their text length (frequent with the
    tiny test models' 16 tokens, never for vocabulary entries on real models); those warnings are muted
    while encoding and the number of truncated texts is logged once at debug level per batch instead."""

    def encode(texts):
        with _quiet_library_warnings():
            truncated = [t for t in texts if _fills_text_length(family, pipe, t)]
            if truncated:
                logger.debug(
                    "%d texts fill the text encoder's whole length and may be truncated: %s",
                    len(truncated), _preview(truncated),
                )
            return pooled_text_embeddings(family, pipe, texts, device)

    return encode


def _fills_text_length(family, pipe, text: str) -> bool:
    pad = getattr(pipe.tokenizer, "pad_token_id", None)
    ids = list(family.prompt_token_ids(pipe, text))
    return pad is not None and bool(ids) and ids[-1] != pad


class _quiet_library_warnings:
    """Raise diffusers' and transformers' log level to errors for the duration of a ``with`` block."""

    def __enter__(self):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        self._libs = [diffusers_logging, transformers_logging]
        self._levels = [lib.get_verbosity() for lib in self._libs]
        for lib in self._libs:
            lib.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        for lib, level in zip(self._libs, self._levels):
            lib.set_verbosity(level)
        return False


def encode_in_batches(encode_fn: Callable, texts: Sequence[str], batch_size: int, desc: str = "encoding concepts"):
    import torch
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(texts), desc=desc, unit="concept", leave=False) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            out.append(torch.as_tensor(encode_fn(batch)).float().cpu())
            bar.update(len(batch))
    return torch.cat(out, dim=0)


def similarity_scores(target_vector, vectors, center: bool = True) -> list[float]:
    """Cosine similarity of every row of ``vectors`` to ``target_vector``; with ``center`` both are first
    moved by minus the mean of ``vectors`` (the vocabulary's shared direction)."""
    import torch

    target_vector, vectors = target_vector.double().flatten(), vectors.double()
    if center:
        mean = vectors.mean(dim=0)
        target_vector, vectors = target_vector - mean, vectors - mean
    sims = torch.nn.functional.cosine_similarity(vectors, target_vector[None, :], dim=1, eps=1e-12)
    return [round(float(s), SCORE_DECIMALS) for s in sims]


def select_by_similarity(
    entries: Sequence[VocabularyEntry],
    scores: Sequence[float],
    num_concepts: int,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    widen_step: float = WIDEN_STEP,
) -> tuple[list[tuple[VocabularyEntry, float]], dict]:
    """Choose ``num_concepts`` entries (already cleared of the target's words) by score.

    Inside the band ``[min_similarity, max_similarity]`` (inclusive), entries are taken round-robin over
    categories: categories in order of their best in-band score, each round taking every category's best
    remaining entry. Entries above the band are near-synonyms and are left out. While the band holds fewer
    than ``num_concepts`` entries, its bottom moves down by ``widen_step`` (to -1), then its top up (to 1).
    Ties are broken by name, so the choice is deterministic. Returns ``[(entry, score)]`` in order of
    choice and a dict describing the band used.
    """
    lo, hi = float(min_similarity), float(max_similarity)

    def count(lo_, hi_):
        return sum(lo_ <= s <= hi_ for s in scores)

    widened = False
    while count(lo, hi) < num_concepts and lo > -1.0:
        lo, widened = max(-1.0, round(lo - widen_step, 6)), True
    while count(lo, hi) < num_concepts and hi < 1.0:
        hi, widened = min(1.0, round(hi + widen_step, 6)), True
    if widened:
        logger.info(
            "The similarity band [%.2f, %.2f] held only %d of the %d concepts requested; widened it to [%.2f, %.2f]%s.",
            min_similarity, max_similarity, count(min_similarity, max_similarity), num_concepts, lo, hi,
            " (its top too, so near-synonyms of the target may be included)" if hi > max_similarity else "",
        )

    order = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].concept.lower()))
    near_synonyms = [(entries[i].concept, scores[i]) for i in order if scores[i] > hi]
    by_category: dict[str, list[int]] = {}
    for i in order:
        if lo <= scores[i] <= hi:
            by_category.setdefault(entries[i].category, []).append(i)
    categories = sorted(by_category, key=lambda c: (-scores[by_category[c][0]], c))
    picked: list[int] = []
    depth = 0
    while len(picked) < num_concepts and any(depth < len(by_category[c]) for c in categories):
        for c in categories:
            if depth < len(by_category[c]) and len(picked) < num_concepts:
                picked.append(by_category[c][depth])
        depth += 1
    details = {
        "band_requested": [min_similarity, max_similarity],
        "band_used": [lo, hi],
        "widened": widened,
        "in_band": count(lo, hi),
        "near_synonyms_excluded": [{"concept": c, "score": s} for c, s in near_synonyms[:50]],
        "num_near_synonyms_excluded": len(near_synonyms),
    }
    return [(entries[i], scores[i]) for i in picked], details


def embedding_concepts(
    target_concept: str,
    num_concepts: int,
    vocabulary: Sequence[VocabularyEntry],
    encode_fn: Callable,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    center: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[list[PreservedConcept], dict]:
    """The embedding method on any encoder (``encode_fn``: list of texts -> ``[n, dim]`` tensor)."""
    if min_similarity > max_similarity:
        raise UserError(
            f"--min_similarity {min_similarity} is above --max_similarity {max_similarity}; the band must be "
            "[low, high] with low <= high (e.g. 0.2 and 0.8)."
        )
    vectors = encode_in_batches(encode_fn, [e.concept for e in vocabulary], batch_size, desc="encoding vocabulary")
    target_vector = encode_in_batches(encode_fn, [target_concept], 1, desc="encoding target")[0]
    scores = similarity_scores(target_vector, vectors, center=center)
    mentions = [contains_target(e.concept, target_concept) for e in vocabulary]
    keep = [i for i, hit in enumerate(mentions) if not hit]
    excluded = [e.concept for e, hit in zip(vocabulary, mentions) if hit]
    if excluded:
        logger.info("Left out %d vocabulary entries containing the target's words: %s", len(excluded), _preview(excluded))
    if not keep:
        raise UserError(
            f"every vocabulary entry contains the words of {target_concept!r}; pass a --vocabulary_file with "
            "other concepts."
        )
    ranked = sorted(scores)
    logger.info(
        "Similarity to %r over %d entries (%s cosine): min %.3f, median %.3f, max %.3f.",
        target_concept, len(scores), "centred" if center else "raw", ranked[0], ranked[len(ranked) // 2], ranked[-1],
    )
    picked, details = select_by_similarity(
        [vocabulary[i] for i in keep], [scores[i] for i in keep], num_concepts, min_similarity, max_similarity
    )
    details.update({"vocabulary_size": len(vocabulary), "excluded_target_words": excluded})
    if details["near_synonyms_excluded"]:
        logger.info(
            "Left out %d near-synonyms (similarity above %.2f): %s", details["num_near_synonyms_excluded"],
            details["band_used"][1], _preview([d["concept"] for d in details["near_synonyms_excluded"]]),
        )
    return [PreservedConcept(e.concept, e.category, s, "embedding") for e, s in picked], details


def _preview(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ------------------------------------------------------------------------------------ llm method
def llm_request_messages(target_concept: str, num_concepts: int) -> list[dict]:
    words = ", ".join(repr(w) for w in _words(target_concept) if w not in STOPWORDS) or repr(target_concept)
    return [
        {
            "role": "system",
            "content": "You help configure concept erasure for text-to-video models. You answer with JSON only.",
        },
        {
            "role": "user",
            "content": (
                f"The concept {target_concept!r} is being erased from a text-to-video model. List {num_concepts} "
                f"everyday visual concepts that are related to it or often appear in the same videos, but are "
                f"clearly distinct from it and must be preserved (people, clothing, body parts such as hands or "
                f"faces, places, objects, animals, art styles, actions). Do not include {target_concept!r} itself, "
                f"its synonyms, or any concept containing the words {words}. Each concept is a short noun phrase "
                f"of 1 to 4 words. Answer with a JSON list of strings and nothing else."
            ),
        },
    ]


def _strip_code_fence(text: str) -> str:
    match = re.search(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", text, flags=re.S)
    return match.group(1) if match else text


def _list_from_json(obj):
    """The list of concept strings inside a parsed JSON value, or None when it holds none."""
    if isinstance(obj, list):
        items = []
        for item in obj:
            if isinstance(item, str):
                items.append(item)
            elif isinstance(item, dict):
                for key in ("concept", "name", "text", "label", "value"):
                    if isinstance(item.get(key), str):
                        items.append(item[key])
                        break
        return items if items else None
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _LIST_KEYS:
            if key in lowered:
                found = _list_from_json(lowered[key])
                if found:
                    return found
        for value in obj.values():
            found = _list_from_json(value)
            if found:
                return found
    return None


def _clean_item(item: str) -> str:
    return " ".join(str(item).split()).strip(" \"'`“”‘’.,;:*")


def parse_concept_list(text: str) -> list[str]:
    """Concepts from an LLM's answer: a JSON list, a JSON object holding a list (``{"concepts": [...]}``),
    either inside a code fence or surrounded by prose, or else one concept per line (bullets and
    ``1.``/``1)`` numbering removed; lines ending with ``:`` and long prose lines skipped; a single line
    of comma-separated concepts is split). Cleaned, deduplicated case-insensitively, in order."""
    body = _strip_code_fence(text).strip()
    candidates = [body]
    for opening, closing in (("[", "]"), ("{", "}")):
        start, end = body.find(opening), body.rfind(closing)
        if 0 <= start < end:
            candidates.append(body[start : end + 1])
    items = None
    for candidate in candidates:
        try:
            items = _list_from_json(json.loads(candidate))
        except (json.JSONDecodeError, ValueError):
            continue
        if items:
            break
    if not items:
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        items = []
        for line in lines:
            if line.endswith(":") or line.startswith(("{", "}", "[", "]")):
                continue
            line = re.sub(r"^(?:[-*\u2022\u00b7+]\s+|\(?\d{1,3}[.):\]]\s*|#{1,6}\s+)", "", line)
            if len(lines) == 1 and "," in line:
                items.extend(line.split(","))
            elif len(line.split()) <= 8:
                items.append(line)
    out, seen = [], set()
    for item in items:
        item = _clean_item(item)
        if item and item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def llm_concepts(
    target_concept: str,
    num_concepts: int,
    base_url: str = DEFAULT_LLM_BASE_URL,
    model: str = DEFAULT_LLM_MODEL,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
) -> tuple[list[PreservedConcept], dict]:
    """Ask an OpenAI-compatible chat endpoint (``POST {base_url}/chat/completions``; the key, if any,
    from ``OPENAI_API_KEY``) for concepts; a few more than needed are requested so the exclusion of the
    target's words still leaves ``num_concepts``."""
    url = check_llm_url(base_url).rstrip("/") + "/chat/completions"
    asked = num_concepts + max(5, num_concepts // 2)
    payload = {
        "model": model,
        "messages": llm_request_messages(target_concept, asked),
        "temperature": 0,
        "seed": seed,
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    logger.info("Asking %s (model %s) for %d concepts related to %r ...", url, model, asked, target_concept)
    timeout_message = (
        f"The LLM endpoint {url} did not answer within {timeout:g} s (--timeout). Check that the server is up "
        f"and not overloaded, raise --timeout, or use --method embedding (offline)."
    )
    try:
        raw = post_within(request, timeout)
    except urllib.error.HTTPError as err:
        detail = _http_error_body(err)
        hint = {
            401: " Set OPENAI_API_KEY to a valid key for this endpoint.",
            403: " Set OPENAI_API_KEY to a key allowed to use this model.",
            404: f" Check --llm_base_url (it usually ends with /v1) and --llm_model ({model!r}).",
            429: " The endpoint is rate-limiting; wait and retry.",
        }.get(err.code, "")
        raise UserError(f"The LLM endpoint {url} answered HTTP {err.code} ({err.reason}){detail}.{hint}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise UserError(timeout_message) from None
        raise UserError(
            f"The LLM endpoint {url} is unreachable ({err.reason}). Check --llm_base_url and that the server is "
            f"running, or use --method embedding (offline) or --method list."
        ) from None
    except (TimeoutError, socket.timeout):
        raise UserError(timeout_message) from None
    except (ConnectionError, http.client.HTTPException, OSError) as err:
        raise UserError(f"The connection to the LLM endpoint {url} failed ({err}). Check the server and retry.") from None
    except ValueError as err:  # urllib's word for a URL it cannot use
        raise UserError(f"--llm_base_url {base_url!r} is not a usable URL ({err}); e.g. http://localhost:8000/v1.") from None

    content = _reply_content(raw, url)
    concepts = parse_concept_list(content)
    if not concepts:
        raise UserError(
            f"The LLM endpoint {url} replied, but no concepts could be read from its answer "
            f"({content[:200]!r}). Try another --llm_model, or use --method embedding or --method list."
        )
    kept, dropped = exclude_target([VocabularyEntry(c, UNCATEGORIZED) for c in concepts], target_concept)
    if dropped:
        logger.info("Left out %d concepts containing the target's words: %s", len(dropped), _preview(dropped))
    details = {"endpoint": url, "model": model, "asked_for": asked, "received": concepts, "excluded_target_words": dropped}
    return [PreservedConcept(e.concept, None, None, "llm") for e in kept[:num_concepts]], details


def check_llm_url(base_url: str) -> str:
    """``base_url`` if it is an http(s) URL with a host (and a numeric port, if any), else a :class:`UserError`."""
    example = "e.g. http://localhost:8000/v1 for a local server or https://api.openai.com/v1"
    try:
        parts = urllib.parse.urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        raise UserError(f"--llm_base_url {base_url!r} is not a valid URL ({err}); {example}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--llm_base_url {base_url!r} is not an http(s) URL with a host; {example}.")
    return base_url


def post_within(request: urllib.request.Request, timeout: float) -> bytes:
    """Send ``request`` and read the whole answer within ``timeout`` seconds in all.

    urllib's own timeout bounds each socket operation, so a server that trickles a byte now and then
    would hold the caller forever; here the request runs in a helper thread and the caller stops waiting
    at the deadline (raising :class:`TimeoutError`). The helper is a daemon thread whose answer is dropped.
    """
    outcome = {}

    def fetch():
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                outcome["response"] = response
                outcome["raw"] = response.read()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    helper = threading.Thread(target=fetch, name="llm-request", daemon=True)
    helper.start()
    helper.join(timeout)
    if helper.is_alive():
        # Best effort: shut the socket so the helper's read fails now instead of waiting on the server (closing
        # the response would wait for the read's lock).
        sock = getattr(getattr(getattr(outcome.get("response"), "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise TimeoutError(f"no complete answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["raw"]


def _http_error_body(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read().decode("utf-8", "replace").strip()
    except Exception:  # the body is only decoration for the message
        return ""
    return f": {' '.join(body.split())[:300]}" if body else ""


def _reply_content(raw: bytes, url: str) -> str:
    """The assistant message's text of a chat-completions reply; a clear error for anything else."""
    try:
        data = json.loads(raw.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise UserError(
            f"The LLM endpoint {url} sent a reply that is not an OpenAI chat-completions answer "
            f"(expected JSON with choices[0].message.content; got {raw[:200]!r}). Check that --llm_base_url "
            "points at an OpenAI-compatible API (e.g. http://localhost:8000/v1)."
        ) from None
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise UserError(f"The LLM endpoint {url} replied with an empty message. Try another --llm_model or retry.")
    return content


# ----------------------------------------------------------------------------------- list method
def list_concepts(target_concept: str, num_concepts: int, concepts_file) -> tuple[list[PreservedConcept], dict]:
    """The first ``num_concepts`` concepts of ``concepts_file`` that do not contain the target's words.

    Without a file, the bundled vocabulary is the list, taken in turn from each of its categories (people,
    animals, places, clothing ...) in file order, so a choice made with no model at all still covers what
    an eraser most often damages; nothing is ranked by its relation to the target.
    """
    entries = read_concept_entries(concepts_file) if concepts_file is not None else load_vocabulary()
    kept, dropped = exclude_target(entries, target_concept)
    if dropped:
        logger.info("Left out %d concepts containing the target's words: %s", len(dropped), _preview(dropped))
    if concepts_file is None:
        kept = across_categories(kept)
    chosen = [
        PreservedConcept(e.concept, e.category if e.category != UNCATEGORIZED else None, None, "list")
        for e in kept[:num_concepts]
    ]
    source = str(concepts_file) if concepts_file is not None else f"{VOCABULARY_FILE} (in turn across its categories)"
    return chosen, {"concepts_file": source, "listed": len(entries), "excluded_target_words": dropped}


def across_categories(entries: Sequence[VocabularyEntry]) -> list[VocabularyEntry]:
    """The first entry of each category (in order of first appearance), then the second of each, and so on."""
    by_category: dict[str, list[VocabularyEntry]] = {}
    for entry in entries:
        by_category.setdefault(entry.category, []).append(entry)
    columns = list(by_category.values())
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]


# ----------------------------------------------------------------------------------- entry point
def generate_preserved_concepts(
    target_concept: str,
    num_concepts: int = 20,
    method: str = "embedding",
    *,
    model_path=None,
    model_family: str = "auto",
    pipe=None,
    family=None,
    device=None,
    dtype=None,
    encode_fn: Callable | None = None,
    vocabulary_file=None,
    vocabulary: Sequence[VocabularyEntry] | None = None,
    concepts_file=None,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    center: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    llm_base_url: str = DEFAULT_LLM_BASE_URL,
    llm_model: str = DEFAULT_LLM_MODEL,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
) -> PreservedConcepts:
    """Choose ``num_concepts`` concepts to preserve while erasing ``target_concept``.

    ``method="embedding"`` encodes with, in order of preference: ``encode_fn`` (texts -> ``[n, dim]``), an
    already loaded ``pipe`` with its ``family`` (the trainer's, text encoder on ``device``), or the text
    encoder loaded from ``model_path`` (transformer and VAE are not loaded). ``vocabulary`` /
    ``vocabulary_file`` replace the bundled vocabulary. ``method="llm"`` asks ``llm_base_url``;
    ``method="list"`` reads ``concepts_file``. ``seed`` is sent to the LLM (the other methods are
    deterministic without it). Fewer than ``num_concepts`` concepts are returned (with a warning) only
    when the source runs out; none at all is a :class:`UserError`.
    """
    target_concept = (target_concept or "").strip()
    if not target_concept:
        raise UserError("--target_concept is empty; name the concept being erased (e.g. 'nudity').")
    if num_concepts < 1:
        raise UserError(f"--num_concepts must be at least 1 (got {num_concepts}).")
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}.")
    settings = {"target_concept": target_concept, "num_concepts": num_concepts, "method": method, "seed": seed}

    if method == "embedding":
        vocab = list(vocabulary) if vocabulary is not None else load_vocabulary(vocabulary_file)
        if encode_fn is None:
            if pipe is None:
                if model_path is None:
                    raise UserError(
                        "--method embedding needs --model_path (the local diffusers pipeline whose text encoder "
                        "ranks the vocabulary), or use --method list with --concepts_file, or --method llm."
                    )
                import torch

                device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
                family, pipe = load_text_pipeline(model_path, model_family, dtype)
                for name in family.text_encoder_names():
                    if getattr(pipe, name, None) is not None:
                        getattr(pipe, name).to(device)
            elif family is None:
                raise UserError("generate_preserved_concepts(pipe=...) needs the pipeline's family too (family=...).")
            if device is None:
                device = _module_device(getattr(pipe, family.text_encoder_names()[0], None))
            encode_fn = pipeline_encoder(family, pipe, device)
            settings.update({"model_path": str(model_path) if model_path else None, "model_family": family.name})
        settings.update({
            "vocabulary_file": str(vocabulary_file) if vocabulary_file
            else ("(given)" if vocabulary is not None else str(VOCABULARY_FILE)),
            "min_similarity": min_similarity,
            "max_similarity": max_similarity,
            "center": center,
        })
        chosen, details = embedding_concepts(
            target_concept, num_concepts, vocab, encode_fn, min_similarity, max_similarity, center, batch_size
        )
    elif method == "llm":
        settings.update({"llm_base_url": llm_base_url, "llm_model": llm_model, "timeout": timeout})
        chosen, details = llm_concepts(target_concept, num_concepts, llm_base_url, llm_model, timeout, seed)
    else:
        settings["concepts_file"] = str(concepts_file) if concepts_file else str(VOCABULARY_FILE)
        chosen, details = list_concepts(target_concept, num_concepts, concepts_file)

    if not chosen:
        raise UserError(
            f"no concept to preserve was found for {target_concept!r} with --method {method} (every candidate "
            f"contained the target's words). Give more candidates (--concepts_file / --vocabulary_file) or another method."
        )
    if len(chosen) < num_concepts:
        logger.warning("Only %d of the %d concepts requested were found (--method %s).", len(chosen), num_concepts, method)
    result = PreservedConcepts(target_concept, method, chosen, settings, details)
    logger.info("Preserved concepts for %r: %s", target_concept, ", ".join(result.names))
    return result


def _module_device(module):
    import torch

    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def sidecar_path(output_file) -> Path:
    """Where the JSON sidecar of a concepts file goes: ``<output_file>.json``."""
    output_file = Path(output_file)
    return output_file.with_name(output_file.name + ".json")


def write_preserved_concepts(result: PreservedConcepts, output_file) -> tuple[Path, Path]:
    """Write one concept per line to ``output_file`` and the scores, categories and settings to
    :func:`sidecar_path`, each atomically. Returns both paths."""
    output_file = Path(output_file)
    if output_file.is_dir():
        raise UserError(f"--output_file {output_file} is a folder; pass a file name such as preserved_concepts.txt.")
    atomic_write_text(output_file, "".join(name + "\n" for name in result.names))
    sidecar = sidecar_path(output_file)
    atomic_write_json(sidecar, result.to_json())
    return output_file, sidecar
