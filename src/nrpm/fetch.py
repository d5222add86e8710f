"""Downloading one file: checked against its hash, atomic, with one-line errors. What to fetch is known elsewhere:
the datasets by :mod:`nrpm.data.download`, the paper's checkpoints by :mod:`nrpm.models.hub`.

Only the standard library is used (urllib, hashlib): fetching a handful of files needs nothing more, and a
``requests`` dependency would be one more package to install on offline clusters for no gain.

Failures raise one-line errors naming the URL and a fix: ``FileNotFoundError`` when a file cannot be fetched (no
network, HTTP 404, ...), ``ValueError`` when what arrived is wrong (bad hash, truncated). The CLI turns both into
exit status 2.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ._io import fsync_folder

__all__ = ["fetch", "base_url", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0  # seconds without data before giving up (per socket operation)
_CHUNK = 1 << 20
_USER_AGENT = "nrpm-downloader"
# Errors meaning "the file could not be fetched" (as opposed to "it arrived broken").
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError)


def base_url(env_var: str, default: str | None) -> str | None:
    """A base URL (a folder to which file names are appended), ending in '/': ``$env_var`` (a mirror, or a test
    server), else ``default`` (None: none, the caller has per-file URLs)."""
    url = os.environ.get(env_var) or default
    if url is None:
        return None
    return url if url.endswith("/") else url + "/"


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
          md5: str | None = None, timeout: float = DEFAULT_TIMEOUT,
          hint: str | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to a temporary file in ``dest``'s folder, are hashed on the way, checked
    against ``sha256`` / ``md5`` when given, fsynced, and only then renamed onto ``dest``
    (atomic), so ``dest`` is either absent or complete and never a partial file. ``hint`` is
    appended to error messages (what the user can do instead).

    Raises FileNotFoundError if the file cannot be fetched (network error, HTTP error such as
    404) and ValueError if it arrives truncated or with the wrong hash; no file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fix = hint or f"check the URL, or fetch the file by hand into {dest.parent}"
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _download_into(url, out, timeout, fix)
            out.flush()
            os.fsync(out.fileno())  # data on disk before the rename makes it visible
        _verify(url, {"sha256": sha256, "md5": md5}, digests, fix)
        os.replace(tmp_name, dest)
        fsync_folder(dest.parent)
    except BaseException:  # includes Ctrl-C: never leave the .part file behind
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _download_into(url: str, out, timeout: float, fix: str) -> dict[str, str]:
    """Stream ``url`` into the open file ``out``; return its hex digests."""
    hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    received = 0
    print(f"nrpm: downloading {url}", file=sys.stderr, flush=True)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected_len = _content_length(response)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
    except urllib.error.HTTPError as err:  # before URLError: it is a subclass
        raise FileNotFoundError(f"could not download {url}: HTTP {err.code} {err.reason}; {fix}") from None
    except http.client.IncompleteRead as err:  # the connection dropped mid-file
        raise _truncated(url, received + len(err.partial), expected_len, fix) from None
    except _NETWORK_ERRORS as err:
        reason = getattr(err, "reason", None) or err
        raise FileNotFoundError(f"could not download {url}: {reason}; {fix}") from None
    if expected_len is not None and received != expected_len:
        raise _truncated(url, received, expected_len, fix)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _truncated(url: str, received: int, expected_len: int | None, fix: str) -> ValueError:
    return ValueError(f"download of {url} is truncated: got {received} of {expected_len} bytes; "
                      f"retry, or {fix}")


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    return int(value) if value and value.isdigit() else None


def _verify(url: str, expected: dict[str, str | None], got: dict[str, str], fix: str) -> None:
    for algorithm, want in expected.items():
        if want is not None and want.lower() != got[algorithm]:
            raise ValueError(f"download of {url} failed its {algorithm} check: expected {want.lower()}, "
                             f"got {got[algorithm]} (file not kept); retry, or {fix}")
