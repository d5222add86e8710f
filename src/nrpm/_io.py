"""Atomic file writes: a crash or kill never leaves a half-written results file or checkpoint."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, IO, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool) -> None:
    """Call ``write(f)`` on a temp file in the target folder, fsync it, rename it over ``path`` and fsync the
    folder: a crash or a power loss leaves either the old file or the whole new one, never an empty or partial
    one (without the fsyncs the rename can reach the disk before the data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened for fsync on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is already on disk
    finally:
        os.close(fd)


LOCK_NAME = ".nrpm.lock"


class OutputFolderInUse(RuntimeError):
    """Another live run holds the output folder's lock."""


@contextmanager
def output_dir_lock(folder: str | os.PathLike, command: str, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder/.nrpm.lock`` while a run writes into ``folder``.

    Resumable runs rewrite their results file from the cells they hold in memory, so a second run writing into
    the same folder at the same time would silently drop the other's finished cells. The lock turns that into a
    clear error. A lock left by a process that no longer exists (killed, crashed) is taken over. ``enabled``
    False (e.g. a non-zero torchrun rank, which writes nothing) makes this a no-op.
    """
    if not enabled:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = _read_lock(lock)
            if owner is _RELEASED:
                continue  # released between our attempt and the read
            if owner is None or owner.get("host") != me["host"] or _process_alive(owner.get("pid")):
                who = "an unreadable lock" if owner is None else \
                    f"nrpm {owner.get('command')} (pid {owner.get('pid')} on {owner.get('host')})"
                raise OutputFolderInUse(f"{folder} is in use by {who}: wait for it to finish or write elsewhere "
                                        f"(--out); if no such run is active, delete {lock}")
            lock.unlink(missing_ok=True)  # its process is gone: a stale lock from a killed run
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


_RELEASED = object()  # _read_lock: the lock file vanished before it could be read


def _read_lock(lock: Path):
    """The owner dict, None when the file cannot be understood, or _RELEASED when it is gone."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _RELEASED
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and {"pid", "host"} <= owner.keys() else None


def _process_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
