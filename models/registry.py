"""One Registry class for every name → builder table (layers, datasets, augmentations, ...).

A duplicate name is an error naming both places; an unknown name lists the closest known ones.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar
from models.errors import SpecserveError

T = TypeVar("T")


class UnknownName(SpecserveError, LookupError):
    """Raised for a name no entry was registered under; the message suggests close names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        super().__init__(f"unknown {kind} '{name}'{hint}; known: {', '.join(sorted(known))}")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T  # a typed description (LayerType, DatasetType, ...): what the table needs is a field, not a dict key
    origin: str


def _origin(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", repr(obj))
    return f"{module}.{qualname}"


F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Op(Generic[F]):
    """A registered operation that takes options (augmentations, initializers): its options model (a pydantic
    class) and the function that applies it."""

    name: str
    args: type
    apply: F


class Registry(Generic[T]):
    """Maps names to objects (builders, classes). `kind` names the table in messages ("layer", "dataset")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, origin: Any = None) -> None:
        """Register `obj` under `name`; `origin` (the function or class that defines it) names it in messages."""
        where = _origin(origin if origin is not None else obj)
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice: by {self._entries[name].origin} and by {where}")
        self._entries[name] = Entry(name, obj, where)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, list(self._entries)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
