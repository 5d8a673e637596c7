"""The paper's experiments: perilesional context, synthetic lesion relocation (SPEC §4), and
missed lesions found from uncertainty (issue 8, open question Q3)."""

from instasal.experiments.perilesional import ContextCurve, context_curve, plateau_distance
from instasal.experiments.relocation import (
    Placement,
    RelocationOutcome,
    find_placement,
    relocate,
)
from instasal.experiments.uncertainty_sweep import run_uncertainty_experiment

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
