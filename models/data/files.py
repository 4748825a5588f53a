"""Image datasets read from files, small or too large for memory, behind one interface (models.data.base.Samples).

Every file dataset (image_folder, camvid, voc) works the same way:

  1. List the files up front (every located error of a bad layout is raised here, before any decoding): an
     ItemTable of paths, sizes, mtimes and labels, held in numpy arrays (no Python object per file, so DataLoader
     workers forked from the trainer don't copy it page by page as reference counts change).
  2. Choose where decoded samples live (`cache`):
       memory  decode everything once into uint8 tensors (ImageSplits / SegSplits, as before);
       disk    decode once into np.memmap shards under a cache folder (models.data.cache); epochs and later runs
               read those, no JPEG/PNG is decoded again while the files are unchanged;
       none    decode every epoch from the files;
       auto    (default) memory when the decoded samples take at most MEMORY_LIMIT bytes, else disk when the
               cache folder is writable and has room, else none.
  3. Decode and resize in torch DataLoader worker processes (`workers`, default from os.sched_getaffinity), a
     whole batch per request, into shared memory; batches are pinned for non-blocking copies when training on
     CUDA, and `prefetch` batches per worker are read ahead. Memory stays bounded: a few batches in flight,
     whatever the number of images (the disk cache is mapped, not loaded).

Batch order is models.data.order.epoch_order, the same as the in-memory path, so for the same seed both paths
give the same batches, and each rank of a torchrun job reads only its shard. A file that cannot be decoded is a
DataError naming it, at listing, at cache building or mid-epoch, unless `skip_bad_files: true`: then it is left
out, and the run's metrics count it.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

import numpy as np
import torch
from pydantic import NonNegativeInt, PositiveInt

from models.data.base import DataArgs, DataError, ImageData, SegData, Samples, SegSplits, ImageSplits, Size
from models.data.base import _skip_report, count_classes
from models.data.order import batch_bounds, epoch_order
from models.data.cache import CacheSource, cache_bytes, open_or_build
from models.data.images import decode_file, image_size
from models.data.progress import progress
from models.data.workers import LOAD_CHUNK, WORKERS_FROM, Fetched, Pipeline, alloc, default_workers, note

MEMORY_LIMIT = 2 * 1024**3  # decoded bytes up to which `cache: auto` holds a dataset in memory (2 GiB)
CACHE_DIR_NAME = ".specserve-cache"  # default cache folder, inside the dataset's root
CACHE_ENV = "SPECSERVE_CACHE_DIR"  # a machine-wide cache folder, wins over the spec's cache_dir

Cache = Literal["auto", "memory", "disk", "none"]


class FileArgs(DataArgs):
    """Options every file dataset has (on top of its own)."""

    cache: Cache = "auto"  # where decoded samples live: see the module docstring
    cache_dir: Path | None = None  # default <root>/.specserve-cache (or $SPECSERVE_CACHE_DIR)
    workers: NonNegativeInt | None = None  # decoding processes; None: from the CPUs this process may use
    prefetch: PositiveInt = 2  # batches each worker reads ahead
    skip_bad_files: bool = False  # leave undecodable files out (counted in metrics.json) instead of stopping
    fast_decode: bool = False  # JPEGs decoded at 1/2..1/8 scale when `size` allows (libjpeg DCT scaling), then
    # resized: 2-3x faster, but pixels differ slightly from what the service computes from the same file


# ---------------------------------------------------------------------------------------------------------------------
# The file list


class PathTable:
    """Many paths in two numpy arrays (UTF-8 bytes and offsets) instead of a list of Python strings."""

    def __init__(self, paths: Sequence[str | Path]):
        encoded = [os.fsencode(p) for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Path:
        return Path(os.fsdecode(self.blob[self.offsets[i]: self.offsets[i + 1]].tobytes()))


@dataclass
class ItemTable:
    """N samples of `per_item` files each (an image, or an image and its mask), in listing order.

    `labels` int64 (N,) for classification; `sizes`/`mtimes` (N * per_item,) from os.stat, the decode cache's key."""

    paths: PathTable
    per_item: int
    sizes: np.ndarray
    mtimes: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths) // self.per_item

    def item(self, i: int) -> tuple[Path, ...]:
        return tuple(self.paths[i * self.per_item + j] for j in range(self.per_item))

    def key(self, params: dict[str, Any]) -> str:
        """sha256 of everything decoded samples depend on: decoding parameters, file paths, sizes and mtimes."""
        h = hashlib.sha256(repr(sorted(params.items())).encode())
        h.update(self.paths.blob.tobytes())
        h.update(self.paths.offsets.tobytes())
        h.update(self.sizes.astype("<i8").tobytes())
        h.update(self.mtimes.astype("<i8").tobytes())
        if self.labels is not None:
            h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()


class TableBuilder:
    """Collects listed files with their stat results; `add` returns the index of the new item."""

    def __init__(self, per_item: int, advance: Callable[[int], None] = lambda n: None):
        self.per_item, self.advance = per_item, advance
        self.paths: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
        self.labels: list[int] = []

    def add(self, files: Sequence[tuple[Path, os.stat_result]], label: int | None = None) -> None:
        assert len(files) == self.per_item
        for path, st in files:
            self.paths.append(str(path))
            self.sizes.append(st.st_size)
            self.mtimes.append(st.st_mtime_ns)
        if label is not None:
            self.labels.append(label)
        self.advance(1)

    def table(self) -> ItemTable:
        labels = np.asarray(self.labels, dtype=np.int64) if self.labels else None
        return ItemTable(PathTable(self.paths), self.per_item, np.asarray(self.sizes, dtype=np.int64),
                         np.asarray(self.mtimes, dtype=np.int64), labels)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding one sample


class Decoder(Protocol):
    """How one item's files become arrays. Picklable (it travels to worker processes)."""

    mask_classes: int | None  # class count for masks (None: items have labels, not masks)
    mask_ignore: int | None

    def params(self) -> dict[str, Any]:
        """Everything the decoded arrays depend on (part of the cache key)."""

    def probe(self, paths: tuple[Path, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """Shapes of one item's (x, mask) from file headers alone."""

    def decode(self, paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """x uint8 (C, H, W) and mask uint8 (H, W) or None; DataError naming the file when it can't."""

    def decode_mask(self, paths: tuple[Path, ...]) -> np.ndarray:
        """The mask alone, uint8 (H, W)."""


@dataclass(frozen=True)
class ImageDecoder:
    """A classification image: converted to `channels`, resized bilinearly to `size` (read_image's pixels)."""

    channels: int
    size: Size | None
    fast: bool = False
    mask_classes: int | None = None
    mask_ignore: int | None = None

    def params(self):
        return {"kind": "image", "channels": self.channels, "size": self.size, "fast": self.fast}

    def probe(self, paths):
        h, w = self.size if self.size is not None else image_size(paths[0])
        return (self.channels, h, w), None

    def decode(self, paths):
        return decode_file(paths[0], self.channels, self.size, self.fast).transpose(2, 0, 1), None

    def decode_mask(self, paths):
        raise TypeError("classification images have no masks")


# ---------------------------------------------------------------------------------------------------------------------
# Batch sources: what a worker runs for one request


def mask_histogram(mask: np.ndarray, classes: int, ignore: int | None) -> np.ndarray:
    """Pixels of each class in one mask, ignored ones left out: int64 (K,)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    if ignore is not None and ignore < 256:
        counts[ignore] = 0
    return counts[:classes].astype(np.int64)


Mode = Literal["batch", "build", "hist"]


@dataclass
class FileSource:
    """Decodes items of `table` with `decoder`, checking every sample against the shapes of the first one."""

    table: ItemTable
    decoder: Decoder
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...] | None
    first: tuple[Path, ...]  # the item the shapes come from (named when another one differs)

    def _check(self, got: tuple[int, ...], want: tuple[int, ...], path: Path, first: Path) -> None:
        if got != want:
            raise DataError(f"{path}: shape {got} differs from {want} of {first} (set size: [H, W])")

    def decode_one(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        paths = self.table.item(i)
        x, mask = self.decoder.decode(paths)
        self._check(tuple(x.shape), self.x_shape, paths[0], self.first[0])
        if mask is not None:
            self._check(tuple(mask.shape), self.y_shape, paths[1], self.first[1])
        return x, mask

    def fetch(self, index: np.ndarray, mode: Mode = "batch") -> Fetched:
        out = Fetched(index)
        b = len(index)
        dec = self.decoder
        if mode == "hist":
            out.hist = np.zeros((b, dec.mask_classes), dtype=np.int64)
            for k, i in enumerate(index):
                try:
                    out.hist[k] = mask_histogram(dec.decode_mask(self.table.item(int(i))), dec.mask_classes,
                                                 dec.mask_ignore)
                except DataError as err:
                    out.bad.append((k, str(err)))
            return out
        x = alloc((b, *self.x_shape), torch.uint8)
        xs = x.numpy()
        masked = self.y_shape is not None
        masks = alloc((b, *self.y_shape), torch.uint8 if mode == "build" else torch.int64) if masked else None
        ms = masks.numpy() if masked else None
        if mode == "build":
            out.crc = np.zeros(b, dtype=np.uint32)
            out.hist = np.zeros((b, dec.mask_classes), dtype=np.int64) if masked else None
        for k, i in enumerate(index):
            try:
                image, mask = self.decode_one(int(i))
            except DataError as err:
                out.bad.append((k, str(err)))
                xs[k] = 0
                if masked:
                    ms[k] = 0
                continue
            xs[k] = image
            if masked:
                ms[k] = mask
            if mode == "build":
                crc = zlib.crc32(xs[k])
                out.crc[k] = zlib.crc32(ms[k], crc) if masked else crc
                if masked:
                    out.hist[k] = mask_histogram(mask, dec.mask_classes, dec.mask_ignore)
        out.x = x
        if mode == "build":
            out.masks = masks
        else:
            out.y = masks if masked else torch.from_numpy(self.table.labels[index])
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Streamed splits


class _Reader:
    """The machinery behind a streamed dataset's splits: the source, its workers, the files skipped as bad.

    The splits point here and the dataset object points to them and here: no reference cycle, so dropping the
    dataset frees it at once and stops the workers (stopping them from inside the garbage collector's pass would
    leave each one waiting 5 s for a stop signal)."""

    def __init__(self, table: ItemTable, source, x_shape, args: FileArgs, hist: np.ndarray | None,
                 skipped: Sequence[str]):
        self.table, self.source, self.x_shape = table, source, tuple(x_shape)
        self.skip = args.skip_bad_files
        self.pipeline = Pipeline(source, default_workers() if args.workers is None else args.workers, args.prefetch)
        self.skipped: set[str] = set(skipped)
        self.hist = hist  # per-sample mask class counts (from the cache), or None
        self.repaired = 0

    def bad(self, fetched: Fetched) -> None:
        """Raise for the first bad file of a batch, or note them all as skipped."""
        if not fetched.bad:
            return
        if not self.skip:
            raise DataError(fetched.bad[0][1])
        for k, message in fetched.bad:
            self.skipped.add(message.split(": ", 1)[0])

    def batches(self, requests, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for fetched in self.pipeline.run(requests):
            self.bad(fetched)
            if fetched.repaired:
                self.repaired += fetched.repaired
                warnings.warn(f"decode cache: {fetched.repaired} sample(s) failed their checksum and were decoded "
                              f"again from the files (and rewritten)", stacklevel=2)
            x, y = fetched.x, fetched.y
            if fetched.bad:
                keep = torch.ones(len(x), dtype=torch.bool)
                keep[[k for k, _ in fetched.bad]] = False
                x, y = x[keep], y[keep]
                if len(x) == 0:
                    if world > 1:  # ranks step in lockstep: one rank can't just leave a step out
                        raise DataError(f"every file of a batch was unreadable ({fetched.bad[0][1]}); "
                                        f"under torchrun a rank cannot skip a whole step")
                    continue
            yield x, y

    def mask_counts(self, positions: np.ndarray, classes: int) -> torch.Tensor:
        if self.hist is not None:
            return torch.from_numpy(self.hist[positions].sum(0)[:classes])
        total = np.zeros(self.source.decoder.mask_classes, dtype=np.int64)
        requests = [(positions[s: s + LOAD_CHUNK], "hist") for s in batch_bounds(len(positions), LOAD_CHUNK)]
        for fetched in self.pipeline.run(requests):
            self.bad(fetched)
            bad = {k for k, _ in fetched.bad}
            total += sum((h for k, h in enumerate(fetched.hist) if k not in bad), np.zeros_like(total))
        return torch.from_numpy(total[:classes])


class StreamSplit(Samples):
    """One split (positions into the item table) of a streamed dataset."""

    def __init__(self, reader: _Reader, positions: np.ndarray):
        self.reader, self.positions = reader, positions
        self.sample_shape = reader.x_shape

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, batch_size, *, shuffle=False, generator=None, rank=0, world=1, drop_last=False):
        order = epoch_order(len(self.positions), shuffle, generator, rank, world).numpy()  # drawn now, not lazily
        requests = [(self.positions[order[s: s + batch_size]], "batch")
                    for s in batch_bounds(len(order), batch_size, drop_last)]
        return self.reader.batches(requests, world)

    def take(self, indices):
        """Read in this process (a few samples: parity inputs, figures); a bad file raises, even when skipping."""
        fetched = self.reader.source.fetch(self.positions[np.asarray(list(indices), dtype=np.int64)], "batch")
        if fetched.bad:
            raise DataError(fetched.bad[0][1])
        return fetched.x, fetched.y

    def targets(self):
        if self.reader.table.labels is None:
            raise TypeError("segmentation masks are not held in memory: use class_counts")
        return torch.from_numpy(self.reader.table.labels[self.positions])

    def class_counts(self, classes, ignore):
        if self.reader.table.labels is not None:
            return count_classes(self.targets(), classes, ignore)
        return self.reader.mask_counts(self.positions, classes)


class _Streamed:
    """What the streamed classification and segmentation data share (see _Reader)."""

    def __init__(self, table: ItemTable, source, x_shape, train: np.ndarray, test: np.ndarray, args: FileArgs,
                 hist: np.ndarray | None = None, skipped: Sequence[str] = (), how: str = ""):
        self.reader = _Reader(table, source, x_shape, args, hist, skipped)
        self.how = how  # "disk cache <folder>" or "files": how batches are read
        self._train, self._test = StreamSplit(self.reader, train), StreamSplit(self.reader, test)

    @property
    def train(self) -> Samples:
        return self._train

    @property
    def test(self) -> Samples:
        return self._test

    @property
    def pipeline(self) -> Pipeline:
        return self.reader.pipeline

    @property
    def source(self):
        return self.reader.source

    def use_device(self, device: torch.device) -> None:
        self.reader.pipeline.pin = torch.device(device).type == "cuda"

    def report(self):
        return _skip_report(self.reader.skip, list(self.reader.skipped))

    def close(self) -> None:
        self.reader.pipeline.close()


class StreamedImages(_Streamed, ImageData):
    """Classification images streamed from files or from the decode cache."""

    def __init__(self, labels: list[str], *args, **kwargs):
        self.labels = labels
        super().__init__(*args, **kwargs)


class StreamedSeg(_Streamed, SegData):
    """Segmentation pairs streamed from files or from the decode cache."""

    def __init__(self, labels: list[str], colors, ignore_index: int | None, *args, **kwargs):
        self.labels, self.colors, self.ignore_index = labels, colors, ignore_index
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Choosing the path and opening


@dataclass
class Meta:
    """What the splits need beside pixels: class names; for segmentation colours and the ignore index."""

    labels: list[str]
    colors: list[tuple[int, int, int]] | None = None
    ignore_index: int | None = None


def probe(table: ItemTable, decoder: Decoder, skip: bool) -> tuple[tuple, tuple | None, int]:
    """Shapes of the first item whose headers read (every other item must match them), and its index."""
    first_error = None
    for i in range(len(table)):
        try:
            x_shape, y_shape = decoder.probe(table.item(i))
            return x_shape, y_shape, i
        except DataError as err:
            if not skip:
                raise
            first_error = first_error or err
    raise DataError(f"{first_error}; no file of this dataset could be read") from first_error


def resident_bytes(n: int, x_shape: tuple, y_shape: tuple | None) -> int:
    """Bytes the in-memory path holds: uint8 images and int64 labels or masks."""
    return n * (math.prod(x_shape) + 8 * (math.prod(y_shape) if y_shape else 1))


def cache_roots(args: FileArgs, root: Path) -> list[Path]:
    """Where the decode cache may go, first choice first: $SPECSERVE_CACHE_DIR, else the spec's cache_dir, else
    <root>/.specserve-cache then the user's cache folder (~/.cache/specserve) when the first is not writable."""
    if os.environ.get(CACHE_ENV):
        return [Path(os.environ[CACHE_ENV])]
    if args.cache_dir is not None:
        return [args.cache_dir]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specserve"
    return [root / CACHE_DIR_NAME, user]


def writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_file = folder / f".write-test-{os.getpid()}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
        return True
    except OSError:
        return False


def _cache_folder(args: FileArgs, root: Path, need: int) -> tuple[Path | None, str]:
    """A writable cache folder with room for `need` bytes, or None and why not."""
    reasons = []
    for folder in cache_roots(args, root):
        if not writable(folder):
            reasons.append(f"{folder} is not writable")
            continue
        free = shutil.disk_usage(folder).free
        if free < need + 256 * 1024**2:
            reasons.append(f"{folder} has {free / 1e9:.1f} GB free, the cache needs {need / 1e9:.1f} GB")
            continue
        return folder, ""
    return None, "; ".join(reasons)


def decode_all(source: FileSource, positions: np.ndarray, pipeline: Pipeline, skip: bool, what: str,
               advance: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor | None, list[int], list[str]]:
    """Every item at `positions` decoded into one uint8 tensor (N, C, H, W) (+ int64 masks (N, H, W)), filled in
    place (no list of per-image tensors, no second copy); bad items raise, or are dropped when `skip`."""
    n = len(positions)
    x = torch.empty((n, *source.x_shape), dtype=torch.uint8)
    masks = torch.empty((n, *source.y_shape), dtype=torch.int64) if source.y_shape else None
    bad_rows: list[int] = []
    skipped: list[str] = []
    requests = [(positions[s: s + LOAD_CHUNK], "batch") for s in batch_bounds(n, LOAD_CHUNK)]
    start = 0
    for fetched in pipeline.run(requests):
        if fetched.bad and not skip:
            raise DataError(fetched.bad[0][1])
        b = len(fetched.index)
        x[start: start + b] = fetched.x
        if masks is not None:
            masks[start: start + b] = fetched.y
        for k, message in fetched.bad:
            bad_rows.append(start + k)
            skipped.append(message.split(": ", 1)[0])
        start += b
        advance(b)
    return x, masks, bad_rows, skipped


def _drop(t: torch.Tensor | None, rows: list[int]) -> torch.Tensor | None:
    if t is None or not rows:
        return t
    keep = torch.ones(len(t), dtype=torch.bool)
    keep[rows] = False
    return t[keep]


def open_files(table: ItemTable, decoder: Decoder, args: FileArgs, root: Path, train: np.ndarray, test: np.ndarray,
               meta: Meta, name: str) -> ImageData:
    """The splits of a listed file dataset, in memory or streamed (see the module docstring); `train`/`test` are
    sorted positions in `table`, `root` the dataset folder (default home of the cache), `name` the dataset's."""
    x_shape, y_shape, first = probe(table, decoder, args.skip_bad_files)
    source = FileSource(table, decoder, tuple(x_shape), tuple(y_shape) if y_shape else None, table.item(first))
    n = len(table)
    need = resident_bytes(n, x_shape, y_shape)
    choice = args.cache
    folder = None
    if choice in ("auto", "disk"):
        if choice == "auto" and need <= MEMORY_LIMIT:
            choice = "memory"
        else:
            folder, why = _cache_folder(args, root, cache_bytes(n, x_shape, y_shape))
            if folder is None and choice == "disk":
                raise DataError(f"{root}: no folder for the decode cache ({why}); set cache_dir or "
                                f"${CACHE_ENV}, or cache: none")
            if folder is None:
                note(f"{root}: {n:,} samples need {need / 1e9:.1f} GB decoded, more than the {MEMORY_LIMIT / 1e9:.1f} "
                     f"GB held in memory, and the decode cache has no folder ({why}): decoding from the files "
                     f"every epoch")
            choice = "disk" if folder is not None else "none"
    workers = default_workers() if args.workers is None else args.workers
    if choice == "memory":
        pipeline = Pipeline(source, workers if n >= WORKERS_FROM else 0, args.prefetch)
        try:
            with progress(f"decoding {name}", total=n) as advance:
                order = np.concatenate([train, test])
                x, masks, bad, skipped = decode_all(source, order, pipeline, args.skip_bad_files, str(root), advance)
        finally:
            pipeline.close()
        nt = len(train)
        bad_train, bad_test = [r for r in bad if r < nt], [r - nt for r in bad if r >= nt]
        train_x, test_x = _drop(x[:nt], bad_train), _drop(x[nt:], bad_test)
        if masks is not None:
            skip = skipped if args.skip_bad_files else None
            return SegSplits(train_x, _drop(masks[:nt], bad_train), test_x, _drop(masks[nt:], bad_test),
                             meta.labels, meta.colors, meta.ignore_index, skip)
        labels = torch.from_numpy(table.labels)
        train_y, test_y = _drop(labels[train], bad_train), _drop(labels[test], bad_test)
        return ImageSplits(train_x, train_y, test_x, test_y, meta.labels, skipped if args.skip_bad_files else None)
    hist = None
    skipped: list[str] = []
    how = "files"
    if choice == "disk":
        cache = open_or_build(table, decoder, source, folder, name, root, workers, args.prefetch, args.skip_bad_files)
        if cache.bad and not args.skip_bad_files:
            raise DataError(next(iter(cache.bad.values())))
        bad = np.fromiter(cache.bad, dtype=np.int64, count=len(cache.bad))
        train, test = np.setdiff1d(train, bad), np.setdiff1d(test, bad)
        skipped = [message.split(": ", 1)[0] for message in cache.bad.values()]
        source = CacheSource(cache, source)
        hist, how = cache.hist, f"disk cache {cache.path}"
    cls = StreamedSeg if y_shape else StreamedImages
    head = (meta.labels, meta.colors, meta.ignore_index) if y_shape else (meta.labels,)
    return cls(*head, table, source, x_shape, train, test, args, hist=hist, skipped=skipped, how=how)
