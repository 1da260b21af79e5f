"""The model card of an eraser folder: ``README.md`` beside the weights, for the next person who picks it up.

The trainer writes it with the weights (:func:`write_model_card`): what the eraser erases, from which base
model, the settings the run actually used (after defaults were resolved), and its limitations. Tools that
measure an eraser add or replace their own section with :func:`update_model_card`:
``evaluation/eval_nudity.py`` and ``evaluation/eval_preservation.py`` (given ``--eraser_path``),
``evaluation/attack.py`` and the world evaluation. Each section records when it was written and the sha256 of
the weights it measured; new weights get a fresh card, without the old numbers.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import re
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_PT, WEIGHTS_SAFETENSORS
from .io_utils import atomic_write_text

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
MEASURED_HEADING = "## Measured"
NOT_MEASURED = "_Nothing measured yet: the evaluation, the attack and the world benchmark add their numbers here._"
MAX_ROWS = 60  # metrics per section; the tool's own JSON file holds the rest

#: Each measuring tool's section: its heading and what it is.
SECTION_TITLES = {
    "nudity": "Nudity rate (evaluation/eval_nudity.py)",
    "preservation": "Preservation (evaluation/eval_preservation.py)",
    "attack": "Learned-prompt attack (evaluation/attack.py)",
    "world_benchmark": "World benchmark (python -m receler.world.evaluate)",
}
_SCRIPTS = {"cogvideox": "test_cogvideo.py", "hunyuan_video": "test_hunyuan.py", "wan": "test_wan.py"}


def _begin(section: str) -> str:
    return f"<!-- receler:begin {section} -->"


def _end(section: str) -> str:
    return f"<!-- receler:end {section} -->"


def weights_digest(eraser_dir) -> str | None:
    """sha256 of the folder's weights (safetensors preferred), the first 16 hex digits; None without weights."""
    folder = Path(eraser_dir)
    weights = next((folder / n for n in (WEIGHTS_SAFETENSORS, WEIGHTS_PT) if (folder / n).is_file()), None)
    if weights is None:
        return None
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the card


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows, header=("", "")) -> list:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {_value(value)} |" for name, value in rows]
    return lines


def _settings(train: dict, resolved: dict, progress: dict) -> list:
    """``(name, value)`` rows of the training settings as used: resolved values where the config left them open."""
    get = lambda key, default=None: resolved.get(key, train.get(key, default))  # noqa: E731
    accum = train.get("gradient_accumulation_steps", 1)
    batch = train.get("batch_size", 1)
    world = resolved.get("world_size", 1)
    rows = []
    if progress.get("updates") is not None:
        stopped = progress.get("stopped")
        rows.append(("updates", f"{progress['updates']}" + (f" (stopped: {stopped})" if stopped else "")))
    prompts = resolved.get("prompts") or []
    rows += [
        ("training prompts", f"{len(prompts)}" + (f" ({train.get('prompts_file')})" if train.get("prompts_file") else "")),
        ("epochs / max updates", f"{train.get('num_epochs')} / {train.get('max_steps') or '-'}"),
        ("learning rate", f"{_value(train.get('learning_rate'))}, {train.get('lr_scheduler', 'constant')} schedule, "
                          f"{train.get('lr_warmup_steps', 0)} warm-up updates"),
        ("prompts per update", f"{batch * accum * world} ({batch} per batch x {accum} accumulated x {world} "
                               f"process{'es' if world != 1 else ''})"),
        ("eta (negative guidance)", train.get("eta")),
        ("alpha (localization weight)", train.get("alpha")),
        ("beta (preservation weight)", get("beta")),
        ("loss target", get("loss_target")),
        ("video", f"{get('num_frames')} frames at {get('height')}x{get('width')}"),
        ("denoising steps", f"{train.get('num_inference_steps')} (trained at: {train.get('train_timesteps', 'all')})"),
        ("trajectory", f"{train.get('trajectory')}, start guidance {_value(train.get('start_guidance', 1.0))}"),
        ("localization mask", f"threshold {_value(train.get('mask_threshold'))}, {train.get('mask_mode', 'per_layer')}, "
                              f"normalised per {train.get('mask_normalize', 'frame')}, fallback "
                              f"{train.get('mask_fallback', 'concept')}"),
        ("anchor prompt", train.get("anchor_prompt") or ("from the prompts file" if resolved.get("anchor_prompts") else None)),
        ("adversarial training", f"on: {train.get('adv_num_tokens')} tokens, {train.get('adv_steps')} steps, weight "
                                 f"{_value(train.get('adv_weight'))}" if train.get("adversarial") else "off"),
        ("eraser rank", train.get("eraser_rank")),
        ("backbone dtype", get("dtype")),
        ("seed", train.get("seed")),
    ]
    return rows


def _limitations(config: dict, train: dict, resolved: dict, progress: dict) -> list:
    family = config.get("model_family", "")
    base = (config.get("base_model") or {}).get("model_path") or "its base model"
    items = [
        f"Loads onto {base} only (the same {family or 'model'} transformer): another model size is refused, and a base "
        "model whose config differs loads with a warning and may behave differently.",
        "Trained from prompts alone, against the model's own outputs: it removes what the model associates with "
        f"{_value(resolved.get('concept_words') or [config.get('target_concept')])} in prompts like its training "
        "prompts; other phrasings and other languages are not guaranteed.",
        "A prompt optimised against the eraser (evaluation/attack.py) can bring the concept back: treat it as erased "
        "against ordinary prompts, not removed from the weights, and publish its attack numbers with it.",
    ]
    if resolved.get("num_frames"):
        items.append(f"Trained at {resolved['num_frames']} frames of {resolved.get('height')}x{resolved.get('width')}; "
                     "other lengths and sizes have not been measured here.")
    if not (resolved.get("beta") or 0) > 0:
        items.append("Trained without the preservation loss (beta 0): other concepts may have changed too; measure "
                     "them with evaluation/eval_preservation.py.")
    if progress.get("stopped") == "interrupted":
        items.append(f"Training was interrupted after {progress.get('updates')} updates.")
    return items


def render_model_card(config: dict, progress: dict | None = None, digest: str | None = None) -> str:
    """The card's text from an ``eraser_config.json`` dict (unknown or missing keys are tolerated)."""
    progress = progress or {}
    train = config.get("train_config") or {**config.get("training", {})}
    resolved = config.get("resolved") or {}
    base = config.get("base_model") or {}
    family = config.get("model_family") or resolved.get("model_family") or "?"
    concept = config.get("target_concept") or train.get("target_concept") or "?"
    base_path = base.get("model_path") or "?"
    base_name = Path(base_path).name or base_path
    preserve = resolved.get("preserve_prompts")
    preserved = resolved.get("preserved_concepts")
    if preserved:
        preserved_text = f"{', '.join(preserved)} ({len(preserve or [])} preserve prompts)"
    elif preserve:
        preserved_text = f"{len(preserve)} preserve prompts from the prompts file"
    else:
        preserved_text = "none (no preservation loss)"
    rank, count = config.get("eraser_rank"), config.get("num_erasers")
    width = (base.get("transformer_config") or {})
    script = _SCRIPTS.get(family, "test_cogvideo.py")
    lines = [
        f"# Eraser: \"{concept}\" erased from {base_name}",
        "",
        "A residual adapter in every transformer block (an *eraser*, T2VUnlearning / Receler) that removes a concept "
        "from a text-to-video model. It was trained with receler-video; this folder holds its weights "
        f"(`{WEIGHTS_SAFETENSORS}`, `{WEIGHTS_PT}`) and settings (`{CONFIG_NAME}`). Render clean vs erased with:",
        "",
        "```bash",
        f"python {script} --model_path {base_path} --eraser_path <this folder> --prompt \"...\" --generate_clean",
        "```",
        "",
        *_table([
            ("base model", f"`{base_path}` ({base.get('pipeline_class', '?')})"),
            ("model family", family),
            ("concept", concept),
            ("concept words (localization)", resolved.get("concept_words") or [concept]),
            ("preserved concepts", preserved_text),
            ("eraser", f"adapter, rank {rank}, on {count} blocks" + (
                f" (attention width {width.get('num_attention_heads', 0) * width.get('attention_head_dim', 0)})"
                if width.get("num_attention_heads") and width.get("attention_head_dim") else "")),
            ("weights sha256", digest),
        ], header=("", "")),
        "",
        "## Training settings (as used)",
        "",
        *_table(_settings(train, resolved, progress), header=("setting", "value")),
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in _limitations(config, train, resolved, progress)],
        "",
        MEASURED_HEADING,
        "",
        NOT_MEASURED,
        "",
    ]
    return "\n".join(lines)


def write_model_card(eraser_dir, config: dict | None = None, progress: dict | None = None) -> Path:
    """Write a fresh ``README.md`` into ``eraser_dir`` (after its weights: the card names their digest).

    ``config``: the folder's ``eraser_config.json`` (read when not given); ``progress``: ``{"updates": N,
    "stopped": why}`` of the run. Sections written by measuring tools are dropped: they measured other weights.
    """
    folder = Path(eraser_dir)
    if config is None:
        path = folder / CONFIG_NAME
        config = json.loads(path.read_text()) if path.is_file() else {}
    path = folder / CARD_NAME
    atomic_write_text(path, render_model_card(config, progress, weights_digest(folder)))
    return path


# ---------------------------------------------------------------------------------------- measurements


def flatten_metrics(metrics: dict, prefix: str = "") -> list:
    """``(dotted.key, value)`` for every number, string or bool in nested dicts (lists are left out)."""
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten_metrics(value, name + "."))
        elif value is None or isinstance(value, (int, float, str, bool)):
            rows.append((name, value))
    return rows


def _section_text(section: str, metrics: dict, source: str | None, digest: str | None) -> str:
    title = SECTION_TITLES.get(section, section)
    rows = flatten_metrics(metrics)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = f"Written {when}" + (f" from `{source}`" if source else "") + (f", for weights sha256 {digest}" if digest else "")
    lines = [_begin(section), f"### {title}", "", note + ".", "", *_table(rows[:MAX_ROWS], header=("metric", "value"))]
    if len(rows) > MAX_ROWS:
        where = source or "the tool's JSON output"
        lines += ["", f"_{len(rows) - MAX_ROWS} more values in {where}._"]
    lines.append(_end(section))
    return "\n".join(lines)


def update_model_card(eraser_dir, section: str, metrics: dict, source: str | None = None) -> Path | None:
    """Add or replace the ``section`` numbers in the model card of ``eraser_dir`` (creating the card first when
    the folder has none). ``metrics``: the tool's result (nested dicts are flattened, lists left out);
    ``source``: where the full numbers are (e.g. the path of nudity.json). Returns the card's path, or None when
    ``eraser_dir`` is not an eraser folder (nothing is written then; a warning says so)."""
    folder = Path(eraser_dir)
    if folder.is_file():
        folder = folder.parent
    if not re.fullmatch(r"[a-z0-9_]+", section):
        raise ValueError(f"a model card section is a lower-case name like 'nudity', got {section!r}")
    if not (folder / CONFIG_NAME).is_file():
        logger.warning("%s is not an eraser folder (no %s): its model card was not updated", folder, CONFIG_NAME)
        return None
    path = folder / CARD_NAME
    text = path.read_text(encoding="utf-8") if path.is_file() else write_model_card(folder).read_text(encoding="utf-8")
    block = _section_text(section, metrics, source, weights_digest(folder))
    pattern = re.compile(re.escape(_begin(section)) + r".*?" + re.escape(_end(section)), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.replace(NOT_MEASURED + "\n", "")
        if MEASURED_HEADING not in text:
            text = text.rstrip("\n") + f"\n\n{MEASURED_HEADING}\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    logger.info("model card %s: %s section updated", path, section)
    return path
