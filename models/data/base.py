"""The shared vocabulary of the data package: the error type, the dataset registry, the split containers.

Every reader returns one of the dataclasses below holding CPU tensors, so the trainer, the exporter and the service
agree on dtypes and shapes without knowing which file format the data came from.
"""
from __future__ import annotations

import gzip
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from models.registry import Registry
from models.errors import SpecserveError
from models.task_table import task_kind

Splits = Union["ImageSplits", "SegSplits", "TextCorpus", "SeriesSplits", "RegressionSplits"]
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
# Split containers (CPU tensors)


@dataclass
class ImageSplits:
    """Classification images. x: uint8 (N, C, H, W); y: int64 (N,) with values in [0, len(labels))."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labels: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass
class SegSplits:
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

    @property
    def num_classes(self) -> int:
        return len(self.labels)


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
