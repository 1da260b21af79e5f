"""Eraser folders on disk: the published format, read and written, validated before anything loads.

A folder holds ``eraser_config.json`` (``{"eraser_type": "adapter", "eraser_rank": R, ...}``; readers
ignore unknown keys), ``eraser_weights.pt`` (``torch.save`` of ``{module_name: adapter_state_dict}``,
the layout of the published erasers) and ``eraser_weights.safetensors`` (the same, flat keys
``<module_name>.down.weight``). Reading prefers safetensors; ``.pt`` is read with
``weights_only=True`` so a checkpoint can never run code.

Folders written here also hold ``eraser_manifest.json``: each file is replaced atomically, but three files
cannot be replaced at once, so the manifest records the SHA-256 of the files being written and of those they
replace before the first one is written, and of the complete save after the last. A reader then loads a
weights file and config of one save (the new one, or the old one after a save that was killed half way) and
refuses a folder that mixes two. A folder without a manifest (a published eraser, or one from an older
version) loads as before. Eraser weights must be finite, on save and on load.
"""

import hashlib
import json
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes

from .erasers.utils import AdapterEraser
from .erasers.wrapper import (ADAPTER_KEYS, EraserLayout, EraserStack, attach_erasers, collect_erasers, eraser_rank_of,
                              eraser_state)
from .errors import UserError
from .io_utils import atomic_write_bytes, atomic_write_json, torch_save_bytes

logger = logging.getLogger(__name__)

CONFIG_NAME = "eraser_config.json"
WEIGHTS_PT = "eraser_weights.pt"
WEIGHTS_SAFETENSORS = "eraser_weights.safetensors"
MANIFEST_NAME = "eraser_manifest.json"


class CheckpointError(UserError):
    """An eraser checkpoint that cannot be loaded onto this transformer (nothing was loaded)."""


# ----------------------------------------------------------------------------------------------- write


def save_eraser_folder(folder, transformer, layout: EraserLayout, extra_config: dict | None = None,
                       extra_files: dict | None = None) -> Path:
    """Write the erasers of ``transformer`` as an eraser folder (both weight formats + config) as a unit:
    the manifest says "writing" until every file is in place (see the module's docstring). ``extra_files``
    (``{name: bytes}``, e.g. a checkpoint's training state) belong to the same unit.

    Non-finite weights are refused (:class:`CheckpointError` naming the tensor) and nothing is written."""
    folder = Path(folder)
    state = eraser_state(transformer, layout)
    check_finite(state, f"the erasers to be saved in {folder}", hint="training diverged; nothing was written")
    config = {
        "eraser_type": "adapter",
        "eraser_rank": eraser_rank_of(state),
        "model_family": layout.family,
        "num_erasers": len(state),
        **(extra_config or {}),
    }
    flat = {f"{name}.{key}": tensor.contiguous() for name, sd in state.items() for key, tensor in sd.items()}
    files = {
        WEIGHTS_SAFETENSORS: safetensors_bytes(flat, metadata={"format": "pt"}),
        WEIGHTS_PT: torch_save_bytes(state),
        CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
        **(extra_files or {}),
    }
    write_files_as_unit(folder, files)
    return folder


def write_files_as_unit(folder, files: dict) -> None:
    """Write ``{name: bytes}`` into ``folder`` so a reader never takes files of two saves for one eraser.

    Each file is replaced atomically, but not all together: the manifest first records the hashes of the
    files being written and of those they replace ("writing"), then the files, then the manifest of the
    complete save. A save killed half way leaves each file either old or new, and the manifest lets
    :func:`choose_weights` find a weights file and config of the same save, or refuse.
    """
    folder = Path(folder)
    new = {name: _sha256(data) for name, data in files.items()}
    previous = _present_save(folder, list(files))
    atomic_write_json(folder / MANIFEST_NAME, {"format": 1, "complete": False, "sha256": new, "previous": previous})
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_json(folder / MANIFEST_NAME, {"format": 1, "complete": True, "sha256": new})


def _present_save(folder: Path, names: list) -> dict | None:
    """The hashes of the complete save now in ``folder`` (its manifest's, or those of a folder without one);
    None when the folder holds a save that was itself interrupted (no consistent set is known)."""
    try:
        manifest = read_manifest(folder)
    except CheckpointError:  # an unreadable manifest: nothing known about the files present
        return None
    if manifest is None:
        return {n: file_sha256(folder / n) for n in names if (folder / n).is_file()}
    return manifest.get("sha256") if manifest.get("complete") else None


def read_manifest(folder) -> dict | None:
    """``eraser_manifest.json`` of ``folder``, or None when there is none (a published folder)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); delete it to load the folder without the check.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256", {}), dict):
        raise CheckpointError(f"{path} is not a manifest this version wrote; delete it to load the folder without the check.")
    return manifest


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def _matches(folder: Path, name: str, hashes: dict) -> bool:
    return name in hashes and (folder / name).is_file() and file_sha256(folder / name) == hashes[name]


def choose_weights(folder, candidates: list) -> Path:
    """The first of ``candidates`` (weights files in ``folder``, preferred first) that belongs to one save
    with the folder's config, by the manifest; a folder without a manifest: the first candidate.

    After a save that was killed half way, that is the new save if its files are all in place, else the old
    one; a weights file whose save left no consistent config is refused (:class:`CheckpointError`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return candidates[0]
    versions = [("saved", manifest.get("sha256") or {})]
    if not manifest.get("complete"):
        versions = [("new", manifest.get("sha256") or {}), ("previous", manifest.get("previous") or {})]
    for which, hashes in versions:
        config_ok = not (folder / CONFIG_NAME).exists() or _matches(folder, CONFIG_NAME, hashes)
        for weights in candidates:
            if not _matches(folder, weights.name, hashes):
                continue
            if not config_ok and manifest.get("complete"):  # edited by hand after a complete save
                logger.warning("%s was changed after the eraser was saved (it differs from %s); the weights are "
                               "as saved", folder / CONFIG_NAME, MANIFEST_NAME)
            elif not config_ok:
                continue
            if not manifest.get("complete"):
                logger.warning("the last save into %s was interrupted; loading the %s eraser, whose files are "
                               "complete", folder, which)
            elif weights != candidates[0]:
                logger.warning("%s is not the file saved with the rest of %s (its SHA-256 differs from %s); "
                               "loading %s, which is", candidates[0], folder, MANIFEST_NAME, weights.name)
            return weights
    if not manifest.get("complete"):
        raise CheckpointError(
            f"the eraser in {folder} is incomplete: a save into it was interrupted and left weights and config of "
            f"two different saves ({MANIFEST_NAME} lists both), so it is not loaded. Use a checkpoint under "
            f"checkpoints/, or train again (--resume_from a checkpoint)."
        )
    raise CheckpointError(
        f"{', '.join(str(c) for c in candidates)} {'is' if len(candidates) == 1 else 'are'} not the file(s) saved "
        f"with the rest of {folder} (SHA-256 differs from {MANIFEST_NAME}): the folder mixes files of two saves. "
        f"If you replaced a file on purpose, delete {MANIFEST_NAME}."
    )


def verify_file(folder, name: str) -> None:
    """Refuse ``name`` in ``folder`` unless its manifest (if any) lists it with this content, from a complete
    save (e.g. a checkpoint's training state)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or name not in (manifest.get("sha256") or {}):
        return
    if not manifest.get("complete") or not _matches(folder, name, manifest["sha256"]):
        raise CheckpointError(
            f"{folder / name} is not the file saved with the rest of {folder} (its save did not finish, or its "
            f"SHA-256 differs from {MANIFEST_NAME}). Use another checkpoint; if you replaced the file on purpose, "
            f"delete {MANIFEST_NAME}."
        )


def check_finite(state: dict, source: str, hint: str = "this eraser is broken (its training diverged)") -> None:
    """Refuse erasers holding NaN or Inf: they render black or noisy videos that a detector scores as clean."""
    for name, sd in state.items():
        for key, tensor in sd.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise CheckpointError(
                    f"{source}: tensor '{name}.{key}' holds {bad} non-finite value(s) (NaN or Inf); {hint}. "
                    f"Use an earlier checkpoint, or retrain with a lower --learning_rate."
                )


# ------------------------------------------------------------------------------------------------ read


def _unflatten(flat: dict, path="the safetensors eraser file") -> dict:
    state = {}
    for key, tensor in flat.items():
        for adapter_key in ADAPTER_KEYS:
            if key.endswith("." + adapter_key):
                state.setdefault(key[: -len(adapter_key) - 1], {})[adapter_key] = tensor
                break
        else:
            raise CheckpointError(f"unexpected tensor '{key}' in {path} (not an adapter weight: {', '.join(ADAPTER_KEYS)})")
    return state


def _load_pt(path: Path) -> dict:
    state = _read_pt(path)
    for name, sd in state.items():
        for key, value in sd.items():  # the same rule as the safetensors layout: adapter weights only
            if key not in ADAPTER_KEYS or not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"unexpected entry '{name}.{key}' in the .pt eraser file {path} (not an adapter weight: "
                    f"{', '.join(ADAPTER_KEYS)})"
                )
    return state


def _read_pt(path: Path) -> dict:
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
        candidates = [c for c in (path / WEIGHTS_SAFETENSORS, path / WEIGHTS_PT) if c.exists()]
        if not candidates:
            raise CheckpointError(f"{path} holds no {WEIGHTS_SAFETENSORS} or {WEIGHTS_PT}: it is not an eraser folder")
        weights = choose_weights(path, candidates)
    else:
        weights = choose_weights(folder, [path])
    try:
        state = _unflatten(load_safetensors(str(weights)), weights) if weights.suffix == ".safetensors" else _load_pt(weights)
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"could not read eraser file {weights}: {err}") from None
    if not state:
        raise CheckpointError(f"{weights} holds no erasers")
    check_finite(state, str(weights))
    config = {}
    if (folder / CONFIG_NAME).exists():
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{folder / CONFIG_NAME} must hold a JSON object such as {{\"eraser_type\": \"adapter\", "
                f"\"eraser_rank\": 128}}, not a {type(config).__name__}. Fix or delete it (the rank is read from "
                f"the weights)."
            )
    return config, state, weights


# -------------------------------------------------------------------------------------------- validate


def family_of_state(state: dict, layouts) -> EraserLayout | None:
    """The layout whose key pattern every checkpoint key matches, or None."""
    for layout in layouts:
        if all(layout.key_pattern.match(name) for name in state):
            return layout
    return None


def check_eraser_family(state: dict, layout: EraserLayout, source="checkpoint", config: dict | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``state`` holds erasers of ``layout``'s family: every key in its
    layout and, where the eraser config names a family, that one (families whose erasers sit at the same
    paths, e.g. ``transformer_blocks.{i}.attn1``, are told apart by it). The message names the family the
    erasers do belong to, if any."""
    from .families import all_layouts  # local import: families import this module's siblings

    named = (config or {}).get("model_family")
    if named and named != layout.family and family_of_state(state, [layout]) is not None:
        display = next((lay.display_name for lay in all_layouts() if lay.family == named), named)
        raise CheckpointError(
            f"{source} holds {display} erasers (its eraser_config.json says so) but the model is "
            f"{layout.display_name}. Use an eraser trained for {layout.display_name}."
        )
    if family_of_state(state, [layout]) is None:
        other = family_of_state(state, [lay for lay in all_layouts() if lay.family != layout.family])
        example = next(iter(state))
        by_config = next((lay for lay in all_layouts() if lay.family == named), None)
        other = by_config or other
        found = f"a {other.display_name} eraser" if other else "not an eraser for any known model family"
        raise CheckpointError(
            f"{source} is {found} (keys like '{example}') but the model is {layout.display_name} "
            f"(expects keys '{layout.module_name(0)}' ...). Use an eraser trained for {layout.display_name}."
        )


def validate_state(state: dict, transformer, layout: EraserLayout, eraser_rank: int | None, source="checkpoint") -> int:
    """Check ``state`` against the transformer; raise :class:`CheckpointError` naming the first mismatch.

    Returns the checkpoint's rank. Nothing is loaded here, so a failure leaves the model untouched.
    """
    check_eraser_family(state, layout, source)
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
    check_finite({name: state[name] for name, _ in expected}, source)
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


def _checked_source(source, transformer, layout: EraserLayout, eraser_rank: int | None) -> tuple:
    """``(config, state, label, rank)`` of an eraser (a folder, a weights file or an in-memory published-layout
    dict), checked whole against ``transformer`` before anything is loaded."""
    if isinstance(source, dict):
        config, state, label = {}, source, "eraser checkpoint"
    else:
        config, state, weights = read_eraser_folder(source)
        label = str(weights)
    if config.get("eraser_type", "adapter") != "adapter":
        raise CheckpointError(f"{label}: eraser_type '{config['eraser_type']}' is not supported (only 'adapter')")
    check_eraser_family(state, layout, label, config)
    rank = validate_state(state, transformer, layout, eraser_rank, source=label)
    _warn_if_other_base(config, transformer, layout)
    return config, state, label, rank


def load_erasers(
    transformer, layout: EraserLayout, source, eraser_rank: int | None = None, eraser_weight: float = 1.0
) -> dict:
    """Load erasers (a folder, a weights file, or an in-memory published-layout dict) onto ``transformer``.

    The whole checkpoint is validated first; on any mismatch nothing is wrapped or loaded. Blocks are
    wrapped if they are not yet. ``eraser_weight`` w scales every eraser at inference, ``h + w * eraser(h)``,
    for every family (0: the clean model, 1: as trained). Returns the eraser config (``{}`` for an in-memory
    dict).
    """
    config, state, label, rank = _checked_source(source, transformer, layout, eraser_rank)
    existing = collect_erasers(transformer, layout)
    stacked = any(isinstance(e, EraserStack) for e in existing.values())  # replaced by the one eraser loaded now
    if existing and not stacked and eraser_rank_of({k: v.state_dict() for k, v in existing.items()}) != rank:
        raise CheckpointError(
            f"{label} has rank {rank} but this transformer already carries erasers of another rank; "
            f"load it onto a fresh transformer."
        )
    erasers = attach_erasers(transformer, layout, rank, eraser_weight, fresh=stacked)
    with torch.no_grad():
        for name, eraser in erasers.items():
            for key, param in eraser.state_dict(keep_vars=True).items():
                param.copy_(state[name][key].to(dtype=param.dtype))
    return config


def load_eraser_stack(transformer, layout: EraserLayout, sources: list, weights=None) -> list:
    """Load several erasers onto ``transformer`` at once, summed at every block: ``h + sum_i w_i eraser_i(h)``
    (:class:`~receler.erasers.wrapper.EraserStack`). Ranks may differ; every eraser must be of ``layout``'s family
    and fit the transformer, and all are checked before any is loaded. One source is :func:`load_erasers`.
    Returns each eraser's config."""
    sources = list(sources)
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise CheckpointError(f"{len(sources)} erasers but {len(weights)} weights: give one --eraser_weight per "
                              f"--eraser_path (or one for all)")
    if len(sources) == 1:
        return [load_erasers(transformer, layout, sources[0], eraser_weight=weights[0])]
    loaded = [_checked_source(source, transformer, layout, None) for source in sources]
    loaded = [(config, state, rank) for config, state, _, rank in loaded]
    wrappers = attach_erasers(transformer, layout, loaded[0][2], eraser_weight=1.0)
    with torch.no_grad():
        for name in wrappers:
            members = []
            for _, state, rank in loaded:
                width = state[name]["down.weight"].shape[1]
                eraser = AdapterEraser(width, rank).to(state[name]["down.weight"].device)
                eraser.load_state_dict({k: v.float() for k, v in state[name].items()})
                members.append(eraser)
            block = int(layout.key_pattern.match(name).group(1))
            attn = getattr(layout.blocks(transformer)[block], layout.attn_attr)
            device = next(attn.attn.parameters()).device
            attn.adapter = EraserStack(members, weights).to(device)
    return [config for config, _, _ in loaded]
