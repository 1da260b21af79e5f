"""The training run's output folder: claimed by one run at a time, never silently reused.

:func:`claim_output_dir` is called before any model loads. It

- refuses a path that is a file, and turns a read-only or unwritable folder into one message;
- takes a lock file (``.receler-train.lock``: pid, host, start time) so a second training into the same
  folder stops with a message naming the first; a lock left by a process that no longer runs (killed,
  machine rebooted) is reported and replaced;
- refuses a folder that already holds files (another run's eraser, ``args.json``, ``train_log.jsonl``,
  ``checkpoints/``, or anything else) unless the run resumes from a checkpoint inside it
  (``--resume_from``) or ``--overwrite`` is given, which moves the old contents to a sibling folder
  ``<name>.old-<time>`` (nothing is deleted);
- removes the debris an interrupted run can leave: ``.*.tmp`` files of unfinished atomic writes and
  ``checkpoints/.step_N.partial`` folders of unfinished checkpoints (never loadable, never a user's file).
"""

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from .errors import UserError
from .io_utils import TMP_SUFFIX, make_folder, writing

logger = logging.getLogger(__name__)

LOCK_NAME = ".receler-train.lock"
CHECKPOINTS = "checkpoints"
PARTIAL_SUFFIX = ".partial"
_STEP = re.compile(r"^step_(\d+)$")


class FolderInUse(UserError):
    """Another live training holds the output folder's lock."""


# ------------------------------------------------------------------------------------------------ lock


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), to tell a live run from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5), counted after the command name
    except (OSError, IndexError):
        return None


def _lock_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "process_start": _process_start(os.getpid()), "token": uuid.uuid4().hex}


def lock_holder_alive(record: dict) -> bool | None:
    """True / False when the lock's process is known to run / not to run; None when it cannot be told (another
    host, or an unreadable lock)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    recorded = record.get("process_start")
    if recorded is not None and _process_start(pid) not in (None, recorded):
        return False  # the pid was reused by another process
    return True


class RunLock:
    """The lock file of one run in ``folder``. Created with a hard link of a complete file, so it is never seen
    half written; released only by the run that holds it."""

    def __init__(self, folder):
        self.path = Path(folder) / LOCK_NAME
        self.record = None

    def acquire(self) -> "RunLock":
        record = _lock_record()
        for _ in range(3):
            if self._create(record):
                self.record = record
                return self
            held = self._read()
            alive = lock_holder_alive(held) if held is not None else None
            if alive is False:
                logger.warning("%s was left by a training that no longer runs (pid %s on %s, started %s): replacing it",
                               self.path, held.get("pid"), held.get("host"), held.get("started"))
                if self._read() == held:  # nobody else replaced it meanwhile
                    self.path.unlink(missing_ok=True)
                continue
            raise FolderInUse(self._in_use_message(held, alive))
        raise FolderInUse(self._in_use_message(self._read(), None))

    def _create(self, record: dict) -> bool:
        tmp = self.path.with_name(f"{LOCK_NAME}.{record['token']}{TMP_SUFFIX}")
        with writing(self.path.parent):
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
                f.write(json.dumps(record) + "\n")
            try:
                os.link(tmp, self.path)  # fails if the lock exists: atomic test-and-set with the content in place
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _in_use_message(self, held: dict | None, alive) -> str:
        folder = self.path.parent
        if held is None:
            who = f"a lock file this version cannot read ({self.path})"
        else:
            who = (f"another training (pid {held.get('pid')} on {held.get('host')}, started {held.get('started')})")
        unknown = "" if alive else (f" If no training runs there any more, delete {self.path} and start again.")
        return (f"--output_dir {folder} is in use by {who}: two runs writing one folder would overwrite each "
                f"other's eraser and log. Wait for it to finish, or choose another --output_dir.{unknown}")

    def release(self) -> None:
        if self.record is not None and self._read() == self.record:
            self.path.unlink(missing_ok=True)
        self.record = None


# ---------------------------------------------------------------------------------------------- folder


def is_debris(path: Path) -> bool:
    """A file or folder an interrupted run leaves behind that nothing can load: an unfinished atomic write
    (``.<name>.<random>.tmp``) or an unfinished checkpoint (``checkpoints/.step_N.partial``)."""
    name = path.name
    if name.startswith(LOCK_NAME):  # a lock being created by another process this instant: not ours to remove
        return False
    return (name.startswith(".") and name.endswith(TMP_SUFFIX)) or (name.startswith(".step_") and name.endswith(PARTIAL_SUFFIX))


def remove_debris(folder) -> list:
    """Delete the debris of interrupted runs in ``folder`` and its ``checkpoints/``; returns what went."""
    removed = []
    for parent in (Path(folder), Path(folder) / CHECKPOINTS):
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            if not is_debris(entry):
                continue
            with writing(entry):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    if removed:
        logger.info("removed %d unfinished file(s) of an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed[:5]))
    return removed


def aside_folder(folder) -> Path:
    """A new sibling ``<name>.old-<time>`` for contents moved out of the way (never an existing path)."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    return candidate


def move_aside(entries: list, folder, why: str) -> Path | None:
    """Move ``entries`` (inside ``folder``) to a new ``<folder>.old-<time>``, keeping their relative paths."""
    if not entries:
        return None
    folder = Path(folder)
    target = aside_folder(folder)
    for entry in entries:
        destination = target / entry.relative_to(folder)
        make_folder(destination.parent)
        with writing(destination):
            os.rename(entry, destination)
    logger.warning("%s: moved %d entr%s of %s to %s", why, len(entries), "y" if len(entries) == 1 else "ies",
                   folder, target)
    return target


def _is_inside(path, folder) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def _describe(entries: list) -> str:
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


class RunFolder:
    """A claimed output folder; use as a context manager (the lock is released on exit)."""

    def __init__(self, path: Path, lock: RunLock | None, moved_to: Path | None = None):
        self.path, self.lock, self.moved_to = path, lock, moved_to

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim_output_dir(output_dir, resume_from=None, overwrite: bool = False) -> RunFolder:
    """Make ``output_dir`` this run's, or refuse with a message (see the module's docstring).

    ``resume_from``: the checkpoint folder the run continues from (already resolved); a folder holding
    files is the run's own when the checkpoint lies inside it.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir {folder} is a file, not a folder: pass the folder the eraser should be "
                        f"written to (it is created if missing).")
    make_folder(folder)
    lock = RunLock(folder).acquire()
    try:
        moved_to = _make_room(folder, resume_from, overwrite)
        remove_debris(folder)
    except BaseException:
        lock.release()
        raise
    return RunFolder(folder, lock, moved_to)


def _make_room(folder: Path, resume_from, overwrite: bool) -> Path | None:
    entries = [e for e in folder.iterdir() if e.name != LOCK_NAME and not is_debris(e)]
    resuming_here = resume_from is not None and _is_inside(resume_from, folder)
    if resuming_here:
        if overwrite:
            raise UserError(f"--overwrite would move the checkpoint --resume_from {resume_from} out of --output_dir "
                            f"{folder}; pass one of the two.")
        return None
    if not entries:
        return None
    if overwrite:
        return move_aside(entries + [e for e in folder.iterdir() if is_debris(e)], folder, "--overwrite")
    steps = [p for p in (folder / CHECKPOINTS).glob("step_*") if checkpoint_step(p) is not None] \
        if (folder / CHECKPOINTS).is_dir() else []
    resume = (f"To continue the run that wrote them, pass --resume_from {max(steps, key=checkpoint_step)}; "
              if steps else "It holds no checkpoint to --resume_from. ")
    raise UserError(
        f"--output_dir {folder} already holds files ({_describe(entries)}): training there would overwrite "
        f"them. {resume}To start over there, pass --overwrite (the old contents are moved to "
        f"{folder.name}.old-<time>/ beside it, nothing is deleted); or choose another --output_dir."
    )


def checkpoint_step(path) -> int | None:
    """N of a ``step_N`` folder name, else None."""
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def set_aside_later_checkpoints(folder, step: int) -> Path | None:
    """On resume from ``step``: checkpoints after it belong to the abandoned continuation; move them aside so
    they are neither mixed with the new ones nor taken as the newest."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return None
    later = [p for p in root.iterdir() if p.is_dir() and (checkpoint_step(p) or 0) > step]
    return move_aside(sorted(later), folder, f"resuming from update {step}, the later checkpoints")
