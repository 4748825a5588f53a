"""Fetch one file from a list of mirrors, verify its sha256, and write it atomically.

Atomic (temp file in the destination folder + os.replace) so an interrupted download never leaves a half file that
a later run would take for the real one; checksum-pinned so a mirror can't hand us different bytes.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from models.data.base import DataError, describe

Opener = Callable[[str], BinaryIO]  # url -> readable binary stream (closed by us)

CHUNK = 1 << 20
TIMEOUT_S = 60.0


def _urlopen(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - http(s) and file:// mirrors are intended


def _fetch_one(url: str, dest: Path, sha256: str, opener: Opener) -> None:
    """Download `url` into a temp file beside `dest`, check the hash, then move it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, opener(url) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(urls: list[str], dest: Path, sha256: str, opener: Opener | None = None) -> Path:
    """Try each URL in turn until one yields the bytes with `sha256`; DataError naming `dest` if none does."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch_one(url, dest, sha256, opener or _urlopen)
            return dest
        except DataError as exc:
            failures.append(f"{url}: {exc}")
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeouts, ... all mean "try the next mirror"
            failures.append(f"{url}: {describe(exc)}")
    raise DataError(f"{dest}: download failed from every mirror: " + "; ".join(failures))
