"""Open the dataset a spec names, with its paths confined to the data root the user gives.

Paths in a spec (`root`, `path`) are relative to the data root (`--data-root`, or $SPECSERVE_DATA_ROOT, default
./data): a spec can name files under it but never escape it (absolute paths and `..` are refused), so a spec from
someone else cannot read arbitrary files of the machine it is trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import Problem, SpecError
from .registry import UnknownName
from .spec import Spec
from .validation import validation_problems

PATH_OPTIONS = ("root", "path")


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


def check_data_section(spec: Spec) -> None:
    """Validate dataset name, options and augmentation steps at load time (no file is read)."""
    from .data import AUGMENTATIONS, DATASETS  # late: the data package imports torch and PIL

    if spec.data is None:
        return
    try:
        entry = DATASETS.entry(spec.data.dataset)
    except UnknownName as err:
        raise SpecError.one(spec.locate(("data", "dataset")), "data.dataset", str(err)) from None
    problems: list[Problem] = []
    if entry.meta["task"] != spec.task:
        problems.append(Problem(spec.locate(("data", "dataset")), "data.dataset",
                                f"dataset {spec.data.dataset} is for {entry.meta['task']}, but the task is {spec.task}"))
    try:
        entry.meta["args"].model_validate(spec.data.options)
    except ValidationError as err:
        problems += validation_problems(err, spec.source, ("data",), model=entry.meta["args"])
    for i, (name, args) in enumerate(augment_steps(spec)):
        where = ("data", "augment", i)
        try:
            AUGMENTATIONS.entry(name).meta["args"].model_validate(args)
        except UnknownName as err:
            problems.append(Problem(spec.locate(where), f"data.augment[{i}]", str(err)))
        except ValidationError as err:
            problems += validation_problems(err, spec.source, where + (name,), model=AUGMENTATIONS.entry(name).meta["args"])
    if problems:
        raise SpecError(problems)


def augment_steps(spec: Spec) -> list[tuple[str, dict[str, Any]]]:
    """`augment` entries use the layer grammar: `- hflip` or `- color_jitter: {brightness: 0.5}`."""
    steps = []
    for i, entry in enumerate(spec.data.augment if spec.data else []):
        if isinstance(entry, str):
            steps.append((entry, {}))
        elif isinstance(entry, dict) and len(entry) == 1:
            name, args = next(iter(entry.items()))
            steps.append((str(name), args if isinstance(args, dict) else {} if args is None else {"_": args}))
        else:
            raise SpecError.one(spec.locate(("data", "augment", i)), f"data.augment[{i}]",
                                "an augmentation is a name (- hflip) or a one-key mapping (- hflip: {p: 0.5})")
    return steps


def open_dataset(spec: Spec, data_root: Path | None = None, seed: int | None = None):
    """Load the spec's dataset (models.data splits). DataError for bad files, SpecError for bad options."""
    from .data import load_dataset

    if spec.data is None:
        raise SpecError.one(spec.locate(()), "data", "the spec has no data section to train on")
    options = dataset_options(spec, data_root if data_root is not None else default_data_root())
    try:
        return load_dataset(spec.data.dataset, options, seed=spec.train.seed if seed is None else seed)
    except ValidationError as err:
        raise SpecError(validation_problems(err, spec.source, ("data",))) from None
