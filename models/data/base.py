"""The shared vocabulary of the data package: the error type, the dataset registry, the split containers.

Every reader returns one of the dataclasses below holding CPU tensors, so the trainer, the exporter and the service
agree on dtypes and shapes without knowing which file format the data came from.
"""
from __future__ import annotations

import csv
import gzip
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from models.data.order import tensor_batches
from models.registry import Registry
from models.errors import SpecserveError
from models.task_table import task_kind

# ImageData/SegData: ImageSplits, SegSplits or streamed; LabelledTexts: models.data.labelled_text
Splits = Union["ImageData", "SegData", "TextCorpus", "SeriesSplits", "RegressionSplits", "LabelledTexts"]
Builder = Callable[[Any, int], Splits]  # (validated args, effective seed) -> splits



@dataclass(frozen=True)
class DatasetType:
    """A registered dataset: the (task, input kind) pair it feeds (a row of models/task_table.py), its options
    model and its loader."""

    name: str
    task: str
    input: str
    args: type["DataArgs"]
    load: Builder


DATASETS: Registry[DatasetType] = Registry("dataset")


class DataError(SpecserveError):
    """Bad data: the message always starts with the file or folder concerned, then says what was wrong."""


# ---------------------------------------------------------------------------------------------------------------------
# Options


class DataArgs(BaseModel):
    """Base of every dataset's options model; unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class SeededArgs(DataArgs):
    """Options of a dataset that draws random numbers. `seed` unset means: use the run's seed."""

    seed: int | None = None


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]  # share of the data held out for testing
Size = tuple[PositiveInt, PositiveInt]  # [H, W] in the spec


def register(name: str, task: str, input: str, args: type[DataArgs]) -> Callable[[Builder], Builder]:
    """Register a dataset builder `fn(args, seed) -> splits` under `name` for the (task, input kind) it feeds."""
    if task_kind(task, input) is None:
        raise ValueError(f"dataset '{name}': ({task}, {input}) is not a pair of models/task_table.py")

    def decorator(load: Builder) -> Builder:
        DATASETS.add(name, DatasetType(name, task, input, args, load), origin=load)
        return load

    return decorator


def load_dataset(name: str, options: dict[str, Any], *, seed: int = 0) -> Splits:
    """Validate `options` with the dataset's args model and build it.

    pydantic's ValidationError propagates on purpose: the spec layer turns it into errors located in the YAML.
    `seed` is the run's seed; a dataset's own `seed` option, when given, wins.
    """
    dataset = DATASETS.get(name)
    args = dataset.args.model_validate(options)
    own_seed = getattr(args, "seed", None)
    return dataset.load(args, seed if own_seed is None else own_seed)


# ---------------------------------------------------------------------------------------------------------------------
# One split's samples, whatever holds them: the interface the trainer's Tasks read

Batch = tuple[torch.Tensor, torch.Tensor]


class Samples:
    """One split of image data: in memory (TensorSamples) or streamed from files (models.data.files).

    `sample_shape` is one image's (C, H, W); batches are (uint8 (B, C, H, W), targets) on the CPU, targets int64
    labels (B,) or masks (B, H, W). The order of `batches` is a function of the generator only (models.data.order
    .epoch_order), so the in-memory and the streamed path give the same batches for the same seed.
    """

    sample_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[Batch]:
        raise NotImplementedError

    def take(self, indices: Sequence[int]) -> Batch:
        """The samples at `indices` (positions in this split), stacked."""
        raise NotImplementedError

    def targets(self) -> torch.Tensor:
        """Every target of the split (classification labels (N,); cheap on both paths)."""
        raise NotImplementedError

    def class_counts(self, classes: int, ignore: int | None) -> torch.Tensor:
        """How many targets (labels, or mask pixels) of each class, ignored ones left out: int64 (K,)."""
        return count_classes(self.targets(), classes, ignore)


def count_classes(labels: torch.Tensor, classes: int, ignore: int | None) -> torch.Tensor:
    """How many labels (or mask pixels) of each class, ignored ones left out: int64 (K,)."""
    valid = labels[labels != ignore] if ignore is not None else labels.flatten()
    return torch.bincount(valid.flatten(), minlength=classes)[:classes]


class TensorSamples(Samples):
    """A split held in memory as tensors: batches are indexing (models.data.order.tensor_batches)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.sample_shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size, *, shuffle=False, generator=None, rank=0, world=1, drop_last=False):
        return tensor_batches(self.x, self.y, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                              rank=rank, world_size=world)

    def take(self, indices):
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return self.x[idx], self.y[idx]

    def targets(self):
        return self.y


class ImageData:
    """Classification images with labels, held in memory (ImageSplits) or streamed (models.data.files).

    `train`/`test` are Samples; `labels` the class names (label ids index it)."""

    labels: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def train(self) -> Samples:
        raise NotImplementedError

    @property
    def test(self) -> Samples:
        raise NotImplementedError

    def use_device(self, device: torch.device) -> None:
        """Where batches go: streamed data pins its batches for non-blocking copies when this is CUDA."""

    def report(self) -> dict[str, Any] | None:
        """What the run's metrics should record about the data (files skipped as bad), or None."""
        return None

    def close(self) -> None:
        """Stop reader processes, if any (they start again when batches are asked for)."""


class SegData(ImageData):
    """Segmentation pairs (see SegSplits): masks as targets, `colors` and `ignore_index` beside `labels`."""

    colors: list[tuple[int, int, int]]
    ignore_index: int | None


def _skip_report(skip: bool, skipped: list[str]) -> dict[str, Any] | None:
    """With skip_bad_files: every file left out as unreadable so far (the trainer records the count per epoch)."""
    return {"bad_files": sorted(set(skipped))} if skip else None


# ---------------------------------------------------------------------------------------------------------------------
# Split containers (CPU tensors)


@dataclass
class ImageSplits(ImageData):
    """Classification images. x: uint8 (N, C, H, W); y: int64 (N,) with values in [0, len(labels)).

    `skipped`: files left out as unreadable (only with a dataset's `skip_bad_files: true`)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labels: list[str]
    skipped: list[str] | None = None

    @property
    def train(self) -> Samples:
        return TensorSamples(self.train_x, self.train_y)

    @property
    def test(self) -> Samples:
        return TensorSamples(self.test_x, self.test_y)

    def report(self):
        return _skip_report(self.skipped is not None, self.skipped or [])


@dataclass
class SegSplits(SegData):
    """Segmentation pairs. x: uint8 (N, 3, H, W); y: int64 (N, H, W).

    `labels`/`colors` describe the classes a model predicts (len = number of outputs); mask values are in
    [0, len(labels)) or equal `ignore_index` (pixels left out of the loss and the metrics).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labels: list[str]
    colors: list[tuple[int, int, int]]
    ignore_index: int | None
    skipped: list[str] | None = None

    @property
    def train(self) -> Samples:
        return TensorSamples(self.train_x, self.train_y)

    @property
    def test(self) -> Samples:
        return TensorSamples(self.test_x, self.test_y)

    def report(self):
        return _skip_report(self.skipped is not None, self.skipped or [])


@dataclass
class TextCorpus:
    """A token stream: train int64 (L,), test int64 (M,) = the last part of the text; `vocab` maps ids to chars."""

    train: torch.Tensor
    test: torch.Tensor
    vocab: Any  # models.data.text.Vocab (typed loosely to keep this module free of the text module)


@dataclass
class SeriesSplits:
    """Sliding windows over one scaled series.

    train_x/test_x: float32 (N, window) scaled inputs; train_y/test_y: float32 (N, 1) scaled next values;
    `series`: float32 (T,) raw values; `scaling`: the dict for forecast.scale/unscale; `split`: index in `series`
    of the first test target (targets before it are training targets); `window`: τ.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    series: torch.Tensor
    scaling: dict[str, Any]
    split: int
    window: int


@dataclass
class RegressionSplits:
    """Tabular regression: x float32 (N, F), y float32 (N, 1)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the readers


def describe(exc: BaseException) -> str:
    """A short human reason for a low-level exception (the path is added by the caller)."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, expected a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a gzip file ({exc})"
    if isinstance(exc, (EOFError, zlib.error)):
        return f"truncated or corrupt compressed data ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn any exception raised while reading `path` into a DataError naming it (readers never leak tracebacks)."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"{path}: {describe(exc)}") from exc


def require_file(path: Path, hint: str = "") -> Path:
    """Fail with a DataError naming `path` unless it is an existing file."""
    if not path.is_file():
        reason = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise DataError(f"{path}: {reason}{hint}")
    return path


@dataclass(frozen=True)
class CsvRow:
    cells: list[str]
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_table(path: Path, empty: str, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
               take: Callable[[CsvRow], Callable[[CsvRow], Any]] = lambda header: lambda row: row) -> list[Any]:
    """The data rows of a CSV/TSV file with a header row (blank lines skipped, strict UTF-8, a leading BOM
    dropped): `take(header)` gives the function that turns each row into what the caller keeps, raising a
    DataError at file:line for a bad one. An empty file is `empty`'s DataError, a header without rows another."""
    require_file(path)
    kept: list[Any] = []
    with reading(path), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise DataError(f"{path}: {empty}")
        keep = take(CsvRow([h.strip() for h in header], path, reader.line_num))
        for cells in reader:
            if any(cell.strip() for cell in cells):
                kept.append(keep(CsvRow(cells, path, reader.line_num)))
    if not kept:
        raise DataError(f"{path}: no data rows under the header")
    return kept


def require_dir(path: Path, hint: str = "") -> Path:
    """Fail with a DataError naming `path` unless it is an existing folder."""
    if not path.is_dir():
        reason = "is a file, expected a folder" if path.exists() else "folder not found"
        raise DataError(f"{path}: {reason}{hint}")
    return path


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split of indices: about `test_fraction` of every class goes to test.

    Per class (not global) so small classes are represented in both parts; indices come back sorted so the
    order of the source is kept and only membership depends on the seed.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
