"""The one error type a spec can produce, with file:line:column and the dotted path of every problem."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    location: Location | None
    path: str  # dotted path into the spec, e.g. "network[7].linear.out"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = str(self.location) if self.location else "<spec>"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Exception):
    """Everything wrong with a spec; str() is one line per problem, ready to print."""

    def __init__(self, problems: list[Problem]):
        assert problems, "SpecError needs at least one problem"
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def one(cls, location: Location | None, path: str, message: str) -> "SpecError":
        return cls([Problem(location, path, message)])


def format_path(parts: tuple[str | int, ...]) -> str:
    """("network", 7, "linear", "out") -> "network[7].linear.out"."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
