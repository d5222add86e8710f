"""nrpm's files on disk: the one place that reads and writes them.

nrpm writes *tagged* files: a dict with a ``"format"`` tag (``nrpm-model/1``, ...), as torch files (``.pt``) or
JSON (``.json``). :func:`read_tagged` reads one and checks its tag; a file of another nrpm format is refused with
what it is and what to do with it instead. :func:`write_tagged` writes one atomically (temp file, fsync, rename).

A user's own files (a state_dict, a tensors file) are read by :func:`read_torch_file`, the one ``torch.load`` of
nrpm (weights only: a file must never run code when read). Every error is one line naming the file, what it should
be and the fix; a whole pickled model (``torch.save(model)``) is told apart from a broken file.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Iterable

import torch

from ._io import atomic_write

__all__ = ["read_tagged", "write_tagged", "read_torch_file", "format_of", "EVAL_FORMAT", "CHECKPOINT_FORMAT",
           "MODEL_FORMAT", "REPROGRAMMING_FORMAT", "RUN_FORMAT", "TEST_FORMAT", "DESCRIPTIONS"]

EVAL_FORMAT = "nrpm-eval/1"
CHECKPOINT_FORMAT = "nrpm-train-checkpoint/1"
MODEL_FORMAT = "nrpm-model/1"
REPROGRAMMING_FORMAT = "nrpm-reprogramming/1"
RUN_FORMAT = "nrpm-train-run/1"
TEST_FORMAT = "nrpm-train-test/1"

# what each tagged file is, and what it is for: the message that refuses it where another file was wanted
DESCRIPTIONS = {
    EVAL_FORMAT: "an nrpm eval results file",
    CHECKPOINT_FORMAT: "a training checkpoint (for nrpm train/reprogram --resume)",
    MODEL_FORMAT: "a trained model file (model.pt)",
    REPROGRAMMING_FORMAT: "a reprogramming state (reprogramming.pt)",
    RUN_FORMAT: "a training run summary (run.json)",
    TEST_FORMAT: "a training run's test results",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch decorates its weights-only error with terminal bold


def format_of(obj) -> str | None:
    """The format tag of a loaded file's contents (None: not a tagged nrpm file)."""
    tag = obj.get("format") if isinstance(obj, dict) else None
    return tag if isinstance(tag, str) else None


# ------------------------------------------------------------------------------------------------ reading
def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", fix: str = "") -> object:
    """The contents of torch file ``path`` (``torch.load``, weights only, on the CPU).

    FileNotFoundError for a missing file; ValueError, one line, for anything torch cannot read as plain
    tensors and containers: a whole pickled model (save ``model.state_dict()``), other pickled objects, or a
    truncated / corrupt / foreign file. ``what`` names the file's role, ``fix`` is appended to the message."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:  # an OS problem, not a broken file: it says so itself
        raise
    # torch.load reports bad bytes as RuntimeError, EOFError, UnpicklingError, even KeyError or OSError: any of
    # them here means the file is not readable as weights, and _why says which case it is
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{what} {path} {_why(path, error, fix)}") from None


def _why(path: Path, error: Exception, fix: str) -> str:
    """What is wrong with the file, and what to do: the fix comes before torch's reason, which can be long."""
    globals_ = _pickled_globals(path)
    if globals_ is not None and _is_pickled_module(globals_):
        return ("holds a whole pickled model (torch.save(model)), which nrpm does not unpickle (it could run "
                "code): save its weights instead, torch.save(model.state_dict(), PATH)")
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if unsupported:
        return (f"holds pickled Python objects ({unsupported.group(1)}) that a weights-only load refuses: save "
                f"only tensors, numbers, strings, lists and dicts" + (f"; {fix}" if fix else ""))
    return (f"is not readable by torch.load (truncated, corrupt or not written by torch.save"
            + (f"; {fix}" if fix else "") + f"): {_short_reason(error)}")


def _pickled_globals(path: Path) -> tuple[set[str], set[str]] | None:
    """(global names, strings) of the pickle inside a torch zip file, read without unpickling; None if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None
    if data is None:
        return None
    names, strings = set(), set()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.add(str(arg).replace(" ", "."))
            elif isinstance(arg, str):
                strings.add(arg)
    except Exception:  # noqa: BLE001  (a damaged pickle: the generic message says so)
        return None
    return names, strings


def _is_pickled_module(found: tuple[set[str], set[str]]) -> bool:
    """Every nn.Module pickles its ``_modules`` and ``_parameters`` dicts (STACK_GLOBAL names are strings too)."""
    names, strings = found
    return {"_modules", "_parameters"} <= strings or any(n.startswith("torch.nn.modules.") for n in names | strings)


def _short_reason(error: BaseException) -> str:
    """One line out of torch.load's multi-line errors: the line that names the actual problem."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    reason = lines[0] if lines else "unexpected end of file"
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line), None)
    if marker is not None:  # the cause follows torch's boilerplate, on the marker's line or the next
        detail = lines[marker].split("WeightsUnpickler error:", 1)[1].strip()
        detail = detail or (lines[marker + 1] if marker + 1 < len(lines) else reason)
        reason = f"weights-only unpickling refused it: {detail}"
    return f"{type(error).__name__}: {reason}"


def read_tagged(path: str | os.PathLike, formats: str | Iterable[str], what: str, fix: str = "") -> dict:
    """The dict in nrpm file ``path`` (JSON for ``.json``, else a torch file) whose tag is one of ``formats``.

    FileNotFoundError for a missing file; ValueError, one line naming the file, ``what`` it should be and the
    ``fix``, for an unreadable file or another tag (a known nrpm tag is named: 'it is a training checkpoint')."""
    path = Path(path).expanduser()
    wanted = [formats] if isinstance(formats, str) else list(formats)
    obj = _read_json(path, what, fix) if path.suffix == ".json" else read_torch_file(path, what, fix)
    tag = format_of(obj)
    if tag not in wanted:
        found = f"it is {DESCRIPTIONS[tag]}" if tag in DESCRIPTIONS else \
            (f"its format is {tag!r}" if tag else "it has no nrpm format tag")
        raise ValueError(f"{path} is not {what} (format {' or '.join(map(repr, wanted))}; {found})"
                         + (f": {fix}" if fix else ""))
    return obj


def _read_json(path: Path, what: str, fix: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({error})" + (f": {fix}" if fix else "")) from None


# ------------------------------------------------------------------------------------------------ writing
def write_tagged(path: str | os.PathLike, obj: dict) -> None:
    """Write tagged ``obj`` to ``path`` atomically: JSON for ``.json``, else ``torch.save``. A crash leaves the
    old file or the whole new one, never a torn one (a resume reads it back)."""
    if format_of(obj) is None:
        raise ValueError(f"refusing to write {path}: nrpm's files carry a 'format' tag, and this dict has none")
    if Path(path).suffix == ".json":
        text = json.dumps(obj, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text), binary=False)
    else:
        atomic_write(path, lambda f: torch.save(obj, f), binary=True)
