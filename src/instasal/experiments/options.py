"""The run options every experiment takes: one object, built once and passed unchanged.

The CLI builds it from ``--seed``, ``--context`` and ``--ignore-channel-names``; each
``run_*_experiment`` reads it, and nothing forwards these settings one by one. What an experiment
alone takes (its volume band, cap on lesions, uncertainty method) stays its own keyword argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from instasal.typing import Context, check_choice, check_seed

__all__ = ["ExperimentOptions", "check_options"]


@dataclass(frozen=True)
class ExperimentOptions:
    """How an experiment draws, which forward pass it measures, and how it checks its inputs.

    Parameters
    ----------
    seed
        Seed of every draw of the run: the lesions sampled, their new places, the SmoothGrad
        noise, MC dropout (a whole number from 0 to ``2**63 - 1``).
    context
        The forward pass measured or explained, resolved as ``explain`` resolves it
        (:func:`instasal.pipeline.context_choice.resolve_context`; ``None``: the prediction's own);
        recorded in each table and summary.
    ignore_channel_names
        Accept channel files whose names disagree with the model's channels
        (:func:`instasal.experiments.subjects.prepared_subjects`).

    Raises
    ------
    ConfigurationError
        On a seed out of range or an unknown context.

    Examples
    --------
    >>> ExperimentOptions(seed=3, context="patch").seed
    3
    >>> ExperimentOptions(context="window")
    Traceback (most recent call last):
    ...
    instasal.errors.ConfigurationError: context must be one of ('deployed', 'full', 'patch'), \
got 'window'
    """

    seed: int = 0
    context: Context | None = None
    ignore_channel_names: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.context is not None:
            check_choice("context", self.context, Context)


def check_options(options: object) -> None:
    """Refuse anything but an :class:`ExperimentOptions` where an experiment takes its options.

    Raises
    ------
    TypeError
        Naming the type given; an output folder there is a call written for the functions that
        took ``out`` (they return a result now, written by
        :func:`instasal.experiments.results.write_experiment`).
    """
    if not isinstance(options, ExperimentOptions):
        raise TypeError(
            f"options must be an ExperimentOptions, got {type(options).__name__} (the output "
            "folder is given to write_experiment)"
        )
