"""Loss curves from a trainer's ``train_log.jsonl`` (one JSON object per update)."""

import json
import logging
import math
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .io_utils import atomic_write

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "loss_unlearn", "loss_preserve", "loss_loc", "lr", "grad_norm")


def read_train_log(path) -> list[dict]:
    """Records of a ``train_log.jsonl`` (one JSON object per line); malformed lines are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Training log '{path}' does not exist. Pass the train_log.jsonl from the training --output_dir.")
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        logger.warning("Skipped %d malformed line(s) of %s.", bad, path)
    return records


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trajectory_means(records: Sequence[dict], key: str) -> list[tuple]:
    """``(last step, mean of key)`` per denoising trajectory: a new trajectory starts where the timestep goes up.
    The losses swing by orders of magnitude along one trajectory (they scale with the noise level), so the
    trend over training is the per-trajectory mean, not the raw curve."""
    groups, last_t = [], None
    for i, r in enumerate(records):
        t, value, step = r.get("timestep"), r.get(key), r.get("step", i)
        if not (_finite(t) and _finite(value) and _finite(step)):
            continue
        if last_t is None or t > last_t:
            groups.append([])
        groups[-1].append((step, value))
        last_t = t
    return [(g[-1][0], sum(v for _, v in g) / len(g)) for g in groups]


def plot_train_log(records: Sequence[dict], path) -> Path | None:
    """Plot the loss terms (with their per-trajectory means), learning rate and gradient norm over steps to a
    PNG; ``None`` if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for key in LOSS_KEYS:
        points = [(r.get("step", i), r[key]) for i, r in enumerate(records) if _finite(r.get(key)) and _finite(r.get("step", i))]
        if points:
            panels.append((key, points))
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, points) in zip(axes.flat, panels):
        steps, values = zip(*points)
        ax.plot(steps, values, lw=1.2, marker="." if len(points) < 50 else None)
        means = trajectory_means(records, key) if key.startswith("loss") else []
        if len(means) > 1:
            ax.plot(*zip(*means), lw=2.2, color="black", marker="o", ms=3, label="mean per trajectory")
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key.startswith("loss") and all(v > 0 for v in values) and max(values) / min(values) > 100:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path

