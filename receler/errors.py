"""User-facing errors and the CLI wrapper that prints them without a traceback."""

import errno
import functools
import logging
import sys

#: the exit code of a run stopped by Ctrl-C (128 + SIGINT, what shells report for an interrupted command)
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user can fix (a path, a file, a flag). CLIs print the message alone and exit 2."""


class WriteError(UserError, OSError):
    """Writing a file failed (read-only folder, full disk, file size limit, a path that is a file).

    Still an :class:`OSError` (``errno``, ``filename``) for code that handles those; CLIs print its message.
    """

    def __init__(self, path, err: OSError):
        hint = _WRITE_HINTS.get(err.errno, "check the path and its permissions")
        reason = err.strerror or str(err)
        OSError.__init__(self, err.errno, f"cannot write {path}: {reason}. {hint[0].upper()}{hint[1:]}.", str(path))

    def __str__(self):
        return self.strerror


_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder; files already there are intact",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another folder",
    errno.EROFS: "the folder is on a read-only file system: choose a writable folder",
    errno.EACCES: "the folder is not writable by this user: fix its permissions or choose another folder",
    errno.EPERM: "the folder is not writable by this user: fix its permissions or choose another folder",
    errno.EFBIG: "the file exceeds the file size limit of this shell (ulimit -f): raise the limit",
    errno.EEXIST: "a file of that name is in the way where a folder is needed: choose another path",
    errno.ENOTDIR: "a file of that name is in the way where a folder is needed: choose another path",
    errno.EISDIR: "a folder of that name is in the way where a file is needed: choose another path",
}


class RunInterrupted(Exception):
    """A run stopped early on request (Ctrl-C) after saving its state; CLIs print the message and exit 130,
    so a ``set -e`` script stops there instead of using an unfinished result."""


def cli_entry(main):
    """Wrap a CLI's ``main(argv)`` so a :class:`UserError` becomes one clear message and exit code 2, and
    a run that stopped early on request (:class:`RunInterrupted`) exit code 130. A Ctrl-C nobody handled
    stays a ``KeyboardInterrupt`` (Python exits 130 for it too).

    Tests call the wrapped function directly and catch ``SystemExit``; programming errors still
    raise with their traceback, because those are ours to fix, not the user's.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except RunInterrupted as err:
            print(f"interrupted: {err}", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    """Plain, timestamp-free log lines for CLIs (library code only calls ``logging.getLogger``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
