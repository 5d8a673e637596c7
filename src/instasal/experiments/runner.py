"""Dataset-level runs of the paper's experiments (SPEC §4, issue 8), each returning its result.

Each function loads every subject of a BIDS-like dataset with a reference, segments it with the
model, types its lesions (:mod:`instasal.experiments.subjects`), runs one experiment in the
context asked for (``explain``'s choice by default) and returns a typed result
(:mod:`instasal.experiments.results`) whose tables record the context. Drawing
(:mod:`instasal.experiments.figures`) and writing
(:func:`instasal.experiments.results.write_experiment`) are separate steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from instasal.errors import ConfigurationError
from instasal.experiments.options import ExperimentOptions, check_options
from instasal.experiments.perilesional import context_curve, summarise_curve
from instasal.experiments.relocation import relocate
from instasal.experiments.results import (
    RELOCATION_CONDITIONS,
    ContextResult,
    PatchFullResult,
    RelocationResult,
    context_fields,
)
from instasal.experiments.subjects import (
    ExperimentSubject,
    explained_probability,
    sampled_tp_lesions,
)
from instasal.instances import Instance
from instasal.models.cards import card_of
from instasal.saliency import SmoothGradConfig, context_agreement
from instasal.typing import Context, PathLike, Progress

__all__ = [
    "run_context_experiment",
    "run_patch_full_experiment",
    "run_relocation_experiment",
]

_Seen = list[tuple[Context, str | None]]


def _tp_lesions(
    dataset: PathLike,
    model: nn.Module,
    options: ExperimentOptions,
    *,
    eligible: Callable[[Instance], bool],
    max_lesions: int | None,
    seen: _Seen,
    context: Context | None = None,
) -> Iterator[tuple[ExperimentSubject, list[Instance]]]:
    """:func:`sampled_tp_lesions` with the run's options (``context`` in place of theirs when
    given); each subject's ``(context, context_note)`` is added to ``seen`` as it is yielded."""
    for prepared, lesions in sampled_tp_lesions(
        dataset,
        model,
        eligible=eligible,
        max_lesions=max_lesions,
        seed=options.seed,
        context=context or options.context,
        ignore_channel_names=options.ignore_channel_names,
    ):
        seen.append((prepared.context, prepared.context_note))
        yield prepared, lesions


def run_context_experiment(
    dataset: PathLike,
    model: nn.Module,
    options: ExperimentOptions = ExperimentOptions(),
    *,
    volume_band_mm3: tuple[float, float] = (90.0, 120.0),
    max_distance_mm: float = 34.0,
    max_lesions: int | None = None,
    progress: Progress | None = None,
) -> ContextResult:
    """Perilesional context over the TP lesions of a volume band (authors: 90–120 mm³ at 1 mm).

    With ``max_lesions``, at most that many lesions in all, drawn at random with the options'
    seed within each subject, the cap spread over the subjects (:func:`sampled_tp_lesions`). The
    probability is that of the options' context's forward pass (:func:`explained_probability`;
    ``None``: as ``explain`` chooses, the prediction's own).

    Raises
    ------
    ConfigurationError
        Where no TP lesion of any subject lies in the volume band.
    """
    check_options(options)
    low, high = volume_band_mm3
    frames: list[pd.DataFrame] = []
    seen: _Seen = []
    for prepared, lesions in _tp_lesions(
        dataset,
        model,
        options,
        eligible=lambda r: low <= r.volume_mm3 <= high,
        max_lesions=max_lesions,
        seen=seen,
    ):
        if not lesions:
            continue
        predict = functools.partial(explained_probability, prepared, model)
        spacing = float(min(prepared.subject.spacing))
        result = context_curve(
            predict,
            prepared.x,
            prepared.instances,
            [r.id for r in lesions],
            threshold=card_of(model).threshold,
            max_iterations=max(1, round(max_distance_mm / spacing)),
            progress=progress,
        )
        frames.append(
            result.records.assign(subject=prepared.files.subject_id, context=prepared.context)
        )
    if not frames:
        raise ConfigurationError(
            f"{dataset}: no TP lesion with volume in {volume_band_mm3} mm³; widen volume_band_mm3"
        )
    records = pd.concat(frames, ignore_index=True)
    curve, plateau = summarise_curve(records)
    return ContextResult(records, curve, volume_band_mm3, plateau, **context_fields(seen))


def run_relocation_experiment(
    dataset: PathLike,
    model: nn.Module,
    options: ExperimentOptions = ExperimentOptions(),
    *,
    max_lesions: int = 40,
    min_volume_mm3: float = 20.0,
    shell_mm: float = 4.0,
    progress: Progress | None = None,
) -> RelocationResult:
    """Relocate TP lesions to WM, outside the brain, and outside with their shell (SPEC §4).

    At most ``max_lesions`` lesions in all, drawn at random with the options' seed within each
    subject, the cap spread over the subjects (:func:`sampled_tp_lesions`); each new place is
    drawn with the seed plus the lesion id. The probability is that of the options' context's
    forward pass (:func:`explained_probability`; ``None``: as ``explain`` chooses, the
    prediction's own); the original probability is the prediction's.

    Raises
    ------
    ConfigurationError
        Where no subject has a TP lesion of at least ``min_volume_mm3``.
    """
    check_options(options)
    rows: list[dict[str, Any]] = []
    seen: _Seen = []
    for prepared, lesions in _tp_lesions(
        dataset,
        model,
        options,
        eligible=lambda r: r.volume_mm3 >= min_volume_mm3,
        max_lesions=max_lesions,
        seen=seen,
    ):
        predict = functools.partial(explained_probability, prepared, model)
        for record in lesions:
            domain = prepared.instances.mask(record.id)
            for condition in RELOCATION_CONDITIONS:
                outcome = relocate(
                    predict,
                    prepared.x,
                    domain,
                    condition,
                    brain_mask=prepared.brain_mask,
                    wm_mask=prepared.wm_mask,
                    lesion_mask=prepared.reference | (prepared.instances.labels > 0),
                    threshold=card_of(model).threshold,
                    spacing=prepared.subject.spacing,
                    shell_mm=shell_mm,
                    seed=options.seed + record.id,
                )
                rows.append(
                    {
                        "subject": prepared.files.subject_id,
                        "lesion_id": record.id,
                        "volume_mm3": record.volume_mm3,
                        "original_mean_probability": float(prepared.probability[domain].mean()),
                        "condition": condition,
                        "context": prepared.context,
                        "placed": outcome is not None,
                        "mean_probability": outcome.mean_probability if outcome else np.nan,
                        "detected": outcome.detected if outcome else np.nan,
                    }
                )
                if progress is not None:
                    progress("relocation", len(rows), max_lesions * len(RELOCATION_CONDITIONS))
    if not rows:
        raise ConfigurationError(f"{dataset}: no TP lesion of at least {min_volume_mm3} mm³")
    return RelocationResult(pd.DataFrame(rows), shell_mm, **context_fields(seen))


def run_patch_full_experiment(
    dataset: PathLike,
    model: nn.Module,
    options: ExperimentOptions = ExperimentOptions(),
    *,
    max_lesions: int = 20,
    n_samples: int = 2,
    progress: Progress | None = None,
) -> PatchFullResult:
    """Agreement of a context's SmoothGrad maps with the full context's over TP lesions (SPEC §2).

    The options' context is the one compared with ``full``: ``"patch"`` (``None``, the authors'
    two contexts) or ``"deployed"`` (:func:`instasal.saliency.context_agreement`). At most
    ``max_lesions`` lesions in all, drawn at random with the options' seed within each subject,
    the cap spread over the subjects (:func:`sampled_tp_lesions`); the seed also seeds the
    SmoothGrad noise.

    Raises
    ------
    ConfigurationError
        On the context ``"full"`` (full is what the context is compared with), or where no
        subject has a TP lesion.
    """
    check_options(options)
    if options.context == "full":
        raise ConfigurationError(
            "context is the one compared with full: patch or deployed, got 'full'"
        )
    config = SmoothGradConfig(n_samples=n_samples, seed=options.seed)
    rows: list[dict[str, Any]] = []
    seen: _Seen = []
    for prepared, lesions in _tp_lesions(
        dataset,
        model,
        options,
        eligible=lambda _: True,
        max_lesions=max_lesions,
        seen=seen,
        context=options.context or "patch",
    ):
        for record in lesions:
            agreement = context_agreement(
                prepared.network,
                prepared.x,
                prepared.instances.mask(record.id),
                config,
                prepared.explained(model),
            )
            rows.append(
                {
                    "subject": prepared.files.subject_id,
                    "lesion_id": record.id,
                    "volume_mm3": record.volume_mm3,
                    "context": prepared.context,
                    **agreement,
                }
            )
            if progress is not None:
                progress(f"{prepared.context} vs full", len(rows), max_lesions)
    if not rows:
        raise ConfigurationError(f"{dataset}: no TP lesion to compare the contexts on")
    return PatchFullResult(pd.DataFrame(rows), **context_fields(seen))
