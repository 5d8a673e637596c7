"""What one explain run produced: the record the pipeline returns and the report reads.

Kept apart from :mod:`instasal.pipeline.explain` so that the report can name it without
importing the pipeline that calls the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from instasal.instances import Instances
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.settings import ExplainSettings

__all__ = ["ExplainResult"]


@dataclass(frozen=True)
class ExplainResult:
    """What :func:`~instasal.pipeline.explain_subject` produced."""

    out: Path
    layout: RunLayout
    table: pd.DataFrame
    instances: Instances
    settings: ExplainSettings
    timings: dict[str, float] = field(default_factory=dict)
    reused_lesions: int = 0
    notes: tuple[str, ...] = ()
    """One-line notes on what the run could not do or found missing (also in the provenance)."""

    @property
    def report(self) -> Path:
        return self.layout.report
