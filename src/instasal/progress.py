"""Progress for pipeline callbacks: what is being done and the time left.

In a terminal, rich bars (one per stage, with ETA). Elsewhere (a log file, ``nohup``, a cluster
job) rich would draw nothing until the end, so plain lines are printed instead: one when a stage
starts, then at most one per ``interval`` seconds, and one when it completes. The Python API,
where no terminal or notebook shows bars, writes the same lines to the ``instasal`` logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import rich.progress
from rich.console import Console
from rich.progress import (
    BarColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from instasal.typing import Progress

__all__ = ["logged_progress", "pipeline_progress", "silent_progress"]

LOG_INTERVAL_S = 30.0
"""Seconds between two plain progress lines of one stage (outside a terminal)."""


def silent_progress(stage: str, done: float, total: float) -> None:
    """A :class:`~instasal.typing.Progress` callback that shows nothing."""


@contextmanager
def pipeline_progress(
    console: Console,
    *,
    interval: float = LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    """A :class:`~instasal.typing.Progress` callback showing each stage with its ETA.

    Stages are grouped by the words before `` of `` (``"saliency of lesion(s) 3, 4"`` updates the
    ``saliency`` bar, whose description shows the lesions being explained). A stage's elapsed time
    runs from the previous update of any stage, since its first call only comes after its first
    unit of work.
    """
    if not console.is_terminal:
        yield _LineLog(_plain_printer(console), interval, clock).update
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with rich.progress.Progress(*columns, console=console, transient=False, get_time=clock) as bars:
        tasks: dict[str, TaskID] = {}
        last_event = [clock()]

        def update(stage: str, done: float, total: float, /) -> None:
            family = stage.split(" of ")[0]
            if family not in tasks:
                tasks[family] = bars.add_task(stage, total=total)
                bars.tasks[-1].start_time = last_event[0]
            last_event[0] = clock()
            bars.update(tasks[family], description=stage, completed=done, total=total)

        yield update


@dataclass
class _Stage:
    started: float
    last_line: float


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _plain_printer(console: Console) -> Callable[[str], None]:
    def write(line: str) -> None:
        console.print(line, highlight=False, markup=False)

    return write


def logged_progress(
    logger: logging.Logger,
    *,
    interval: float = LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A :class:`~instasal.typing.Progress` callback writing the plain lines of a console that
    is not a terminal (each stage's start, at most one line per ``interval`` seconds with the
    time left, its end) to ``logger`` at INFO: a script shows them by configuring logging
    (``logging.basicConfig(level=logging.INFO)``), and is silent otherwise."""
    return _LineLog(logger.info, interval, clock).update


class _LineLog:
    """Plain progress lines, each handed to ``write``.

    A stage is taken to have started at the previous update of any stage (or when the log was
    made), since its first callback only comes after its first unit of work.
    """

    def __init__(
        self, write: Callable[[str], None], interval: float, clock: Callable[[], float]
    ) -> None:
        self.write = write
        self.interval = interval
        self.clock = clock
        self.stages: dict[str, _Stage] = {}
        self.last_event = clock()

    def update(self, stage: str, done: float, total: float, /) -> None:
        family = stage.split(" of ")[0]
        now = self.clock()
        state = self.stages.get(family)
        first = state is None
        if state is None:
            state = self.stages[family] = _Stage(started=self.last_event, last_line=now)
        self.last_event = now
        finished = total > 0 and done >= total
        if not (first or finished or now - state.last_line >= self.interval):
            return
        state.last_line = now
        elapsed = now - state.started
        line = f"{stage}: {done:g}/{total:g}"
        if total > 0:
            line += f" ({100 * done / total:.0f} %)"
        line += f", elapsed {_duration(elapsed)}"
        if 0 < done < total:
            line += f", eta {_duration(elapsed / done * (total - done))}"
        self.write(line)
