"""The experiments' figures, each drawn from a result alone (:mod:`instasal.experiments.results`).

Drawing is its own step: a result computed once can be drawn again, or written without its
figure. :func:`instasal.experiments.results.write_experiment` writes the figure as a PNG.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from instasal.experiments.results import (
    RELOCATION_CONDITIONS,
    ContextResult,
    RelocationResult,
    UncertaintyResult,
    explained_domains,
)

__all__ = ["context_figure", "relocation_figure", "uncertainty_figure"]


def context_figure(result: ContextResult) -> Figure:
    """Mean probability (± sd) and detection rate against the context kept, with the plateau."""
    curve = result.curve
    figure, axis = plt.subplots(figsize=(5, 3.4))
    axis.plot(curve["distance_mm"], curve["mean_probability"], color="#1b9e77", label="mean")
    axis.fill_between(
        curve["distance_mm"],
        curve["mean_probability"] - curve["sd_probability"].fillna(0),
        curve["mean_probability"] + curve["sd_probability"].fillna(0),
        color="#1b9e77",
        alpha=0.2,
        label="± sd",
    )
    axis.plot(
        curve["distance_mm"],
        curve["detection_rate"],
        color="#7570b3",
        ls="--",
        label="detection rate",
    )
    if result.plateau_mm is not None:
        plateau = result.plateau_mm
        axis.axvline(plateau, color="0.4", lw=0.8, ls=":", label=f"plateau {plateau:g} mm")
    axis.set_xlabel("context kept around the lesion (mm)")
    axis.set_ylabel("mean probability in Ω")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, frameon=False)
    return figure


def relocation_figure(result: RelocationResult) -> Figure:
    """Detection rate per relocation condition, with the lesions placed in each."""
    rates = [rate or 0.0 for rate in result.detection_rate().values()]
    counts = list(result.n_placed().values())
    figure, axis = plt.subplots(figsize=(4.6, 3.2))
    positions = range(len(RELOCATION_CONDITIONS))
    axis.bar(positions, rates, color=["#1b9e77", "#d95f02", "#7570b3"])
    axis.set_xticks(positions, ["healthy WM", "outside", "outside + shell"])
    axis.set_ylabel("detection rate")
    axis.set_ylim(0, 1)
    for i, (rate, n) in enumerate(zip(rates, counts, strict=True)):
        axis.text(i, rate + 0.02, f"{rate:.0%} (n={n})", ha="center", fontsize=8)
    return figure


def uncertainty_figure(result: UncertaintyResult) -> Figure:
    """Missed lesions found against false alarms per level (left); the peak saliency of the
    explained found FNs and false alarms, with the ROC AUC (right)."""
    curve, peak = result.curve, result.peak
    domains = explained_domains(result.candidates, peak)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(curve["false_alarms_per_subject"], curve["fraction_FN_found"], "o-", color="#1b9e77")
    for _, row in curve.iterrows():
        left.annotate(
            f"{row['level']:g}",
            (row["false_alarms_per_subject"], row["fraction_FN_found"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    left.set_xlabel("false-alarm candidates per subject")
    left.set_ylabel("missed lesions found (fraction of FN)")
    left.set_ylim(0, 1)
    left.set_title("candidate rule swept over levels", fontsize=9)
    rng = np.random.default_rng(0)
    for position, (kind, colour) in enumerate(
        (("found_FN", "#d95f02"), ("false_alarm", "#7570b3"))
    ):
        values = domains.loc[domains["kind"] == kind, peak].dropna().to_numpy()
        jitter = rng.uniform(-0.15, 0.15, size=values.size)
        right.scatter(position + jitter, values, s=10, alpha=0.6, color=colour)
        if values.size:
            right.hlines(np.median(values), position - 0.25, position + 0.25, color="k")
    right.set_xticks(
        [0, 1],
        [
            f"found FN (n={int((domains['kind'] == 'found_FN').sum())})",
            f"false alarm (n={int((domains['kind'] == 'false_alarm').sum())})",
        ],
    )
    right.set_ylabel(f"{peak.replace('_', ' ')} saliency")
    right.set_title(f"explained candidates, ROC AUC {result.auc_peak:.2f}", fontsize=9)
    figure.tight_layout()
    return figure
