"""The decode cache: a file dataset's samples decoded and resized once, as uint8 rows in np.memmap-able shards.

    <cache folder>/<dataset>-<ident>-<key>/
        index.json          format, key, shapes, shard list, sha256 of crc.u32 (and hist.i64), files skipped as bad
        shard-00000.bin     128-byte header (magic, format, key, first row, rows, row bytes), then the rows
        crc.u32             zlib.crc32 of every row, (N,) uint32
        hist.i64            segmentation: pixels of each class in every mask, (N, K) int64

A row is one sample: its image bytes (C, H, W), then its mask bytes (H, W) for segmentation; a shard is its header
and then rows, so np.memmap(shard, uint8, offset=128, shape=(rows, row bytes)) maps it. The trainer reads rows
with os.preadv straight into the batch instead of mapping them: mapped pages would count as the process's
memory, growing with every sample read, where the kernel's page cache holds them just as well. `key` is the sha256
of the decoding parameters and of every file's path, size and mtime (models.data.files.ItemTable.key), so a
changed, added or removed file gives another folder; the folders of the same dataset with an older key are
removed once the new one is complete. `ident` hashes the dataset's root and decoding parameters.

Never trusted blindly: opening checks index.json, the key, the sha256 of crc.u32/hist.i64 and every shard's size
and header (a truncated shard, a bad header or a foreign key means: rebuild, with a note saying why); reading
checks each row's crc32 (~25 µs for a 128x128 RGB row, a tenth of decoding it) and re-decodes a row that fails
from its files, rewriting it. The cache is built under a temporary name and renamed when complete, under an
exclusive lock (fcntl.flock), so concurrent processes (the ranks of a torchrun job) build it once.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import struct
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from models.data.base import DataError
from models.data.order import batch_bounds
from models.data.workers import LOAD_CHUNK, WORKERS_FROM, Fetched, Pipeline, alloc, note
from models.data.progress import progress

FORMAT = 1
MAGIC = b"SPSCACHE"
HEADER = struct.Struct("<8sII32sQQQ")  # magic, format, header bytes, key digest, first row, rows, row bytes
HEADER_BYTES = 128
SHARD_BYTES = 1 << 30  # rows per shard: as many as fit in 1 GiB


class CacheInvalid(Exception):
    """Why an existing cache folder can't be used (it is rebuilt)."""


def row_bytes(x_shape: tuple, y_shape: tuple | None) -> int:
    return math.prod(x_shape) + (math.prod(y_shape) if y_shape else 0)


def cache_bytes(n: int, x_shape: tuple, y_shape: tuple | None) -> int:
    """Disk bytes of a cache of n samples (rows, checksums, headers)."""
    return n * (row_bytes(x_shape, y_shape) + 4) + HEADER_BYTES * (1 + n * row_bytes(x_shape, y_shape) // SHARD_BYTES)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DecodeCache:
    """An opened (validated) cache: rows by sample index, checksums, skipped files, mask class counts."""

    def __init__(self, path: Path, index: dict, crc: np.ndarray, hist: np.ndarray | None):
        self.path, self.index, self.crc, self.hist = path, index, crc, hist
        self.key = index["key"]
        self.count = index["count"]
        self.x_shape = tuple(index["x_shape"])
        self.y_shape = tuple(index["y_shape"]) if index["y_shape"] else None
        self.row = index["row_bytes"]
        self.x_bytes = math.prod(self.x_shape)
        self.bad: dict[int, str] = {int(k): v for k, v in index["bad"].items()}
        self.starts = np.asarray([s["start"] for s in index["shards"]], dtype=np.int64)
        self._fds: list[int] | None = None
        self._pid = None

    def __getstate__(self):  # file descriptors are per process: a spawned worker opens its own
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = None, None
        return state

    def fds(self) -> list[int]:
        """Read-only descriptors of the shards, opened once per process (a forked worker opens its own)."""
        if self._fds is None or self._pid != os.getpid():
            self._fds = [os.open(self.path / s["file"], os.O_RDONLY) for s in self.index["shards"]]
            self._pid = os.getpid()
        return self._fds

    def __del__(self):
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def locate(self, i: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        return shard, i - int(self.starts[shard])

    def rewrite(self, i: int, row: bytes) -> None:
        """Put a re-decoded row back (after its checksum failed)."""
        shard, local = self.locate(i)
        fd = os.open(self.path / self.index["shards"][shard]["file"], os.O_WRONLY)
        try:
            os.pwrite(fd, row, HEADER_BYTES + local * self.row)
        finally:
            os.close(fd)


def _header(key: str, start: int, count: int, row: int) -> bytes:
    return HEADER.pack(MAGIC, FORMAT, HEADER_BYTES, bytes.fromhex(key), start, count, row).ljust(HEADER_BYTES, b"\0")


def open_cache(path: Path, key: str, count: int, x_shape: tuple, y_shape: tuple | None,
               hist_classes: int | None) -> DecodeCache:
    """Open the cache at `path`, checking it against what it should hold; CacheInvalid says what is wrong."""
    index_file = path / "index.json"
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError:
        raise CacheInvalid("no index.json (never completed)") from None
    except (OSError, ValueError) as err:
        raise CacheInvalid(f"index.json unreadable ({err})") from None
    expected = {"format": FORMAT, "key": key, "count": count, "x_shape": list(x_shape),
                "y_shape": list(y_shape) if y_shape else None, "row_bytes": row_bytes(x_shape, y_shape)}
    for name, value in expected.items():
        if index.get(name) != value:
            raise CacheInvalid(f"index.json has {name} {index.get(name)!r}, expected {value!r}")
    row = expected["row_bytes"]
    crc_file = path / "crc.u32"
    if not crc_file.is_file() or crc_file.stat().st_size != 4 * count or _sha256_file(crc_file) != index.get("crc_sha256"):
        raise CacheInvalid("crc.u32 is missing, truncated or differs from its sha256 in index.json")
    crc = np.fromfile(crc_file, dtype="<u4")
    hist = None
    if hist_classes is not None:
        hist_file = path / "hist.i64"
        if (not hist_file.is_file() or hist_file.stat().st_size != 8 * count * hist_classes
                or _sha256_file(hist_file) != index.get("hist_sha256")):
            raise CacheInvalid("hist.i64 is missing, truncated or differs from its sha256 in index.json")
        hist = np.fromfile(hist_file, dtype="<i8").reshape(count, hist_classes)
    covered = 0
    for s in index.get("shards", []):
        file = path / s["file"]
        size = file.stat().st_size if file.is_file() else -1
        if size != HEADER_BYTES + s["count"] * row:
            raise CacheInvalid(f"{s['file']} is {size} bytes, expected {HEADER_BYTES + s['count'] * row} (truncated?)")
        with open(file, "rb") as f:
            head = f.read(HEADER.size)
        if head != _header(key, s["start"], s["count"], row)[: HEADER.size] or s["start"] != covered:
            raise CacheInvalid(f"{s['file']}: bad header (not this cache's rows)")
        covered += s["count"]
    if covered != count:
        raise CacheInvalid(f"the shards hold {covered} rows, expected {count}")
    return DecodeCache(path, index, crc, hist)


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine (and NFS clients that honour flock)."""
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            note(f"waiting for another process building the decode cache ({lock_file})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _tmp_suffix() -> str:
    """Names a build in progress: host and process (a cache folder on a shared file system sees several hosts)."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}"


def _remove_stale(folder: Path, prefix: str, keep: Path) -> None:
    """Other caches of the same dataset (older keys), and temporary folders of builds whose process died (on this
    host; another host's after a day)."""
    for other in folder.glob(prefix + "*"):
        if other == keep or not other.is_dir():
            continue
        if ".tmp-" in other.name:
            host, _, pid = other.name.rsplit(".tmp-", 1)[1].rpartition("-")
            if host == socket.gethostname() and pid.isdigit() and _pid_alive(int(pid)):
                continue
            if host != socket.gethostname() and time.time() - other.stat().st_mtime < 86_400:
                continue
        shutil.rmtree(other, ignore_errors=True)


def build_cache(path: Path, key: str, source, workers: int, prefetch: int, skip: bool,
                name: str) -> None:
    """Decode every item of `source` into a new cache at `path` (built beside it, renamed when complete)."""
    n = len(source.table)
    x_shape, y_shape = source.x_shape, source.y_shape
    row = row_bytes(x_shape, y_shape)
    xb = math.prod(x_shape)
    hist_classes = source.decoder.mask_classes if y_shape else None
    tmp = path.with_name(path.name + _tmp_suffix())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        per_shard = max(1, SHARD_BYTES // row)
        shards, fds = [], []
        for number, start in enumerate(range(0, n, per_shard)):
            count = min(per_shard, n - start)
            file = tmp / f"shard-{number:05d}.bin"
            with open(file, "wb") as f:
                f.write(_header(key, start, count, row))
                f.truncate(HEADER_BYTES + count * row)
            shards.append({"file": file.name, "start": start, "count": count})
            fds.append(os.open(file, os.O_WRONLY))
        crc = np.zeros(n, dtype="<u4")
        hist = np.zeros((n, hist_classes), dtype="<i8") if hist_classes else None
        bad: dict[int, str] = {}
        pipeline = Pipeline(source, workers if n >= WORKERS_FROM else 0, prefetch)
        requests = [(np.arange(s, min(s + LOAD_CHUNK, n), dtype=np.int64), "build") for s in batch_bounds(n, LOAD_CHUNK)]
        began = time.perf_counter()
        try:
            with progress(f"decoding {name} into the cache", total=n) as advance:
                for fetched in pipeline.run(requests):
                    if fetched.bad and not skip:
                        raise DataError(fetched.bad[0][1])
                    for k, message in fetched.bad:
                        bad[int(fetched.index[k])] = message
                    b = len(fetched.index)
                    rows = fetched.x.numpy().reshape(b, xb)
                    if y_shape:  # a row is the image's bytes, then the mask's
                        rows = np.concatenate([rows, fetched.masks.numpy().reshape(b, -1)], axis=1)
                    first = int(fetched.index[0])  # requests are consecutive rows, in order
                    for shard in range(first // per_shard, (first + b - 1) // per_shard + 1):
                        lo, hi = max(first, shard * per_shard), min(first + b, (shard + 1) * per_shard)
                        os.pwrite(fds[shard], rows[lo - first: hi - first].tobytes(),
                                  HEADER_BYTES + (lo - shard * per_shard) * row)
                    crc[fetched.index] = fetched.crc
                    if hist is not None:
                        hist[fetched.index] = fetched.hist
                    advance(b)
            for fd in fds:
                os.fsync(fd)
        finally:
            pipeline.close()
            for fd in fds:
                os.close(fd)
        crc.tofile(tmp / "crc.u32")
        index = {"format": FORMAT, "key": key, "count": n, "x_shape": list(x_shape),
                 "y_shape": list(y_shape) if y_shape else None, "row_bytes": row, "shards": shards,
                 "crc_sha256": _sha256_file(tmp / "crc.u32"), "bad": {str(k): v for k, v in sorted(bad.items())},
                 "decoder": source.decoder.params(), "built_seconds": round(time.perf_counter() - began, 1)}
        if hist is not None:
            hist.tofile(tmp / "hist.i64")
            index["hist_sha256"] = _sha256_file(tmp / "hist.i64")
        for file in ("crc.u32", "hist.i64"):
            if (tmp / file).exists():
                with open(tmp / file, "rb+") as f:
                    os.fsync(f.fileno())
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        with open(tmp / "index.json", "rb+") as f:
            os.fsync(f.fileno())
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_or_build(table, decoder, source, folder: Path, name: str, root: Path, workers: int, prefetch: int,
                  skip: bool) -> DecodeCache:
    """The valid cache of `table` decoded by `decoder` under `folder`, built (or rebuilt) when needed."""
    params = {**decoder.params(), "x_shape": list(source.x_shape),
              "y_shape": list(source.y_shape) if source.y_shape else None, "format": FORMAT}
    key = table.key(params)
    ident = hashlib.sha256(repr((name, str(root), sorted(params.items()))).encode()).hexdigest()[:12]
    prefix = f"{name}-{ident}-"
    path = folder / f"{prefix}{key[:16]}"
    hist_classes = decoder.mask_classes if source.y_shape else None
    n = len(table)
    with _locked(folder / f"{prefix}lock"):
        try:
            cache = open_cache(path, key, n, source.x_shape, source.y_shape, hist_classes)
        except CacheInvalid as why:
            if path.exists():
                note(f"decode cache {path}: {why}; rebuilding it")
            build_cache(path, key, source, workers, prefetch, skip, name)
            cache = open_cache(path, key, n, source.x_shape, source.y_shape, hist_classes)
        _remove_stale(folder, prefix, path)
    return cache


@dataclass
class CacheSource:
    """Batches read from the decode cache (each row's crc32 checked; a failing row re-decoded from its files)."""

    cache: DecodeCache
    files: "FileSource"  # models.data.files (not imported: it imports this module)

    @property
    def table(self):
        return self.files.table

    @property
    def decoder(self):
        return self.files.decoder

    def fetch(self, index: np.ndarray, mode: str = "batch") -> Fetched:
        if mode != "batch":  # class counts come from hist.i64, building from the files
            return self.files.fetch(index, mode)
        cache, out = self.cache, Fetched(index)
        b = len(index)
        x = alloc((b, *cache.x_shape), torch.uint8)
        xs = x.numpy().reshape(b, cache.x_bytes)
        masked = cache.y_shape is not None
        y = alloc((b, *cache.y_shape), torch.int64) if masked else None
        ys = y.numpy().reshape(b, -1) if masked else None
        fds = cache.fds()
        mask_row = np.empty(cache.row - cache.x_bytes, dtype=np.uint8) if masked else None
        for k, i in enumerate(index):
            i = int(i)
            shard, local = cache.locate(i)
            # read straight into the batch (preadv, no mmap: the kernel's page cache holds the shards, not this
            # process, so its memory does not grow with the number of samples read)
            buffers = [xs[k], mask_row] if masked else [xs[k]]
            got = os.preadv(fds[shard], buffers, HEADER_BYTES + local * cache.row)
            crc = zlib.crc32(xs[k])
            if masked:
                crc = zlib.crc32(mask_row, crc)
            if got != cache.row or crc != int(cache.crc[i]):
                row = self._repair(i)
                if row is None:
                    out.bad.append((k, f"{self.files.table.item(i)[0]}: the cached sample failed its checksum and "
                                       f"the file no longer decodes to it"))
                    continue
                out.repaired += 1
                xs[k] = row[: cache.x_bytes]
                if masked:
                    mask_row[:] = row[cache.x_bytes:]
            if masked:
                ys[k] = mask_row
        out.x = x
        out.y = y if masked else torch.from_numpy(self.files.table.labels[index])
        return out

    def _repair(self, i: int) -> np.ndarray | None:
        """Decode row i again from its files; rewrite it when it matches the recorded checksum."""
        try:
            image, mask = self.files.decode_one(i)
        except DataError:
            return None
        row = np.concatenate([image.reshape(-1), mask.reshape(-1)]) if mask is not None else image.reshape(-1).copy()
        if zlib.crc32(row) != int(self.cache.crc[i]):
            return None
        try:
            self.cache.rewrite(i, row.tobytes())
        except OSError:
            pass  # a read-only cache still serves the re-decoded row
        return row
