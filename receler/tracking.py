"""Experiment trackers for training (``--report_to``), through accelerate's tracker classes.

``tensorboard`` (the default; the package is in requirements.txt, so it works offline out of the box) writes
event files to ``<output_dir>/tensorboard``; ``wandb`` logs to Weights & Biases (an optional install; its
own settings apply, so ``WANDB_MODE=offline`` keeps the run on disk); ``none`` logs only to
``train_log.jsonl``. Only the main process tracks.
"""

import importlib.util
import logging
from pathlib import Path

import numpy as np

from .errors import UserError

logger = logging.getLogger(__name__)

TRACKERS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"


def check_tracker(kind: str) -> None:
    """Refuse ``--report_to wandb`` before any model loads when wandb is not installed."""
    if kind == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UserError("--report_to wandb needs the wandb package: `pip install wandb` (set WANDB_MODE=offline to "
                        "keep runs on this machine), or use --report_to tensorboard / none.")


def _scalar_config(values: dict) -> dict:
    """Hyperparameters as trackers take them: bool, int, float, str or None (anything else as its text)."""
    out = {}
    for key, value in values.items():
        out[key] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Tracker:
    """One run's tracker: ``log`` scalars, ``log_images`` pictures, ``close`` at the end."""

    def __init__(self, kind: str, backend):
        self.kind, self.backend = kind, backend

    def log(self, values: dict, step: int) -> None:
        self.backend.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def log_images(self, images: dict, step: int) -> None:
        """``{name: uint8 [H, W, 3] array}``."""
        batches = {name: np.asarray(image)[None] for name, image in images.items()}
        if self.kind == "tensorboard":
            self.backend.log_images(batches, step=step, dataformats="NHWC")
        else:
            self.backend.log_images(batches, step=step)

    def close(self) -> None:
        self.backend.finish()


def open_tracker(kind: str, output_dir, config: dict, resume_step: int = 0) -> Tracker | None:
    """Start the tracker ``kind`` for a run writing to ``output_dir``; None for ``none`` (or a missing tensorboard).

    ``resume_step``: the update a resumed run continues from; TensorBoard drops the events the interrupted run
    wrote after it (those updates are trained again)."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            logger.warning("tensorboard is not installed (it is in requirements.txt: pip install -r requirements.txt); "
                           "logging to train_log.jsonl only. --report_to none silences this.")
            return None
        from accelerate.tracking import TensorBoardTracker

        kwargs = {"purge_step": resume_step + 1} if resume_step else {}
        backend = TensorBoardTracker(TENSORBOARD_DIR, str(output_dir), **kwargs)
    elif kind == "wandb":
        check_tracker(kind)
        from accelerate.tracking import WandBTracker

        backend = WandBTracker("receler", name=Path(output_dir).name, dir=str(output_dir))
    else:
        raise UserError(f"--report_to {kind!r} is not one of: {', '.join(TRACKERS)}")
    backend.start()
    backend.store_init_configuration(_scalar_config(config))
    logger.info("tracking with %s%s", kind, f" in {Path(output_dir) / TENSORBOARD_DIR}" if kind == "tensorboard" else "")
    return Tracker(kind, backend)
