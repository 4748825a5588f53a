"""The error root of specserve, and the one error type a spec can produce (file:line:column and dotted path).

Every error a user can cause (a bad spec, data file, run directory, checkpoint, export, stored model or serving
config) derives from SpecserveError, so the CLI prints it as one line and exits 2 (1 for a spec), while anything
else is a bug and keeps its traceback. Torch-free: the serving side imports this module too.
"""
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


class SpecserveError(Exception):
    """Base of every error caused by input (specs, data, runs, stored models, configs): its message is for the user,
    one line that says what was wrong and where."""


class SpecError(SpecserveError):
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
