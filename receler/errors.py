"""User-facing errors and the CLI wrapper that prints them without a traceback."""

import functools
import logging
import sys


class UserError(Exception):
    """Something the user can fix (a path, a file, a flag). CLIs print the message alone and exit 2."""


def cli_entry(main):
    """Wrap a CLI's ``main(argv)`` so a :class:`UserError` becomes one clear message and exit code 2.

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

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    """Plain, timestamp-free log lines for CLIs (library code only calls ``logging.getLogger``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
