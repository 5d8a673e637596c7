"""The paper's experiments: perilesional context, synthetic lesion relocation (SPEC §4), and
missed lesions found from uncertainty (issue 8, open question Q3).

Each ``run_*_experiment`` takes one :class:`ExperimentOptions` and returns a typed result; its
figure is drawn from the result (``*_figure``) and :func:`write_experiment` writes both.
:data:`EXPERIMENTS` names each experiment's function, files and figure by its command.
"""

from instasal.experiments.catalogue import EXPERIMENTS, Experiment
from instasal.experiments.figures import context_figure, relocation_figure, uncertainty_figure
from instasal.experiments.options import ExperimentOptions
from instasal.experiments.perilesional import ContextCurve, context_curve, plateau_distance
from instasal.experiments.relocation import (
    Placement,
    RelocationOutcome,
    find_placement,
    relocate,
)
from instasal.experiments.results import (
    ContextResult,
    PatchFullResult,
    RelocationResult,
    UncertaintyResult,
    write_experiment,
)
from instasal.experiments.runner import (
    run_context_experiment,
    run_patch_full_experiment,
    run_relocation_experiment,
)
from instasal.experiments.uncertainty_sweep import run_uncertainty_experiment

__all__ = [
    "EXPERIMENTS",
    "ContextCurve",
    "ContextResult",
    "Experiment",
    "ExperimentOptions",
    "PatchFullResult",
    "Placement",
    "RelocationOutcome",
    "RelocationResult",
    "UncertaintyResult",
    "context_curve",
    "context_figure",
    "find_placement",
    "plateau_distance",
    "relocate",
    "relocation_figure",
    "run_context_experiment",
    "run_patch_full_experiment",
    "run_relocation_experiment",
    "run_uncertainty_experiment",
    "uncertainty_figure",
    "write_experiment",
]
