"""Split the rows of a long job (prompts to render, videos to score) across processes and machines, and merge.

Row ``i`` of a job with ``N`` shards belongs to shard ``i % N``: every shard renders or scores its rows exactly
as one process would (same seed, same output names), so the union of the shards is the one-process output.
Shards come from ``--shard K/N`` (cluster array jobs, no launcher) and from ``accelerate launch`` / ``torchrun``
(``RANK`` / ``WORLD_SIZE``); with both, the launched processes split shard ``K`` further.

Shards never talk to each other while they run: no process group, no lock, no barrier (a render of a thousand
prompts takes hours, far past a process group's timeout, and array jobs on a cluster share nothing but a file
system). Each shard writes its own file ``<kind>.shard-K-of-N.json`` next to its outputs (one writer per file,
so two shards in one folder never overwrite each other's notes): the rows it holds, those it has finished
with their records, and whether it has finished all of them. The shard that finishes last sees every file
complete and merges; :func:`merge_rows` (``evaluation/merge.py``) merges by hand and refuses a row that is
missing or present twice, naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import UserError
from .io_utils import atomic_write_json

logger = logging.getLogger(__name__)

SHARD_HELP = (
    "K/N: handle only the {what} whose index i has i %% N == K (0 <= K < N), for cluster array jobs without a launcher (e.g. "
    "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-7). The shards together give exactly what one "
    "process does. Under accelerate launch / torchrun every process takes its share by itself; with --shard too, the "
    "processes split shard K further. Each shard notes its rows in <kind>.shard-K-of-N.json; the last to finish merges "
    "them (evaluation/merge.py merges by hand)"
)
_FILE_PATTERN = re.compile(r"^(?P<kind>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.json$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: rows ``index, index + count, index + 2 * count, ...``."""

    index: int = 0
    count: int = 1

    @property
    def enabled(self) -> bool:
        return self.count > 1

    def holds(self, row: int) -> bool:
        return row % self.count == self.index

    def select(self, items: Iterable) -> list:
        return list(items)[self.index :: self.count]

    def file_name(self, kind: str) -> str:
        return f"{kind}.shard-{self.index}-of-{self.count}.json"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    """``"K/N"`` -> ``Shard(K, N)``; anything else is a :class:`UserError` that says what is expected."""
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
    if not match:
        raise UserError(f"{flag} {text!r} is not K/N: pass the shard index and the shard count, e.g. {flag} 0/4.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise UserError(f"{flag} {text}: the shard count N must be at least 1.")
    if not 0 <= index < count:
        raise UserError(
            f"{flag} {text}: the shard index K must be in 0..{count - 1} (shards are numbered from 0; with a SLURM array "
            f"use --array=0-{count - 1})."
        )
    return Shard(index, count)


def launcher_process() -> Shard:
    """This process among those ``accelerate launch`` / ``torchrun`` started (``RANK`` of ``WORLD_SIZE``)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} / RANK={os.environ.get('RANK')!r} are not numbers; they are set "
            "by accelerate launch or torchrun. Unset them to run one process."
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} of WORLD_SIZE={world} is not a process of the launch; unset them to run one process.")
    return Shard(rank, world)


def current_shard(flag: str | None = None) -> Shard:
    """This process's shard: ``--shard K/N`` (``flag``), split further among the launched processes.

    Process ``r`` of ``W`` inside shard ``K`` of ``N`` takes every ``W``-th row of that shard, i.e. the rows ``i``
    with ``i % (N * W) == K + N * r``: shard ``K + N * r`` of ``N * W``.
    """
    given = parse_shard(flag) if flag is not None else Shard()
    launched = launcher_process()
    return Shard(given.index + given.count * launched.index, given.count * launched.count)


def process_device(name: str | None) -> str | None:
    """The device of this process: under a launcher, ``cuda`` (or no ``--device``) means the GPU of its local rank.

    ``LOCAL_RANK`` modulo the GPU count, so several processes may share one GPU; an explicit index is kept.
    """
    local = os.environ.get("LOCAL_RANK")
    if local is None or name not in (None, "cuda"):
        return name
    import torch

    if not torch.cuda.is_available():
        return name
    return f"cuda:{int(local) % torch.cuda.device_count()}"


def add_shard_argument(parser, what: str = "rows") -> None:
    """``--shard K/N``; ``what`` names the rows in the help (e.g. "prompt-file rows")."""
    parser.add_argument("--shard", default=None, metavar="K/N", help=SHARD_HELP.format(what=what))


def fingerprint(plan) -> str:
    """A short hash of everything that decides a job's rows (their names, seeds, settings): shards of one job share it."""
    text = json.dumps(plan, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- one shard's file


class ShardLog:
    """The file of one shard: its rows (``labels[i]`` names row ``i``), those finished, and their records.

    Starting a shard rewrites its file (what the file says is what this run of the shard has done); every
    :meth:`add` rewrites it atomically, so a shard that dies leaves the rows it finished.
    """

    def __init__(self, folder, kind: str, shard: Shard, labels: list, plan: str, meta: dict | None = None):
        self.path = Path(folder) / shard.file_name(kind)
        self.kind, self.shard, self.plan = kind, shard, plan
        self.data = {
            "kind": kind,
            "shard": [shard.index, shard.count],
            "num_rows": len(labels),
            "plan": plan,
            "complete": False,
            "meta": meta or {},
            "rows": {str(i): str(labels[i]) for i in range(shard.index, len(labels), shard.count)},
            "done": {},
        }
        self._write()

    @property
    def rows(self) -> list:
        return [int(i) for i in self.data["rows"]]

    def add(self, index: int, record: dict | None = None, write: bool = True) -> None:
        if str(index) not in self.data["rows"]:
            raise ValueError(f"row {index} is not in shard {self.shard}")
        self.data["done"][str(index)] = record or {}
        if write:
            self._write()

    def set_meta(self, meta: dict) -> None:
        self.data["meta"] = meta
        self._write()

    def finish(self) -> bool:
        """Mark the shard complete; ``True`` when every shard of the job now is (this one may merge)."""
        missing = [i for i in self.data["rows"] if i not in self.data["done"]]
        if missing:
            raise RuntimeError(f"shard {self.shard} finished with rows {missing[:5]} not done")
        self.data["complete"] = True
        self._write()
        done = len(self.data["done"])
        logger.info("shard %s: %d row%s done, noted in %s", self.shard, done, "" if done == 1 else "s", self.path.name)
        return all_complete(self.path.parent, self.kind, self.shard.count, self.plan)

    def _write(self) -> None:
        atomic_write_json(self.path, self.data)


def read_shard_file(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not {"num_rows", "plan", "rows", "done"} <= set(data):
            raise ValueError("not a shard file")
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot read the shard file {path} ({err}). Delete it and rerun that shard.") from None
    return data


def shard_files(folder, kind: str) -> list:
    """The shard files of ``kind`` in ``folder``, sorted by shard count then index."""
    folder = Path(folder)
    found = []
    for path in folder.glob(f"{kind}.shard-*-of-*.json") if folder.is_dir() else []:
        match = _FILE_PATTERN.match(path.name)
        if match and match.group("kind") == kind:
            found.append((int(match.group("count")), int(match.group("index")), path))
    return [path for _, _, path in sorted(found)]


def kinds_in(folder) -> list:
    """Every kind with shard files in ``folder`` (e.g. ``["nudity", "prompts"]``)."""
    folder = Path(folder)
    names = {m.group("kind") for p in folder.iterdir() if (m := _FILE_PATTERN.match(p.name))} if folder.is_dir() else set()
    return sorted(names)


def all_complete(folder, kind: str, count: int, plan: str) -> bool:
    """Whether shards ``0..count-1`` of one job (same ``plan``) have all finished. Reads the files by name, not by
    listing the folder (a network file system may list a new file late)."""
    for index in range(count):
        path = Path(folder) / Shard(index, count).file_name(kind)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not data.get("complete") or data.get("plan") != plan:
            return False
    return True


# ---------------------------------------------------------------------------------------------- merging


def merge_rows(folder, kind: str) -> tuple:
    """``(records in row order, meta)`` from every ``kind`` shard file in ``folder``.

    Refuses (a :class:`UserError` naming the row and the files) when the files belong to different jobs, when
    a row is missing (no shard finished it) or when a row was finished by two shards.
    """
    folder = Path(folder)
    paths = shard_files(folder, kind)
    if not paths:
        raise UserError(
            f"No {kind}.shard-K-of-N.json files in {folder}: nothing to merge. Runs with --shard or under accelerate "
            "launch write them next to their outputs; pass that folder."
        )
    files = {path.name: read_shard_file(path) for path in paths}
    plans = {}
    for name, data in files.items():
        plans.setdefault((data["plan"], data["num_rows"]), []).append(name)
    if len(plans) > 1:
        groups = "; ".join(f"{', '.join(names)} ({num_rows} rows)" for (_, num_rows), names in plans.items())
        raise UserError(
            f"The {kind} shard files in {folder} come from different jobs (another prompt file, seed, settings or set of "
            f"videos): {groups}. Delete the stale files and rerun their shards."
        )
    num_rows = next(iter(files.values()))["num_rows"]

    labels, owners = {}, {}
    for name, data in files.items():
        labels.update({int(i): label for i, label in data["rows"].items()})
        for i in data["done"]:
            owners.setdefault(int(i), []).append(name)
    duplicated = sorted(i for i, names in owners.items() if len(names) > 1)
    if duplicated:
        i = duplicated[0]
        more = f" (and {len(duplicated) - 1} more rows)" if len(duplicated) > 1 else ""
        raise UserError(
            f"Row {_row_name(i, labels)} is present twice: in {' and '.join(owners[i])}{more}. Shard files of two "
            f"different splits share {folder}; delete the stale ones and merge again."
        )
    missing = [i for i in range(num_rows) if i not in owners]
    if missing:
        raise UserError(_missing_message(kind, folder, missing, labels, files))
    records = []
    for i in range(num_rows):
        data = files[owners[i][0]]
        records.append(data["done"][str(i)])
    meta = next(iter(files.values())).get("meta", {})
    return records, meta


def _row_name(index: int, labels: dict) -> str:
    return f"{index} ({labels[index]})" if index in labels else str(index)


def _missing_message(kind, folder, missing, labels, files) -> str:
    shown = ", ".join(_row_name(i, labels) for i in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    counts = {data["shard"][1] for data in files.values()}
    hint = "Rerun the shards that hold them (finished rows are skipped)."
    if len(counts) == 1:
        count = counts.pop()
        shards = sorted({i % count for i in missing})
        names = ", ".join(f"--shard {k}/{count}" + ("" if Shard(k, count).file_name(kind) in files else " (it never ran)")
                          for k in shards)
        hint = f"Rerun {names} (finished rows are skipped), then merge again."
    rows = f"rows {shown}{more} are" if len(missing) > 1 else f"row {shown} is"
    return f"Cannot merge the {kind} shards in {folder}: {rows} missing. {hint}"


__all__ = [
    "Shard",
    "ShardLog",
    "add_shard_argument",
    "all_complete",
    "current_shard",
    "fingerprint",
    "kinds_in",
    "launcher_process",
    "merge_rows",
    "parse_shard",
    "process_device",
    "read_shard_file",
    "shard_files",
]
