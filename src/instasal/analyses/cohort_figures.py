"""Figures of the cohort analyses (SPEC §4): one matplotlib figure per analysis, Agg backend.

Colours follow the subject report (:data:`instasal.report.subject_figures.TYPE_COLOURS`). Saliency
values are drawn on their own quantitative scale, never rescaled. The error-modes figure switches to
a log₁₀ axis by a fixed rule, stated on the axis: every value positive and the largest at least
:data:`LOG_SPAN` times the smallest; the violins are then density estimates of log₁₀ values.
"""

from __future__ import annotations

from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from instasal.analyses._table import finite_values, select_types
from instasal.analyses.detection import ErrorDetection
from instasal.analyses.error_modes import ErrorModes
from instasal.analyses.reliance import ModalityReliance, SignPattern
from instasal.analyses.size import AggregationVsSize, peak_and_volume
from instasal.analyses.statistics import ALPHA
from instasal.report.subject_figures import TYPE_COLOURS
from instasal.typing import FloatArray

__all__ = [
    "LOG_SPAN",
    "aggregation_figure",
    "error_modes_figure",
    "error_modes_log_scale",
    "error_modes_samples",
    "modality_figure",
    "roc_figure",
    "sign_pattern_figure",
    "uses_log_scale",
]

#: Ratio of largest to smallest value from which the error-modes axis is log₁₀ (two decades).
LOG_SPAN = 100.0
_CHANNEL_COLOURS = ("#c2185b", "#1565c0")
_BINS = 8


def uses_log_scale(values: FloatArray) -> bool:
    """Whether the error-modes axis is log₁₀: all values > 0 and max / min ≥ :data:`LOG_SPAN`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.any(values <= 0):
        return False
    return bool(values.max() / values.min() >= LOG_SPAN)


def _jitter(n: int, seed: int) -> FloatArray:
    return np.random.default_rng(seed).uniform(-0.12, 0.12, n)


def _distribution(axis: Axes, samples: list[FloatArray], colours: list[str]) -> None:
    """Violins (where a density can be estimated), boxes and jittered points at x = 1, 2, …"""
    positions = np.arange(1, len(samples) + 1)
    drawable = [i for i, s in enumerate(samples) if s.size >= 2 and np.ptp(s) > 0]
    if drawable:
        parts = axis.violinplot(
            [samples[i] for i in drawable],
            positions=positions[drawable],
            widths=0.8,
            showextrema=False,
        )
        # typed as one Collection, but "bodies" is a list of one PolyCollection per violin
        bodies = cast("list[PolyCollection]", parts["bodies"])
        for body, i in zip(bodies, drawable, strict=True):
            body.set_facecolor(colours[i])
            body.set_edgecolor("none")
            body.set_alpha(0.35)
    filled = [i for i, s in enumerate(samples) if s.size]
    if filled:
        axis.boxplot(
            [samples[i] for i in filled],
            positions=positions[filled],
            widths=0.22,
            showfliers=False,
            medianprops={"color": "k", "lw": 1.4},
        )
    for i, sample in enumerate(samples):
        axis.scatter(
            positions[i] + _jitter(sample.size, i),
            sample,
            s=6,
            color=colours[i],
            alpha=0.5 if sample.size < 500 else 0.15,
            edgecolors="none",
        )


def error_modes_samples(table: pd.DataFrame, result: ErrorModes) -> list[FloatArray]:
    """The finite values of ``result.column`` per domain type, in ``result.groups`` order."""
    return [finite_values(select_types(table, (g.type,)), result.column)[0] for g in result.groups]


def error_modes_log_scale(table: pd.DataFrame, result: ErrorModes) -> bool:
    """Whether :func:`error_modes_figure` draws a log₁₀ axis (see :func:`uses_log_scale`)."""
    samples = error_modes_samples(table, result)
    return uses_log_scale(np.concatenate(samples)) if samples else False


def error_modes_figure(table: pd.DataFrame, result: ErrorModes) -> Figure:
    """Violin + box of a saliency column per domain type, like the paper's Fig. 11."""
    kinds = [group.type for group in result.groups]
    samples = error_modes_samples(table, result)
    log = error_modes_log_scale(table, result)
    shown = [np.log10(s) for s in samples] if log else samples
    figure, axis = plt.subplots(figsize=(5.2, 3.8))
    _distribution(axis, shown, [TYPE_COLOURS.get(k, "k") for k in kinds])
    axis.set_xticks(
        np.arange(1, len(kinds) + 1),
        [f"{k}\nn={s.size}" for k, s in zip(kinds, samples, strict=True)],
    )
    axis.set_xlim(0.4, len(kinds) + 0.6)
    axis.set_ylabel(f"log₁₀ {result.column}" if log else result.column)
    computable = [t for t in result.tests if t.computable]
    below = sum(t.p_holm < ALPHA for t in computable)
    axis.set_title(
        f"{result.column} per domain type\nHolm-adjusted p < {ALPHA:g} in {below} of "
        f"{len(computable)} computable pairs",
        fontsize=10,
    )
    if not log:
        axis.axhline(0, color="0.6", lw=0.6)
    return figure


def modality_figure(table: pd.DataFrame, result: ModalityReliance) -> Figure:
    """Paired peaks of the two channels per lesion, and the reliance ratio of the first."""
    first, second = result.channels
    rows = select_types(table, result.types)
    peaks = rows[[f"peak_{first}", f"peak_{second}"]].apply(pd.to_numeric, errors="coerce")
    values = peaks.to_numpy(np.float64)
    values = values[np.all(np.isfinite(values), axis=1)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    alpha = float(np.clip(20.0 / max(len(values), 1), 0.03, 0.5))
    for a, b in values:
        left.plot([1, 2], [a, b], color="0.4", lw=0.6, alpha=alpha)
    _distribution(left, [values[:, 0], values[:, 1]], list(_CHANNEL_COLOURS))
    left.set_xticks([1, 2], [f"peak {first}", f"peak {second}"])
    left.set_xlim(0.4, 2.6)
    left.axhline(0, color="0.6", lw=0.6)
    left.set_ylabel("peak saliency (logit / intensity unit)")
    left.set_title(
        f"{'/'.join(result.types)}, n={len(values)}: {first} larger in "
        f"{result.fraction_first_dominates:.0%}",
        fontsize=10,
    )
    reliance, _ = finite_values(rows, f"reliance_{first}")
    right.hist(reliance, bins=30, range=(-1, 1), color=_CHANNEL_COLOURS[0], alpha=0.8)
    right.axvline(0.5, color="0.3", ls="--", lw=0.8, label="equal peaks")
    if reliance.size:
        right.axvline(float(np.median(reliance)), color="k", lw=1.2, label="median")
    right.set_xlabel(f"reliance_{first} = peak_{first} / Σ |peak|")
    right.set_ylabel("lesions")
    right.legend(fontsize=8, frameon=False)
    right.set_title(f"{first} share of peak saliency", fontsize=10)
    figure.tight_layout()
    return figure


def sign_pattern_figure(table: pd.DataFrame, result: SignPattern) -> Figure:
    """Mean saliency inside Ω and in the 1–3 mm ring, per lesion, against zero."""
    rows = select_types(table, result.types)
    inside, _ = finite_values(rows, f"inside_mean_{result.channel}")
    ring, _ = finite_values(rows, f"ring_mean_{result.channel}")
    figure, axis = plt.subplots(figsize=(4.6, 3.8))
    _distribution(axis, [inside, ring], ["#b2182b", "#2166ac"])
    axis.axhline(0, color="0.3", lw=0.8)
    axis.set_xticks(
        [1, 2],
        [
            f"inside Ω\n{result.fraction_inside_positive:.0%} > 0",
            f"1–3 mm ring\n{result.fraction_ring_negative:.0%} < 0",
        ],
    )
    axis.set_xlim(0.4, 2.6)
    axis.set_ylabel(f"mean {result.channel} saliency (logit / intensity unit)")
    axis.set_title(f"Sign pattern, {'/'.join(result.types)} (n={result.inside.n})", fontsize=10)
    return figure


def _binned_medians(volume: FloatArray, peak: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Medians of volume and peak in up to :data:`_BINS` volume-quantile bins of ≥ 3 lesions."""
    if volume.size < 3 * 2:
        return np.array([]), np.array([])
    edges = np.unique(np.quantile(volume, np.linspace(0, 1, _BINS + 1)))
    which = np.clip(np.searchsorted(edges, volume, side="right") - 1, 0, len(edges) - 2)
    centres, medians = [], []
    for b in range(len(edges) - 1):
        members = which == b
        if members.sum() >= 3:
            centres.append(float(np.median(volume[members])))
            medians.append(float(np.median(peak[members])))
    return np.asarray(centres), np.asarray(medians)


def aggregation_figure(
    table_max: pd.DataFrame, table_mean: pd.DataFrame, result: AggregationVsSize
) -> Figure:
    """Peak saliency against volume, max and mean aggregation side by side, with binned medians."""
    figure, axes = plt.subplots(1, 2, figsize=(8.8, 3.6))
    for axis, name, table, correlation in zip(
        axes,
        ("max", "mean"),
        (table_max, table_mean),
        (result.max, result.mean),
        strict=True,
    ):
        volume, peak = peak_and_volume(table, result.channel, result.types)
        axis.scatter(volume, peak, s=8, color="#1b9e77", alpha=0.5, edgecolors="none")
        centres, medians = _binned_medians(volume, peak)
        if centres.size:
            axis.plot(centres, medians, color="k", lw=1.4, marker="o", ms=3, label="binned median")
            axis.legend(fontsize=8, frameon=False)
        if volume.size:
            axis.set_xscale("log")
        axis.set_xlabel("lesion volume (mm³)")
        axis.set_ylabel(f"peak_{result.channel}")
        rho = "n/a" if not correlation.computable else f"{correlation.rho:.2f}"
        axis.set_title(f"{name} aggregation: Spearman ρ = {rho} (n={correlation.n})", fontsize=10)
    figure.tight_layout()
    return figure


def roc_figure(result: ErrorDetection) -> Figure:
    """ROC curve of a lesion-table feature separating two domain types, with its AUC."""
    figure, axis = plt.subplots(figsize=(4.0, 3.8))
    axis.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="chance")
    if result.computable:
        axis.plot(
            result.false_positive_rate,
            result.true_positive_rate,
            color=TYPE_COLOURS.get(result.positive, "k"),
            lw=1.6,
            label=f"AUC = {result.auc:.3f}",
        )
    else:
        axis.text(0.5, 0.5, f"not computable:\n{result.reason}", ha="center", fontsize=8)
    axis.set_xlabel(f"fraction of {result.negative} kept (n={result.n_negative})")
    axis.set_ylabel(f"fraction of {result.positive} kept (n={result.n_positive})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    axis.legend(fontsize=8, frameon=False, loc="lower right")
    axis.set_title(f"{result.feature}: {result.positive} vs {result.negative}", fontsize=10)
    return figure
