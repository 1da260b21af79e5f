"""Atomic file writes: a reader (or a crash) never sees a half-written file.

A write that fails for a reason the user can fix (full disk, read-only folder, ``ulimit -f``, a file where a
folder should be) raises :class:`~receler.errors.WriteError`, one message naming the path.
"""

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from .errors import _WRITE_HINTS, WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: the suffix of atomic_write's temporary files (``.<name>.<random>.tmp``): a killed process can leave one
TMP_SUFFIX = ".tmp"


@contextmanager
def writing(path):
    """Turn an :class:`OSError` the user can fix (full disk, read-only, size limit, ...) into a
    :class:`~receler.errors.WriteError` naming ``path``; other errors pass through unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if err.errno in _WRITE_HINTS:
            raise WriteError(path, err) from None
        raise


def make_folder(path) -> Path:
    """``mkdir -p`` whose failure (read-only, a file in the way) is one message naming the folder."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the target's folder, then rename it into place.

    The rename is atomic on POSIX, so ``path`` holds either the old content or the new one. Write with
    Python's own file objects (or :func:`atomic_write_bytes`) so a full disk surfaces as an ``OSError``.
    """
    path = Path(path)
    make_folder(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        with writing(path):
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data) -> None:
    """Write ``data`` (bytes or a buffer) atomically. Serialise to memory first (``torch.save`` into a
    ``BytesIO``, ``safetensors.torch.save``): their own file writers report a full disk as a bare
    ``RuntimeError``, Python's file objects as an ``OSError`` that names the cause."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def torch_save_bytes(obj) -> memoryview:
    """``torch.save(obj)`` into memory, for :func:`atomic_write_bytes`."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_lines(path, what: str, flag: str, item: str = "item") -> list:
    """The non-empty lines of a UTF-8 text file, stripped, without ``#`` comments and ``...`` placeholder lines
    (both logged): one item per line.

    A missing, unreadable or empty file is a :class:`~receler.errors.UserError` naming ``what`` and ``flag``.
    """
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path} does not exist{' (it is a folder)' if path.is_dir() else ''}: pass a "
                        f"text file with one {item} per line.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path} is not valid UTF-8. Re-save the {what} as UTF-8.") from None
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be read ({err.strerror}). Check its permissions.") from None
    from .prompts import is_placeholder, skipped_note

    lines = [line.strip() for line in text.splitlines()]
    comments = sum(line.startswith("#") for line in lines)
    placeholders = sum(is_placeholder(line) for line in lines if line)
    lines = [line for line in lines if line and not line.startswith("#") and not is_placeholder(line)]
    if comments or placeholders:
        logging.getLogger(__name__).info("Read %d %ss from %s%s.", len(lines), item, path,
                                         skipped_note(comments, placeholders))
    if not lines:
        raise UserError(f"{flag} {path} lists no {item}s (one per line expected)")
    return lines
