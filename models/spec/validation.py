"""Turn pydantic validation errors into located spec problems, with did-you-mean for unknown fields."""
from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from models.errors import Problem, format_path
from models.spec.located_yaml import LocatedYaml, Path


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (Optional, unions, lists and dicts of models)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    found: list[Any] = []
    for arg in typing.get_args(annotation):
        found.extend(_unwrap(arg))
    return found


def _fields_at(model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model that sits at `loc` under `model` (for suggestions); [] when unknown."""
    candidates: list[Any] = [model] if model is not None else []
    for part in loc:
        following: list[Any] = []
        for cls in candidates:
            if isinstance(part, str) and isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
                following.extend(_unwrap(cls.model_fields[part].annotation))
            elif isinstance(cls, type) and issubclass(cls, BaseModel):
                continue
            else:
                following.append(cls)  # list index or dict key: stay on the element type (already unwrapped)
        candidates = following
    names: list[str] = []
    for cls in candidates:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            names.extend(cls.model_fields)
    return names


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # pydantic inserts pseudo-steps such as "function-after[...]" or union member names: drop them
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "(" not in p and p not in ("str", "int", "float", "bool", "list", "dict", "tuple")))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_problems(err: ValidationError, located: LocatedYaml, raw_prefix: Path = (),
                        display_prefix: tuple[str | int, ...] | None = None,
                        model: type[BaseModel] | None = None) -> list[Problem]:
    """Map each pydantic error to a Problem at the YAML location of the offending value."""
    display_prefix = raw_prefix if display_prefix is None else display_prefix
    problems: list[Problem] = []
    for e in err.errors(include_url=False):
        loc = _clean_loc(tuple(e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            known = [f for f in _fields_at(model, loc[:-1]) if f != key]
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.5)
            message = f"unknown field '{key}'"
            if close:
                message += f" (did you mean {' or '.join(close)}?)"
            if known:
                message += f"; allowed: {', '.join(known)}"
        elif kind == "missing":
            message = "missing required field"
        elif kind == "value_error":
            message = str(e["msg"]).removeprefix("Value error, ")
        else:
            message = f"{e['msg']} (got {_short(e.get('input'))})"
        location = located.locate(raw_prefix + loc, key=kind == "extra_forbidden")
        problems.append(Problem(location, format_path(display_prefix + loc), message))
    return problems
