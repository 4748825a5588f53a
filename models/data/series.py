"""Univariate series as sliding windows: a numeric CSV column, or the course's noisy sine.

Window i has inputs s[i .. i+τ-1] and target s[i+τ] (D2L's `features`/`labels`). Targets before `split` are
training targets; the scaling is fitted on those values only, so test data never leaks into it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import PositiveFloat, PositiveInt, model_validator

from models.data.base import (
    DataArgs,
    DataError,
    Fraction,
    SeededArgs,
    SeriesSplits,
    CsvRow,
    read_table,
    register,
)
from models.artifact.scaling import ScalingKind, fit_scaling, scale


def windows(series: np.ndarray, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows of a (T,) series: inputs float32 (T - τ, τ) and next values float32 (T - τ, 1)."""
    values = torch.as_tensor(series, dtype=torch.float32)
    x = values.unfold(0, window, 1)[:-1]  # (T - τ, τ): row i = values[i : i + τ]
    y = values[window:].unsqueeze(1)  # (T - τ, 1)
    return x.contiguous(), y


def make_splits(raw: np.ndarray, window: int, split: int, kind: ScalingKind, source: str) -> SeriesSplits:
    """Scale with parameters fitted on raw[:split], window the scaled series, cut at target index `split`."""
    if split - window < 1 or split > len(raw):
        raise DataError(
            f"{source}: {len(raw)} values is too short for window {window}: training needs at least one window "
            f"(values before the test part: {split}, need > {window})"
        )
    scaling = fit_scaling(raw[:split], kind)
    x, y = windows(np.asarray(scale(raw, scaling), dtype=np.float32), window)  # (T - τ, τ), (T - τ, 1)
    n_train = split - window  # windows whose target index is < split
    return SeriesSplits(
        train_x=x[:n_train],
        train_y=y[:n_train],
        test_x=x[n_train:],
        test_y=y[n_train:],
        series=torch.as_tensor(raw, dtype=torch.float32),
        scaling=scaling,
        split=split,
        window=window,
    )


def read_column(path: Path, column: str | int) -> np.ndarray:
    """One numeric column of a CSV with a header row, as float64 (T,); a bad cell is a DataError at file:line."""

    def take(header: CsvRow) -> Callable[[CsvRow], float]:
        names = header.cells
        if isinstance(column, str):
            if column not in names:
                raise DataError(f"{path}: no column {column!r}; columns: {', '.join(names)}")
            index = names.index(column)
        elif -len(names) <= column < len(names):
            index = column % len(names)
        else:
            raise DataError(f"{path}: column index {column} out of range for {len(names)} columns")

        def value_of(row: CsvRow) -> float:
            if index >= len(row.cells):
                raise DataError(f"{row.where}: {len(row.cells)} cells, no column {names[index]!r}")
            cell = row.cells[index].strip()
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{row.where}: column {names[index]!r} value {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{row.where}: column {names[index]!r} value {cell!r} is not finite")
            return value

        return value_of

    return np.asarray(read_table(path, "empty CSV file", take=take), dtype=np.float64)


class SeriesCsvArgs(DataArgs):
    path: Path
    column: str | int = -1  # header name or 0-based index; default the last column
    window: PositiveInt = 4  # τ
    test_fraction: Fraction = 0.2
    scaling: ScalingKind = "standard"


@register("series_csv", task="sequence", input="series", args=SeriesCsvArgs)
def series_csv(args: SeriesCsvArgs, seed: int) -> SeriesSplits:
    """A numeric column of a CSV; the last `test_fraction` of the values are test targets."""
    raw = read_column(args.path, args.column)
    split = len(raw) - int(round(len(raw) * args.test_fraction))
    return make_splits(raw, args.window, split, args.scaling, str(args.path))


class SineArgs(SeededArgs):
    length: PositiveInt = 1000  # T
    window: PositiveInt = 4
    train_count: PositiveInt = 600  # training windows, as in the course
    noise: PositiveFloat = 0.2
    scaling: ScalingKind = "none"

    @model_validator(mode="after")
    def _fits(self) -> "SineArgs":
        if self.window + self.train_count >= self.length:
            raise ValueError(
                f"window ({self.window}) + train_count ({self.train_count}) must be < length ({self.length})"
            )
        return self


@register("sine", task="sequence", input="series", args=SineArgs)
def sine(args: SineArgs, seed: int) -> SeriesSplits:
    """The course's x_t = sin(0.01 t) + N(0, 0.2), t = 1..T."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, args.length + 1, dtype=np.float64)
    raw = np.sin(0.01 * t) + rng.normal(0.0, args.noise, size=args.length)  # (T,)
    return make_splits(raw, args.window, args.window + args.train_count, args.scaling, "sine")
