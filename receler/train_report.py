"""Where each training update's numbers go: ``train_log.jsonl``, the tracker, a progress bar and a log line.

The bar counts updates over the whole run (with the loss, seconds per update and the time left); log lines
are printed above it, every ``--log_every`` updates. Only the main process reports.
"""

import json
import logging

from tqdm.auto import tqdm

from .io_utils import writing

logger = logging.getLogger("receler.trainer")


def _fmt(value):
    return "-" if value is None else f"{value:.4g}"


class TrainingReport:
    """``record(row)`` once per update; ``close()`` at the end. ``log_file`` is an open text file or None (no
    log file on the other processes); ``total`` the run's planned updates, ``start`` the update it resumes at."""

    def __init__(self, log_file, tracker, total: int, start: int, log_every: int, enabled: bool = True):
        self.log_file, self.tracker, self.log_every = log_file, tracker, log_every
        self.bar = tqdm(total=total, initial=start, desc="training", unit="update", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1)

    def record(self, row: dict, metrics: dict) -> None:
        step = row["step"]
        if self.log_file is not None:
            with writing(self.log_file.name):  # a full disk is a message naming the log, not a traceback
                self.log_file.write(json.dumps(row) + "\n")
                self.log_file.flush()
        if self.tracker is not None:
            self.tracker.log(metrics, step)
        self.bar.set_postfix({"loss": f"{metrics['loss']:.4g}", "s/update": f"{row['seconds']:.2f}"}, refresh=False)
        self.bar.update(1)
        if step % self.log_every == 0:
            logger.info(
                "update %d  epoch %d  loss %.4g  unlearn %.4g  loc %s  preserve %s  |g| %.3g  lr %.3g  %.2fs",
                step, row["epoch"], metrics["loss"], metrics["loss_unlearn"], _fmt(metrics.get("loss_loc")),
                _fmt(metrics.get("loss_preserve")), metrics["grad_norm"], metrics["lr"], row["seconds"],
            )

    def close(self) -> None:
        self.bar.close()
