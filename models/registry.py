"""One Registry class for every name → builder table (layers, datasets, augmentations, ...).

A duplicate name is an error naming both places; an unknown name lists the closest known ones.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(LookupError):
    """Raised for a name no entry was registered under; the message suggests close names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        super().__init__(f"unknown {kind} '{name}'{hint}; known: {', '.join(sorted(known))}")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    origin: str
    meta: dict[str, Any] = field(default_factory=dict)


def _origin(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", repr(obj))
    return f"{module}.{qualname}"


class Registry(Generic[T]):
    """Maps names to objects (builders, classes). `kind` names the table in messages ("layer", "dataset")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name or getattr(obj, "__name__"), obj, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if name in self._entries:
            first = self._entries[name].origin
            raise ValueError(f"{self.kind} '{name}' registered twice: by {first} and by {_origin(obj)}")
        self._entries[name] = Entry(name, obj, _origin(obj), meta)

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
