"""Checks of numeric command-line flags, run before anything loads: one message naming the flag.

argparse already refuses text where a number belongs; these refuse numbers that make no sense (a negative
batch size, a zero width that would silently become the model's default, NaN GPU memory).
"""

import math

from .errors import UserError


def check_ints(args, names, low: int = 1, hint: str = "") -> None:
    """Each ``--name`` that is given (not None) must be an integer >= ``low``."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise UserError(f"--{name} must be at least {low} (got {value}){hint}")


def check_floats(args, names, low: float | None = None, above: bool = False, high: float | None = None) -> None:
    """Each ``--name`` that is given must be a finite number, ``>= low`` (``> low`` with ``above``) and
    ``<= high`` where those are given."""
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        bad = not math.isfinite(value)
        bad |= low is not None and (value < low or (above and value == low))
        bad |= high is not None and value > high
        if bad:
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if above else '>='} {low:g}")
            if high is not None:
                bounds.append(f"<= {high:g}")
            raise UserError(f"--{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''} "
                            f"(got {value})")
