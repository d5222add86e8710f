"""One skeleton for nrpm's resumable runs: ``eval``, ``audit``, ``certify`` and ``train``.

Every such run writes into one output folder, and they all follow the same rules:

* **one writer**: the folder is locked (``.nrpm.lock``) while a run writes into it, and under torchrun only the
  main rank writes (the others compute and hand their results to it);
* **one command per folder**: the folder is claimed for its command in ``nrpm-run.json``; an audit never
  resumes from, or overwrites, an eval folder (or a folder of a training run, of certify, ...);
* **one identity**: a results file carries a format tag and the run's *identity*, everything that determines its
  numbers (settings, and the *contents* of the files it read, as hashes: a retrained checkpoint at the same path
  is another run). A file of another identity is refused with one message that names each differing setting;
* **cells as they finish**: every write is atomic (temp file, fsync, rename), so a kill loses at most the cells in
  flight, and the outputs are regenerated from every cell on file.

A command builds a :class:`RunContext` (folder, command, overwrite, progress, log, rank), then opens its results
file with :func:`resumable` (a :class:`ResultsFile`) or, for a run with its own checkpoint format (training),
holds the folder with :func:`run_folder` and compares identities with :func:`differences`.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ._io import atomic_write, output_dir_lock
from .formats import read_tagged, write_tagged

__all__ = ["RunContext", "RunRefused", "ResultsFile", "resumable", "run_folder", "claim_folder", "claimable",
           "folder_owner", "differences",
           "file_digest", "MARKER", "START_AGAIN"]

MARKER = "nrpm-run.json"
MARKER_FORMAT = "nrpm-run/1"
START_AGAIN = "use another output folder (--out), or start again there (--overwrite)"

# Files that other nrpm commands leave in their folders, for folders written before the marker existed:
# {file name: {format tag prefix: command}} (a results.json is told apart by its format tag).
_KNOWN_FILES = {
    "results.json": {"nrpm-eval/": "eval", "nrpm-certify/": "certify"},
    "audit.json": {"": "audit"},
    "cache.json": {"nrpm-audit-cache/": "audit"},
    "run.json": {"nrpm-train-run/": "train"},
}
# train and reprogram write the same files; they may continue each other's folder only through the checkpoint's
# own identity check
_SAME_FAMILY = {"reprogram": "train"}


class RunRefused(ValueError):
    """An output folder that this run must not write into or resume from (one line: what, why, the fix)."""


@dataclass(frozen=True)
class RunContext:
    """Where and how a run writes: the output folder (None: nothing is written), the command that owns it,
    whether earlier results there are ignored (``overwrite``), progress bars, the log, and this process's rank."""

    out: Path | None = None
    command: str = "run"
    overwrite: bool = False
    progress: bool = True
    log: Callable[[str], None] = field(default=print, compare=False)
    rank: int = 0
    world_size: int = 1

    @classmethod
    def create(cls, out, command: str, *, overwrite: bool = False, progress: bool = True,
               log: Callable[[str], None] = print) -> "RunContext":
        """A context for this process: its rank and world size from torchrun's process group (if joined)."""
        from . import distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        return cls(Path(out) if out is not None else None, command, overwrite, progress and rank == 0,
                   log if rank == 0 else _quiet, rank, world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writes(self) -> bool:
        """True on the one process that writes the run's files."""
        return self.out is not None and self.is_main

    def with_out(self, out) -> "RunContext":
        return replace(self, out=Path(out) if out is not None else None)

    def joined(self) -> "RunContext":
        """This context with the rank and world size of the process group joined since it was made (a run joins
        torchrun's group itself, after its caller built the context): non-main ranks go quiet."""
        from . import distributed as dist

        rank = dist.get_rank()
        if rank == self.rank and dist.get_world_size() == self.world_size:
            return self
        return replace(self, rank=rank, world_size=dist.get_world_size(), progress=self.progress and rank == 0,
                       log=self.log if rank == 0 else _quiet)


def _quiet(*_) -> None:
    """The log of a non-main rank: its lines would repeat the main rank's."""


# ------------------------------------------------------------------------------------------------ the folder
@contextmanager
def run_folder(ctx: RunContext) -> Iterator[RunContext]:
    """Hold ``ctx.out`` for this run: its lock, and its claim for ``ctx.command`` (no-op where nothing is written).

    A folder another command claimed (or, written before claims existed, holds another command's files) is refused.
    """
    with output_dir_lock(ctx.out, ctx.command, enabled=ctx.writes):
        if ctx.writes:
            claim_folder(ctx.out, ctx.command)
        yield ctx


def claimable(folder: Path, command: str) -> str | None:
    """The command that owns ``folder`` (None: nobody yet); RunRefused if it is not ``command``'s to write into."""
    owner = folder_owner(folder) if Path(folder).is_dir() else None
    if owner is not None and _family(owner) != _family(command):
        raise RunRefused(f"{folder} holds the results of nrpm {owner}, not of nrpm {command}: write these results "
                         f"into another folder (--out)")
    return owner


def claim_folder(folder: Path, command: str) -> None:
    """Mark ``folder`` as ``command``'s (nrpm-run.json); RunRefused if another command's run is there."""
    owner = claimable(folder, command)
    if owner is None or not (folder / MARKER).exists():
        text = json.dumps({"format": MARKER_FORMAT, "command": command}) + "\n"
        atomic_write(folder / MARKER, lambda f: f.write(text), binary=False)


def folder_owner(folder: Path) -> str | None:
    """The command whose results ``folder`` holds: from its marker, else from the files it holds; None if none."""
    marker = folder / MARKER
    if marker.exists():
        try:
            owner = json.loads(marker.read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError, AttributeError):
            owner = None
        if not isinstance(owner, str):
            raise RunRefused(f"{marker} is damaged: delete it if {folder} is yours, or use another folder (--out)")
        return owner
    for name, tags in _KNOWN_FILES.items():
        tag = _format_tag(folder / name)
        for prefix, command in tags.items():
            if tag is not None and tag.startswith(prefix):
                return command
    return None


def _family(command: str) -> str:
    return _SAME_FAMILY.get(command, command)


def _format_tag(path: Path) -> str | None:
    """The format tag of a JSON file of nrpm's ("" for a JSON file without one), None without a readable file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    tag = data.get("format", "") if isinstance(data, dict) else ""
    return tag if isinstance(tag, str) else ""


# ------------------------------------------------------------------------------------------------ identities
def differences(saved: dict, now: dict) -> list[str]:
    """'name: X on file, Y now' for each setting that differs between two identities."""
    saved, now = saved or {}, now or {}
    return [f"{k}: {saved.get(k)!r} on file, {now.get(k)!r} now" for k in sorted(set(saved) | set(now), key=str)
            if saved.get(k) != now.get(k)]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's contents ('sha256:<hex>'), so a resume is keyed on what a file holds, not its path.

    Cached per (path, size, mtime): an evaluation reads its checkpoint once, but asks for the key several times.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = "sha256:" + digest.hexdigest()
    return _DIGESTS[key]


# ------------------------------------------------------------------------------------------------ results file
class ResultsFile:
    """The results file of a resumable run: ``{"format": fmt, <identity_field>: identity, ...}``.

    ``previous()`` is what an earlier run with the same identity left (None: nothing to resume, or ``overwrite``);
    ``write(payload)`` writes the file atomically, on the main rank only, with the format tag and identity added.
    ``identity_field`` keeps the field name each command has always used, so files of earlier versions still load.
    """

    def __init__(self, ctx: RunContext, name: str, *, fmt: str, identity: dict, what: str,
                 identity_field: str = "identity", settings_hint: str = ""):
        self.ctx, self.fmt, self.identity, self.what = ctx, fmt, identity, what
        self.identity_field, self.settings_hint = identity_field, settings_hint
        self.path = ctx.out / name if ctx.out is not None else None

    def previous(self) -> dict | None:
        """The earlier run's payload (format and identity checked), or None when there is none to resume."""
        if self.path is None or self.ctx.overwrite or not self.path.exists():
            return None
        try:
            data = read_tagged(self.path, self.fmt, self.what, START_AGAIN)
        except ValueError as error:  # unreadable, or another file: one line, as every refusal of a folder
            raise RunRefused(str(error)) from None
        diff = differences(data.get(self.identity_field), self.identity)
        if diff:
            hint = f"resuming needs the same {self.settings_hint}; " if self.settings_hint else ""
            raise RunRefused(f"{self.path} holds results of other settings ({'; '.join(diff)}): {hint}"
                             f"{START_AGAIN}")
        return data

    def write(self, payload: dict[str, Any]) -> None:
        """Write ``payload`` (format tag and identity added) atomically; nothing on a non-main rank."""
        if self.path is None or not self.ctx.is_main:
            return
        write_tagged(self.path, {"format": self.fmt, self.identity_field: self.identity, **payload})


@contextmanager
def resumable(ctx: RunContext, name: str, *, fmt: str, identity: dict, what: str, identity_field: str = "identity",
              settings_hint: str = "") -> Iterator[ResultsFile]:
    """Hold the run's folder and open its results file ``name``: the skeleton of eval, audit and certify."""
    with run_folder(ctx):
        yield ResultsFile(ctx, name, fmt=fmt, identity=identity, what=what, identity_field=identity_field,
                          settings_hint=settings_hint)
