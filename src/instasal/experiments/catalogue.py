"""The experiments by their command name: what computes each, the files it writes, its figure.

The one description the ``instasal experiment`` commands read, so that each command names its
experiment once instead of importing its function, result type and figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from matplotlib.figure import Figure

from instasal.experiments.figures import context_figure, relocation_figure, uncertainty_figure
from instasal.experiments.results import (
    ContextResult,
    ExperimentResult,
    OutputFiles,
    PatchFullResult,
    RelocationResult,
    UncertaintyResult,
)
from instasal.experiments.runner import (
    run_context_experiment,
    run_patch_full_experiment,
    run_relocation_experiment,
)
from instasal.experiments.uncertainty_sweep import run_uncertainty_experiment

__all__ = ["EXPERIMENTS", "Experiment"]


@dataclass(frozen=True)
class Experiment:
    """One experiment: the function that computes its result from a dataset, a model and
    :class:`~instasal.experiments.options.ExperimentOptions`; the files
    :func:`~instasal.experiments.results.write_experiment` writes; the function that draws its
    figure from the result (``None``: it has none)."""

    run: Callable[..., ExperimentResult]
    outputs: OutputFiles
    figure: Callable[[Any], Figure] | None


EXPERIMENTS: Mapping[str, Experiment] = MappingProxyType(
    {
        "context": Experiment(run_context_experiment, ContextResult.outputs, context_figure),
        "relocation": Experiment(
            run_relocation_experiment, RelocationResult.outputs, relocation_figure
        ),
        "patch-vs-full": Experiment(run_patch_full_experiment, PatchFullResult.outputs, None),
        "uncertainty": Experiment(
            run_uncertainty_experiment, UncertaintyResult.outputs, uncertainty_figure
        ),
    }
)
"""Each experiment by the name of its ``instasal experiment`` command."""
