"""Rich progress display for pipeline callbacks: what is being done and the time left."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["pipeline_progress"]


@contextmanager
def pipeline_progress(console: Console) -> Iterator[object]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage with its ETA.

    Stages are grouped by the words before `` of `` (``"saliency of lesion(s) 3, 4"`` updates the
    ``saliency`` bar, whose description shows the lesions being explained).
    """
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: float, total: float) -> None:
            family = stage.split(" of ")[0]
            if family not in tasks:
                tasks[family] = bars.add_task(stage, total=total)
            bars.update(tasks[family], description=stage, completed=done, total=total)

        yield update
