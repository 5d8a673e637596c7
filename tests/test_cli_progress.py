"""Progress outside a terminal: plain lines with elapsed time and ETA, rate-limited."""

from __future__ import annotations

import io

from rich.console import Console

from instasal.cli.progress import pipeline_progress


def test_plain_lines_outside_a_terminal_with_eta_and_rate_limit() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    now = [100.0]
    with pipeline_progress(console, interval=30, clock=lambda: now[0]) as progress:
        for done in range(1, 11):
            now[0] += 10
            progress(f"saliency of lesion {done}", done, 10)  # type: ignore[operator]
        now[0] += 5
        progress("writing of maps", 1, 2)  # type: ignore[operator]
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "saliency of lesion 1: 1/10 (10 %), elapsed 0m10s, eta 1m30s",  # the stage's first call
        "saliency of lesion 4: 4/10 (40 %), elapsed 0m40s, eta 1m00s",  # then every 30 s
        "saliency of lesion 7: 7/10 (70 %), elapsed 1m10s, eta 0m30s",
        "saliency of lesion 10: 10/10 (100 %), elapsed 1m40s",  # and on completion
        "writing of maps: 1/2 (50 %), elapsed 0m05s, eta 0m05s",  # a new stage starts a line
    ]


def test_hours_are_shown_for_long_stages() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    now = [0.0]
    with pipeline_progress(console, clock=lambda: now[0]) as progress:
        now[0] = 3725.0
        progress("cohort", 1, 3)  # type: ignore[operator]
    assert buffer.getvalue().strip() == "cohort: 1/3 (33 %), elapsed 1h02m05s, eta 2h04m10s"
