"""Turn pydantic validation errors into located spec problems, with did-you-mean for unknown fields."""
from __future__ import annotations

import difflib
import typing
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from models.errors import Location, Problem, format_path
from models.spec.located_yaml import Path


class Locates(Protocol):
    def locate(self, path: Path, *, key: bool = False) -> Location: ...


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
            elif isinstance(part, str) and isinstance(cls, type) and issubclass(cls, BaseModel):
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


def validation_problems(err: ValidationError, located: Locates, raw_prefix: Path = (),
                        display_prefix: tuple[str | int, ...] | None = None,
                        model: type[BaseModel] | None = None) -> list[Problem]:
    """Map each pydantic error to a Problem at the YAML location of the offending value."""
    display_prefix = raw_prefix if display_prefix is None else display_prefix
    problems: list[Problem] = []
    errors = err.errors(include_url=False)
    missing = {_clean_loc(tuple(e["loc"])) for e in errors if e["type"] == "missing"}
    typos: set[tuple[str | int, ...]] = set()  # a missing field that an unknown key is a typo of: one problem, not two
    for e in errors:
        loc = _clean_loc(tuple(e["loc"]))
        if e["type"] == "extra_forbidden" and loc:
            known = [f for f in _fields_at(model, loc[:-1]) if f != loc[-1]]
            for close in difflib.get_close_matches(str(loc[-1]), known, n=2, cutoff=0.5):
                if loc[:-1] + (close,) in missing:
                    typos.add(loc[:-1] + (close,))
    for e in errors:
        loc = _clean_loc(tuple(e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            known = [f for f in _fields_at(model, loc[:-1]) if f != key]
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.5)
            message = f"unknown field '{key}'"
            if close:
                required = ": it is required" if any(loc[:-1] + (c,) in typos for c in close) else ""
                message += f" (did you mean {' or '.join(close)}?{required})"
            if known:
                message += f"; allowed: {', '.join(known)}"
        elif kind == "missing":
            if loc in typos:
                continue
            message = "missing required field"
        elif kind == "value_error":
            message = str(e["msg"]).removeprefix("Value error, ")
        else:
            message = f"{e['msg']} (got {_short(e.get('input'))})"
        location = located.locate(raw_prefix + loc, key=kind == "extra_forbidden")
        problems.append(Problem(location, format_path(display_prefix + loc), message))
    return problems
