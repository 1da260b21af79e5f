"""Eraser folders on disk: the published format, read and written, validated before anything loads.

A folder holds ``eraser_config.json`` (``{"eraser_type": "adapter", "eraser_rank": R, ...}``; readers
ignore unknown keys), ``eraser_weights.pt`` (``torch.save`` of ``{module_name: adapter_state_dict}``,
the layout of the published erasers) and ``eraser_weights.safetensors`` (the same, flat keys
``<module_name>.down.weight``). Reading prefers safetensors; ``.pt`` is read with
``weights_only=True`` so a checkpoint can never run code.
"""

import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from .erasers.wrapper import ADAPTER_KEYS, EraserLayout, attach_erasers, collect_erasers, eraser_rank_of, eraser_state
from .errors import UserError
from .io_utils import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "eraser_config.json"
WEIGHTS_PT = "eraser_weights.pt"
WEIGHTS_SAFETENSORS = "eraser_weights.safetensors"


class CheckpointError(UserError):
    """An eraser checkpoint that cannot be loaded onto this transformer (nothing was loaded)."""


# ----------------------------------------------------------------------------------------------- write


def save_eraser_folder(folder, transformer, layout: EraserLayout, extra_config: dict | None = None) -> Path:
    """Write the erasers of ``transformer`` as an eraser folder (both weight formats + config), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = eraser_state(transformer, layout)
    config = {
        "eraser_type": "adapter",
        "eraser_rank": eraser_rank_of(state),
        "model_family": layout.family,
        "num_erasers": len(state),
        **(extra_config or {}),
    }
    flat = {f"{name}.{key}": tensor for name, sd in state.items() for key, tensor in sd.items()}
    atomic_write(folder / WEIGHTS_SAFETENSORS, lambda tmp: save_safetensors(flat, tmp, metadata={"format": "pt"}))
    atomic_write(folder / WEIGHTS_PT, lambda tmp: torch.save(state, tmp))
    atomic_write_json(folder / CONFIG_NAME, config)
    return folder


# ------------------------------------------------------------------------------------------------ read


def _unflatten(flat: dict) -> dict:
    state = {}
    for key, tensor in flat.items():
        for adapter_key in ADAPTER_KEYS:
            if key.endswith("." + adapter_key):
                state.setdefault(key[: -len(adapter_key) - 1], {})[adapter_key] = tensor
                break
        else:
            raise CheckpointError(f"unexpected tensor '{key}' in the safetensors eraser file (not an adapter weight)")
    return state


def _load_pt(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled objects other than tensors, which could run code "
            f"when loaded. An eraser .pt must be a plain dict of state dicts; re-save it with torch.save or "
            f"use an eraser_weights.safetensors file. (torch said: {str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"could not read eraser file {path}: {err}. Is the file complete?") from None
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise CheckpointError(
            f"{path} is not an eraser checkpoint: expected a dict {{module_name: adapter_state_dict}}, "
            f"got {type(state).__name__}"
        )
    return state


def resolve_eraser_path(path) -> Path:
    """``path``, or its parent when ``path`` does not exist and the parent is an eraser folder (with a warning).

    The seed toolkit's README trains into ``--output_dir ./output/nudity_unlearning`` and then renders with
    ``--eraser_path ./output/nudity_unlearning/cogvideox_nudity_eraser``: its trainer wrote the eraser one level
    down. Here the output folder is the eraser, so that command names a folder that never exists; it means the
    parent. Anything else that does not exist is left for :func:`read_eraser_folder` to refuse.
    """
    path = Path(path)
    parent = path.parent
    if not path.exists() and (parent / CONFIG_NAME).is_file() and any(
            (parent / name).is_file() for name in (WEIGHTS_SAFETENSORS, WEIGHTS_PT)):
        logger.warning("eraser path %s does not exist; its parent %s is an eraser folder (the trainer's --output_dir "
                       "is the eraser itself): loading that one", path, parent)
        return parent
    return path


def read_eraser_folder(path) -> tuple:
    """Return ``(config, state, weights_file)`` from an eraser folder, or from a weights file directly."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"eraser path {path} does not exist. Pass the folder that holds eraser_config.json and "
            f"eraser_weights.pt / .safetensors (the trainer's --output_dir)."
        )
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [path / WEIGHTS_SAFETENSORS, path / WEIGHTS_PT]
        weights = next((c for c in candidates if c.exists()), None)
        if weights is None:
            raise CheckpointError(f"{path} holds no {WEIGHTS_SAFETENSORS} or {WEIGHTS_PT}: it is not an eraser folder")
    else:
        weights = path
    try:
        state = _unflatten(load_safetensors(str(weights))) if weights.suffix == ".safetensors" else _load_pt(weights)
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"could not read eraser file {weights}: {err}") from None
    if not state:
        raise CheckpointError(f"{weights} holds no erasers")
    config = {}
    if (folder / CONFIG_NAME).exists():
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON: {err}") from None
    return config, state, weights


# -------------------------------------------------------------------------------------------- validate


def family_of_state(state: dict, layouts) -> EraserLayout | None:
    """The layout whose key pattern every checkpoint key matches, or None."""
    for layout in layouts:
        if all(layout.key_pattern.match(name) for name in state):
            return layout
    return None


def validate_state(state: dict, transformer, layout: EraserLayout, eraser_rank: int | None, source="checkpoint") -> int:
    """Check ``state`` against the transformer; raise :class:`CheckpointError` naming the first mismatch.

    Returns the checkpoint's rank. Nothing is loaded here, so a failure leaves the model untouched.
    """
    from .families import all_layouts  # local import: families import this module's siblings

    if family_of_state(state, [layout]) is None:
        other = family_of_state(state, [lay for lay in all_layouts() if lay.family != layout.family])
        example = next(iter(state))
        found = f"a {other.display_name} eraser" if other else "not an eraser for any known model family"
        raise CheckpointError(
            f"{source} is {found} (keys like '{example}') but the model is {layout.display_name} "
            f"(expects keys '{layout.module_name(0)}' ...). Use an eraser trained for {layout.display_name}."
        )
    expected = layout.expected_shapes(transformer)
    if len(state) != len(expected) or set(state) != {name for name, _ in expected}:
        raise CheckpointError(
            f"{source} has {len(state)} erasers but this {layout.display_name} transformer has {len(expected)} "
            f"blocks: it was trained for a different model size (e.g. 2b vs 5b)."
        )
    ckpt_rank = None
    for name, width in expected:
        sd = state[name]
        missing = [k for k in ADAPTER_KEYS if k not in sd]
        if missing:
            raise CheckpointError(f"{source}: eraser '{name}' lacks {', '.join(missing)}")
        down = sd["down.weight"]
        rank, ckpt_width = down.shape
        if ckpt_width != width:
            raise CheckpointError(
                f"{source}: erasers are {ckpt_width} wide but this transformer's attention is {width} wide "
                f"(eraser '{name}'): it was trained for a different model."
            )
        if ckpt_rank is None:
            ckpt_rank = rank
        shapes = {"down.bias": (rank,), "up.weight": (width, rank), "up.bias": (width,)}
        bad = [k for k, shape in shapes.items() if tuple(sd[k].shape) != shape]
        if rank != ckpt_rank or bad:
            raise CheckpointError(f"{source}: eraser '{name}' has inconsistent shapes ({', '.join(bad) or 'rank'})")
    if eraser_rank is not None and eraser_rank != ckpt_rank:
        raise CheckpointError(
            f"{source} has rank {ckpt_rank} but eraser rank {eraser_rank} was requested. Leave --eraser_rank "
            f"out (it is read from eraser_config.json) or pass {ckpt_rank}."
        )
    return ckpt_rank


def _warn_if_other_base(config: dict, transformer, layout: EraserLayout) -> None:
    base = config.get("base_model", {}).get("transformer_config")
    if not base:
        return
    current = dict(transformer.config)
    differing = sorted(k for k, v in base.items() if not k.startswith("_") and k in current and current[k] != v)
    if differing:
        logger.warning(
            "this eraser was trained on a %s transformer whose config differs in %s; it loads (the shapes match) "
            "but its effect may differ.", layout.display_name, ", ".join(differing)
        )


# ------------------------------------------------------------------------------------------------ load


def load_erasers(
    transformer, layout: EraserLayout, source, eraser_rank: int | None = None, eraser_weight: float = 1.0
) -> dict:
    """Load erasers (a folder, a weights file, or an in-memory published-layout dict) onto ``transformer``.

    The whole checkpoint is validated first; on any mismatch nothing is wrapped or loaded. Blocks are
    wrapped if they are not yet. ``eraser_weight`` w scales every eraser at inference, ``h + w * eraser(h)``,
    for every family (0: the clean model, 1: as trained). Returns the eraser config (``{}`` for an in-memory
    dict).
    """
    if isinstance(source, dict):
        config, state, label = {}, source, "eraser checkpoint"
    else:
        config, state, weights = read_eraser_folder(source)
        label = str(weights)
    if config.get("eraser_type", "adapter") != "adapter":
        raise CheckpointError(f"{label}: eraser_type '{config['eraser_type']}' is not supported (only 'adapter')")
    rank = validate_state(state, transformer, layout, eraser_rank, source=label)
    _warn_if_other_base(config, transformer, layout)
    existing = collect_erasers(transformer, layout)
    if existing and eraser_rank_of({k: v.state_dict() for k, v in existing.items()}) != rank:
        raise CheckpointError(
            f"{label} has rank {rank} but this transformer already carries erasers of another rank; "
            f"load it onto a fresh transformer."
        )
    erasers = attach_erasers(transformer, layout, rank, eraser_weight)
    with torch.no_grad():
        for name, eraser in erasers.items():
            for key, param in eraser.state_dict(keep_vars=True).items():
                param.copy_(state[name][key].to(dtype=param.dtype))
    return config
