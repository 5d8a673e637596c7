"""Progress: plain lines with elapsed time and ETA outside a terminal, one bar per stage in one."""

from __future__ import annotations

import io
import re

from rich.console import Console

from instasal.progress import pipeline_progress


def test_plain_lines_outside_a_terminal_with_eta_and_rate_limit() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    now = [100.0]
    with pipeline_progress(console, interval=30, clock=lambda: now[0]) as progress:
        for done in range(1, 11):
            now[0] += 10
            progress(f"saliency of lesion {done}", done, 10)
        now[0] += 5
        progress("writing of maps", 1, 2)
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
        progress("cohort", 1, 3)
    assert buffer.getvalue().strip() == "cohort: 1/3 (33 %), elapsed 1h02m05s, eta 2h04m10s"


def test_terminal_bars_show_each_stage_elapsed_since_its_first_unit_began() -> None:
    """One bar per stage (the part before " of "); its clock runs from the previous update of any
    stage, so the first subject's time counts and later subjects add to it."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    now = [100.0]
    with pipeline_progress(console, clock=lambda: now[0]) as progress:
        for done in range(1, 4):
            now[0] += 10
            progress(f"phantom of sub-00{done}", done, 3)  # as write_cohort calls it
        now[0] += 5
        progress("writing of maps", 1, 2)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    bars = [line.split() for line in plain.split("\r")[-1].splitlines()]
    assert [bar[:3] + bar[-4:] for bar in bars] == [
        ["phantom", "of", "sub-003", "100.0%", "0:00:30", "eta", "0:00:00"],
        ["writing", "of", "maps", "50.0%", "0:00:05", "eta", "-:--:--"],
    ]
