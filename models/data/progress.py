"""Progress of the slow steps of opening a file dataset (listing files, building the decode cache): a rich bar on
stderr with the count and the rate, only where someone watches (a terminal, the main rank) and only when asked for.

    with progress("listing files") as advance:       # no total: a counter
        for path in ...: advance(1)
    with progress("decoding into the cache", total=n) as advance: ...

`quiet()` (a context) turns the bars off for what runs inside it: models.train.data_source does so for
`specserve train --quiet`.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

_ENABLED: ContextVar[bool] = ContextVar("specserve_data_progress", default=True)


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No progress bars inside (when `on`)."""
    token = _ENABLED.set(_ENABLED.get() and not on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def shown() -> bool:
    """Bars show on a terminal, on the main rank of a torchrun job, unless quietened."""
    return _ENABLED.get() and sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"


def _columns(total: int | None):
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:  # task.speed: rich's moving average over the last updates
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {task.fields['unit']}/s" if speed else "", style="progress.data.speed")

    count = MofNCompleteColumn() if total else TextColumn("{task.completed:,.0f} {task.fields[unit]}")
    bar = [BarColumn()] if total else []
    return [TextColumn("[bold]{task.description}"), *bar, count, Rate(), TimeElapsedColumn()]


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "files", *, enabled: bool | None = None,
             console=None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; draws a bar (total known) or a counter while the block runs, when `shown()`."""
    if not (shown() if enabled is None else enabled):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(*_columns(total), console=console or Console(stderr=True), transient=False)
    task = bar.add_task(description, total=total, unit=unit)
    with bar:
        yield lambda n: bar.advance(task, n)
