"""Stop a training loop on request without losing its state.

Ctrl-C (SIGINT) or a polite kill (SIGTERM, what ``kill``, ``pkill`` and cluster schedulers send first) only sets a
flag; the loop checks it between updates, saves a consistent state and stops. A second signal interrupts at once.
"""

from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """Context manager: ``requested`` turns true on the first SIGINT or SIGTERM; ``reason`` names the signal.

    ``saving`` says in the warning what the loop will save. The handlers replace even an inherited "ignore": a job
    started with ``&`` from a script ignores SIGINT, and ``kill -INT`` should still stop it with its state saved
    rather than do nothing. Outside the main thread, where Python cannot install handlers, signals are left alone.
    """

    def __init__(self, saving: str = "the state"):
        self.saving = saving
        self.requested = False
        self.reason = None
        self._previous = {}

    def __enter__(self):
        for signum in SIGNAL_NAMES:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not in the main thread
                break
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = SIGNAL_NAMES[signum]
        logger.warning("%s: finishing this step, then saving %s (send it again to stop at once)", self.reason,
                       self.saving)

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
