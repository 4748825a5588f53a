"""Check a spec's data section at load time: the dataset's name, its options and the augmentation steps.

No file is read here (paths are checked when the data is opened, models.train.data_source); the dataset must be
registered for the spec's (task, input kind), the pair of models/task_table.py.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from models.data import AUGMENTATIONS, DATASETS
from models.errors import Problem, SpecError
from models.registry import UnknownName
from models.spec.schema import Spec
from models.spec.validation import validation_problems


def check_data_section(spec: Spec) -> None:
    """Validate dataset name, options and augmentation steps at load time (no file is read)."""
    if spec.data is None:
        return
    try:
        dataset = DATASETS.get(spec.data.dataset)
    except UnknownName as err:
        raise SpecError.one(spec.locate(("data", "dataset")), "data.dataset", str(err)) from None
    problems: list[Problem] = []
    if dataset.task != spec.task:
        problems.append(Problem(spec.locate(("data", "dataset")), "data.dataset",
                                f"dataset {spec.data.dataset} is for {dataset.task}, but the task is {spec.task}"))
    elif dataset.input != spec.input.kind:
        problems.append(Problem(spec.locate(("data", "dataset")), "data.dataset",
                                f"dataset {spec.data.dataset} gives {dataset.input} input, but the spec's input is "
                                f"{spec.input.kind}"))
    try:
        dataset.args.model_validate(spec.data.options)
    except ValidationError as err:
        problems += validation_problems(err, spec.source, ("data",), model=dataset.args)
    for i, (name, args) in enumerate(augment_steps(spec)):
        where = ("data", "augment", i)
        try:
            op = AUGMENTATIONS.get(name)
        except UnknownName as err:
            problems.append(Problem(spec.locate(where), f"data.augment[{i}]", str(err)))
            continue
        try:
            op.args.model_validate(args)
        except ValidationError as err:
            problems += validation_problems(err, spec.source, where + (name,), model=op.args)
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


