"""Figures of the trust checks (``docs/trust.md``): randomisation cascade, deletion and insertion
curves, radial profiles.

Each figure summarises the domains of one run: a line for the mean (median for the randomisation
similarities, which are bounded ranks) and a band from the smallest to the largest domain, so the
spread over domains is visible. The numbers drawn come from :func:`curve_summary`, which the tests
check against hand-made tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from instasal.report.subject_figures import SALIENCY_UNIT, TYPE_COLOURS
from instasal.trust.sanity import VERDICT_REGION

__all__ = [
    "METHOD_COLOURS",
    "METHOD_LABELS",
    "ORDER_COLOURS",
    "ORDER_LABELS",
    "curve_summary",
    "deletion_figure",
    "domain_curves",
    "profile_figure",
    "randomisation_figure",
]

METHOD_LABELS = {"smoothgrad": "SmoothGrad (max)", "gradcam": "Grad-CAM++"}
METHOD_COLOURS = {"smoothgrad": "#c0392b", "gradcam": "#2471a3"}
ORDER_LABELS = METHOD_LABELS | {
    "smoothgrad_times_delta": "SmoothGrad (max) × (x − b)",
    "brightness": "FLAIR brightness",
    "distance": "distance from Ω",
    "random": "random",
}
"""The voxel orders of the deletion figure: the maps' and the model-free ones."""
ORDER_COLOURS = METHOD_COLOURS | {
    "smoothgrad_times_delta": "#e67e22",
    "brightness": "#27ae60",
    "distance": "#8e44ad",
    "random": "0.45",
}


def curve_summary(
    frame: pd.DataFrame,
    x: str,
    y: str,
    centre: Callable[[pd.Series], float] = pd.Series.mean,
) -> pd.DataFrame:
    """Per value of ``x``: the ``centre`` of ``y`` over rows, its min and max, and the row count.

    Rows with a non-finite ``y`` are left out. Returns columns ``x``, ``centre``, ``low``,
    ``high``, ``n``, sorted by ``x``.
    """
    values = frame[[x, y]].apply(pd.to_numeric, errors="coerce")
    values = values[np.isfinite(values[y])]
    grouped = values.groupby(x)[y]
    summary = pd.DataFrame(
        {
            "centre": grouped.agg(centre),
            "low": grouped.min(),
            "high": grouped.max(),
            "n": grouped.size(),
        }
    )
    return summary.reset_index().sort_values(x, ignore_index=True)


def _draw(axis: plt.Axes, summary: pd.DataFrame, x: str, colour: str, label: str) -> None:
    axis.fill_between(summary[x], summary["low"], summary["high"], color=colour, alpha=0.18, lw=0)
    axis.plot(summary[x], summary["centre"], color=colour, marker="o", ms=3, lw=1.4, label=label)


def _pass_counts(steps: pd.DataFrame, method: str) -> tuple[int, int]:
    rows = steps[steps["method"] == method]
    last = rows.sort_values("step").groupby("id").tail(1)
    passed = last["changed"].astype(str).str.lower().isin(["true", "1"])
    return int(passed.sum()), len(last)


def randomisation_figure(steps: pd.DataFrame) -> Figure:
    """Similarity to the trained model's map at each cascading randomisation step, per method.

    Parameters
    ----------
    steps : pandas.DataFrame
        One row per domain (``id``), ``method``, cascading ``step`` and ``region`` with
        ``spearman_abs``, ``ssim``, their ``_null_max`` and ``changed`` (the run's
        ``<subject>_trust_randomisation.tsv``); only the verdict's region is drawn.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (Spearman of ``|map|``, SSIM): per method the median over domains of the
        trained-vs-randomised similarity, the band from the least to the most similar domain,
        and dashed the median of the null's top (the largest similarity of two randomised
        copies), at or below which a map counts as changed (``docs/trust.md``). The legend says
        how many domains pass (changed at the last step).
    """
    steps = steps[steps["region"] == VERDICT_REGION]
    figure, axes = plt.subplots(1, 2, figsize=(7.4, 3.2), sharey=True)
    for axis, measure, title in zip(
        axes, ("spearman_abs", "ssim"), ("Spearman of |map|", "SSIM"), strict=True
    ):
        for method in [m for m in METHOD_LABELS if m in set(steps["method"])]:
            rows = steps[steps["method"] == method]
            passed, total = _pass_counts(steps, method)
            label = f"{METHOD_LABELS[method]}: {passed} of {total} pass"
            summary = curve_summary(rows, "step", measure, pd.Series.median)
            _draw(axis, summary, "step", METHOD_COLOURS[method], label)
            null = curve_summary(rows, "step", f"{measure}_null_max", pd.Series.median)
            axis.plot(
                null["step"],
                null["centre"],
                color=METHOD_COLOURS[method],
                ls="--",
                lw=0.9,
                label=f"{METHOD_LABELS[method]}: null (two random copies)",
            )
        axis.set_xlabel("cascading step (blocks random, output first)")
        axis.set_title(title, fontsize=10)
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("similarity to the trained model's map")
    axes[0].legend(fontsize=7, frameon=False, loc="lower left")
    figure.suptitle("Model randomisation (median over domains, band: min–max)", fontsize=10)
    figure.tight_layout()
    return figure


def domain_curves(curves: pd.DataFrame, kind: str, order: str) -> pd.DataFrame:
    """One curve per domain of ``kind`` (deletion/insertion) for ``order``, all of the
    neighbourhood replaced: the random orders of a domain averaged first. Columns ``id``,
    ``fraction``, ``prob_mean``."""
    rows = curves[
        (curves["kind"] == kind)
        & (curves["order"] == order)
        & (curves["variant"] == "neighbourhood")
    ]
    return rows.groupby(["id", "fraction"])["prob_mean"].mean().reset_index()


def deletion_figure(curves: pd.DataFrame) -> Figure:
    """Deletion and insertion curves of the domains' mean probability, per voxel order.

    Parameters
    ----------
    curves : pandas.DataFrame
        The run's ``<subject>_trust_curves.tsv``: ``id``, ``order`` (the maps' orders and the
        model-free ``brightness``, ``distance``, ``random``), ``seed``, ``variant`` (only
        ``neighbourhood`` is drawn), ``kind``, ``fraction``, ``prob_mean``.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels (deletion, insertion): per order the mean over domains (random orders
        averaged per domain first) and the band from the lowest to the highest domain.
    """
    figure, axes = plt.subplots(1, 2, figsize=(7.4, 3.2), sharey=True)
    n_random = curves.loc[curves["order"] == "random", "seed"].nunique()
    for axis, kind in zip(axes, ("deletion", "insertion"), strict=True):
        for order in [o for o in ORDER_LABELS if o in set(curves["order"])]:
            per_domain = domain_curves(curves, kind, order)
            label = ORDER_LABELS[order]
            if order == "random":
                label += f" ({n_random} orders)"
            summary = curve_summary(per_domain, "fraction", "prob_mean")
            _draw(axis, summary, "fraction", ORDER_COLOURS[order], label)
        axis.set_xlabel(
            "fraction of the neighbourhood replaced"
            if kind == "deletion"
            else "fraction of the neighbourhood restored"
        )
        axis.set_title(
            "Deletion (most important first)" if kind == "deletion" else "Insertion", fontsize=10
        )
    axes[0].set_ylabel("mean lesion probability over the domain")
    axes[0].legend(fontsize=7, frameon=False)
    figure.suptitle("Faithfulness (mean over domains, band: min–max)", fontsize=10)
    figure.tight_layout()
    return figure


def _distance(profiles: pd.DataFrame) -> pd.Series:
    """Where a shell is drawn: 0 for Ω itself, else the middle of the shell (mm)."""
    middle = (profiles["inner_mm"] + profiles["outer_mm"]) / 2
    return middle.where(profiles["shell"] > 0, 0.0)


def profile_figure(profiles: pd.DataFrame, channels: Sequence[str]) -> Figure:
    """Radial saliency profiles per domain type, one panel per channel.

    Parameters
    ----------
    profiles : pandas.DataFrame
        The run's ``<subject>_profiles.tsv``: ``id``, ``type``, ``channel``, ``shell``,
        ``inner_mm``, ``outer_mm``, ``mean``.
    channels : sequence of str
        The channels drawn, one panel each.

    Returns
    -------
    matplotlib.figure.Figure
        Per type the mean profile over its domains and the min–max band.
    """
    figure, axes = plt.subplots(1, len(channels), figsize=(3.7 * len(channels), 3.2), squeeze=False)
    placed = profiles.assign(distance_mm=_distance(profiles))
    for axis, channel in zip(axes[0], channels, strict=True):
        rows = placed[placed["channel"] == channel]
        axis.axhline(0, color="0.5", lw=0.6)
        for kind, group in rows.groupby("type", sort=True):
            label = f"{kind} (n={group['id'].nunique()})"
            colour = TYPE_COLOURS.get(str(kind), "k")
            _draw(axis, curve_summary(group, "distance_mm", "mean"), "distance_mm", colour, label)
        axis.set_xlabel("distance from the domain (mm; 0 = inside)")
        axis.set_title(f"{channel} saliency by distance", fontsize=10)
    axes[0][0].set_ylabel(f"mean saliency ({SALIENCY_UNIT})")
    axes[0][0].legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return figure
