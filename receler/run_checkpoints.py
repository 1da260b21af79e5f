"""The resumable checkpoints of a training run: ``<output_dir>/checkpoints/step_N/``.

Each is an eraser folder (``eraser_config.json`` + weights, loadable on its own) plus ``training_state.pt``
(optimizer, position in the run, mid-trajectory latents). ``--resume_from latest`` picks the highest
*complete* one: a folder that lacks any of those files (a run killed while writing it, a copy cut short)
is skipped, never resumed. ``--checkpoints_total_limit K`` keeps the K highest complete ones.
"""

import logging
import re
import shutil
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_PT, WEIGHTS_SAFETENSORS
from .errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "training_state.pt"
LATEST = "latest"
_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_folder(output_dir, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{step}"


def checkpoint_step(folder) -> int | None:
    """``N`` for a folder named ``step_N``, else None."""
    match = _STEP.match(Path(folder).name)
    return int(match.group(1)) if match else None


def is_complete(folder) -> bool:
    """Whether a checkpoint folder holds everything a resume reads: the eraser config, its weights and the
    training state (written last)."""
    folder = Path(folder)
    has_weights = (folder / WEIGHTS_SAFETENSORS).is_file() or (folder / WEIGHTS_PT).is_file()
    return has_weights and (folder / CONFIG_NAME).is_file() and (folder / STATE_NAME).is_file()


def step_folders(output_dir) -> list:
    """``[(N, folder)]`` of every ``checkpoints/step_N`` folder, complete or not, by step."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found)


def complete_checkpoints(output_dir) -> list:
    """``[(N, folder)]`` of the complete checkpoints, lowest step first."""
    return [(step, folder) for step, folder in step_folders(output_dir) if is_complete(folder)]


def resolve_resume(resume_from, output_dir) -> Path | None:
    """The checkpoint folder ``--resume_from`` names: a path as given, or for ``latest`` the highest complete
    step under ``output_dir`` (None when there is none: the run starts fresh, so a job script can always pass
    ``latest``)."""
    if resume_from is None:
        return None
    if str(resume_from) != LATEST:
        folder = Path(resume_from)
        if not folder.is_dir():
            raise UserError(f"--resume_from {folder} does not exist; pass a checkpoint folder such as "
                            f"<output_dir>/checkpoints/step_100, or 'latest'.")
        return folder
    folders = step_folders(output_dir)
    complete = [(step, folder) for step, folder in folders if is_complete(folder)]
    newest = complete[-1] if complete else None
    partial = [folder.name for step, folder in folders if not is_complete(folder) and (newest is None or step > newest[0])]
    if partial:
        logger.warning("--resume_from latest: skipping %s (incomplete: a run stopped while writing it)", ", ".join(partial))
    if newest is None:
        logger.info("--resume_from latest: no complete checkpoint under %s; starting a new run",
                    Path(output_dir) / CHECKPOINTS_DIR)
        return None
    logger.info("--resume_from latest: %s", newest[1])
    return newest[1]


def rotate_checkpoints(output_dir, keep: int) -> list:
    """Delete every ``checkpoints/step_N`` folder but the ``keep`` highest complete ones; returns the deleted.

    Incomplete folders go too: they can never be resumed, and the steps they stand for are saved again when
    the run passes them."""
    kept = {folder for _, folder in complete_checkpoints(output_dir)[-keep:]} if keep > 0 else set()
    removed = []
    for _, folder in step_folders(output_dir):
        if folder not in kept:
            shutil.rmtree(folder)
            removed.append(folder)
    if removed:
        logger.info("--checkpoints_total_limit %d: removed %s", keep, ", ".join(p.name for p in removed))
    return removed
