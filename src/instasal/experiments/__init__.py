"""The paper's experiments: perilesional context, synthetic lesion relocation (SPEC §4), and
missed lesions found from uncertainty (issue 8, open question Q3)."""

from instasal.experiments.context import ContextCurve, context_curve, plateau_distance
from instasal.experiments.missed import run_uncertainty_experiment
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
    "run_uncertainty_experiment",
]
