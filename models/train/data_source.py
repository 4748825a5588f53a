"""Open the dataset a spec names, with its paths confined to the data root the user gives.

Paths in a spec (`root`, `path`, `cache_dir`) are relative to the data root (`--data-root`, or $SPECSERVE_DATA_ROOT, default
./data): a spec can name files under it but never escape it (absolute paths and `..` are refused), so a spec from
someone else cannot read arbitrary files of the machine it is trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.data import load_dataset
from models.data.progress import quiet as quiet_progress
from models.errors import SpecError
from models.spec.schema import Spec
from models.spec.validation import validation_problems

PATH_OPTIONS = ("root", "path", "cache_dir")  # cache_dir is written to: confined like the paths read


def default_data_root() -> Path:
    return Path(os.environ.get("SPECSERVE_DATA_ROOT", "data"))


def confine(value: str, data_root: Path) -> Path:
    """`value` resolved under `data_root`; ValueError when it would leave it."""
    relative = Path(value)
    if relative.is_absolute():
        raise ValueError(f"'{value}' is absolute; dataset paths are relative to the data root ({data_root})")
    root = data_root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"'{value}' leaves the data root ({data_root})")
    return target


def dataset_options(spec: Spec, data_root: Path | None) -> dict[str, Any]:
    """The spec's data options with path options resolved under the data root (SpecError when they escape)."""
    assert spec.data is not None
    options = spec.data.options
    if data_root is None:
        return options
    for key in PATH_OPTIONS:
        if isinstance(options.get(key), str):
            try:
                options[key] = confine(options[key], data_root)
            except ValueError as err:
                raise SpecError.one(spec.locate(("data", key)), f"data.{key}", str(err)) from None
    return options


def open_dataset(spec: Spec, data_root: Path | None = None, seed: int | None = None, quiet: bool = False):
    """Load the spec's dataset (models.data splits). DataError for bad files, SpecError for bad options.

    File datasets show progress bars for listing and cache building on a terminal, unless `quiet`."""
    if spec.data is None:
        raise SpecError.one(spec.locate(()), "data", "the spec has no data section to train on")
    options = dataset_options(spec, data_root if data_root is not None else default_data_root())
    try:
        with quiet_progress(quiet):
            return load_dataset(spec.data.dataset, options, seed=spec.train.seed if seed is None else seed)
    except ValidationError as err:
        raise SpecError(validation_problems(err, spec.source, ("data",))) from None
