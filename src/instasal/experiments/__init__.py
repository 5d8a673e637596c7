"""The paper's experiments: perilesional context and synthetic lesion relocation (SPEC §4)."""

from instasal.experiments.context import ContextCurve, context_curve, plateau_distance
from instasal.experiments.relocation import (
    Placement,
    RelocationOutcome,
    find_placement,
    relocate,
)

__all__ = [
    "ContextCurve",
    "Placement",
    "RelocationOutcome",
    "context_curve",
    "find_placement",
    "plateau_distance",
    "relocate",
]
