"""Resuming a run with the settings it started with: the checkpoint's settings against this run's.

A checkpoint continues one training. Resuming it with another learning rate, step count, prompt set, loss
weight, seed, video size or model gives an eraser that neither run describes (the optimizer even restores
the old learning rate), so :func:`check_resume_settings` refuses such a resume, listing every change,
unless ``--allow_changed_args`` is given; then the changes are logged and recorded in ``args.json``.

The checkpoint's settings are read from its ``eraser_config.json`` (``train_config``, ``resolved`` and
``base_model``, written with every checkpoint); the prompts are compared by a hash of their rows.
"""

import hashlib
import json
import logging
from pathlib import Path

from .checkpoint import CONFIG_NAME
from .errors import UserError

logger = logging.getLogger(__name__)

#: options compared as given: each changes what an update computes
RESULT_OPTIONS = (
    "learning_rate", "weight_decay", "max_grad_norm", "num_inference_steps", "train_timesteps", "trajectory",
    "start_guidance", "eta", "alpha", "anchor_prompt", "anchor_weight", "mask_threshold", "mask_mode",
    "mask_normalize", "mask_fallback", "seed", "batch_size", "scheduler", "target_concept", "adversarial",
    "adv_num_tokens", "adv_steps", "adv_lr", "adv_weight",
)
#: settings compared as resolved (a default filled from the model or the prompts counts as the value)
RESOLVED_SETTINGS = ("beta", "num_frames", "height", "width", "loss_target", "concept_words", "prompt_concepts")


def prompt_rows_hash(prompts, preserve_prompts=None, anchor_prompts=None) -> str:
    """A short hash of the training rows (prompt, preserve prompt, anchor), in order."""
    rows = [list(prompts), None if preserve_prompts is None else list(preserve_prompts),
            None if anchor_prompts is None else list(anchor_prompts)]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def model_hash(pipeline_class: str, transformer_config: dict) -> str:
    """The model as far as the result goes: its pipeline class and transformer configuration."""
    config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    text = json.dumps([pipeline_class, config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_settings(options: dict, resolved: dict | None = None, model: str | None = None) -> dict:
    """The settings that change the result, from a config's options, what was resolved from them (may be
    partial: only the keys present are compared) and the model hash."""
    out = {k: options[k] for k in RESULT_OPTIONS if k in options}
    resolved = resolved or {}
    for k in RESOLVED_SETTINGS:
        if resolved.get(k) is not None:
            out[k] = list(resolved[k]) if isinstance(resolved[k], tuple) else resolved[k]
    if resolved.get("prompts") is not None:
        out["prompt_rows"] = prompt_rows_hash(resolved["prompts"], resolved.get("preserve_prompts"),
                                              resolved.get("anchor_prompts"))
    if model is not None:
        out["model"] = model
    return out


def checkpoint_settings(folder) -> dict | None:
    """The settings a checkpoint was trained with, or None for a checkpoint that does not record them."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"--resume_from {folder}: {path} cannot be read ({err}); resume from another checkpoint.") from None
    if not isinstance(config, dict) or not isinstance(config.get("train_config"), dict):
        return None
    base = config.get("base_model") or {}
    model = None
    if isinstance(base, dict) and isinstance(base.get("transformer_config"), dict):
        model = model_hash(str(base.get("pipeline_class")), base["transformer_config"])
    return run_settings(config["train_config"], config.get("resolved") or {}, model)


def changed_settings(before: dict, now: dict) -> dict:
    """``{setting: (checkpoint's value, this run's value)}`` for the settings both know and that differ."""
    return {k: (before[k], now[k]) for k in now if k in before and before[k] != now[k]}


def describe_changes(changes: dict) -> str:
    return "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items())


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume_settings(checkpoint, current: dict, allow_changed: bool) -> dict:
    """Compare ``current`` (:func:`run_settings` of this run) with the settings of the ``checkpoint`` folder
    (already resolved: a ``checkpoints/step_N`` folder). Raises :class:`UserError` listing every change unless
    ``allow_changed``; returns the changes (``{}`` when none or when the checkpoint records no settings)."""
    before = checkpoint_settings(checkpoint)
    if before is None:
        logger.warning("--resume_from %s records no training settings (an older checkpoint): they cannot be "
                       "compared with this run's", checkpoint)
        return {}
    changes = changed_settings(before, current)
    if changes and not allow_changed:
        raise UserError(
            f"--resume_from {checkpoint} was trained with other settings than this run: {describe_changes(changes)}. "
            f"A resumed run must use its checkpoint's settings (the optimizer state, the prompt order and the "
            f"trajectory all depend on them): pass the same flags again, or --allow_changed_args to continue with "
            f"the new ones (the change is recorded in args.json)."
        )
    return changes


def changes_record(changes: dict) -> dict:
    """JSON form of the changes for ``args.json``."""
    return {k: {"checkpoint": old, "now": new} for k, (old, new) in changes.items()}
