"""Dataset-level runs of the paper's experiments (SPEC §4, issue 8), writing tables and figures.

Each function loads every subject of a BIDS-like dataset with a reference, segments it with the
model, types its lesions (:mod:`instasal.experiments.subjects`), runs one experiment in the
context asked for (``explain``'s choice by default), and writes ``<out>/<name>.tsv``, a summary
JSON and a figure, atomically; the table and the summary record the context.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

import matplotlib.pyplot as plt

from instasal.errors import ConfigurationError
from instasal.experiments.perilesional import PLATEAU_FRACTION, context_curve, summarise_curve
from instasal.experiments.relocation import relocate
from instasal.experiments.subjects import (
    context_record,
    explained_probability,
    sampled_tp_lesions,
)
from instasal.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from instasal.models.cards import card_of
from instasal.report.subject_figures import figure_png
from instasal.saliency import SmoothGradConfig, context_agreement
from instasal.typing import Context, PathLike, Progress, check_seed

__all__ = [
    "nan_to_none",
    "run_context_experiment",
    "run_patch_full_experiment",
    "run_relocation_experiment",
    "save_figure",
    "write_table",
]


def write_table(out: Path, name: str, table: pd.DataFrame, overwrite: bool) -> Path:
    """Write ``<out>/<name>.tsv`` atomically (refused when it exists, unless ``overwrite``)."""
    path = out / f"{name}.tsv"
    atomic_write_text(path, table.to_csv(sep="\t", index=False), overwrite=overwrite)
    return path


def save_figure(figure: Figure, path: Path, overwrite: bool) -> None:
    """Write a matplotlib figure as a PNG atomically (and close it)."""

    atomic_write_bytes(path, figure_png(figure, dpi=110), overwrite=overwrite)


def run_context_experiment(
    dataset: PathLike,
    model: nn.Module,
    out: PathLike,
    *,
    volume_band_mm3: tuple[float, float] = (90.0, 120.0),
    max_distance_mm: float = 34.0,
    max_lesions: int | None = None,
    seed: int = 0,
    context: Context | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    ignore_channel_names: bool = False,
) -> dict[str, Any]:
    """Perilesional context over the TP lesions of a volume band (authors: 90–120 mm³ at 1 mm).

    With ``max_lesions``, at most that many lesions in all, drawn at random with ``seed`` within
    each subject, the cap spread over the subjects (:func:`sampled_tp_lesions`). The probability
    is that of ``context``'s forward pass (:func:`explained_probability`; ``None``: as
    ``explain`` chooses, the prediction's own).
    """
    check_seed(seed)
    out = Path(out)
    low, high = volume_band_mm3
    frames: list[pd.DataFrame] = []
    seen: list[tuple[Context, str | None]] = []
    for prepared, lesions in sampled_tp_lesions(
        dataset,
        model,
        eligible=lambda r: low <= r.volume_mm3 <= high,
        max_lesions=max_lesions,
        seed=seed,
        context=context,
        ignore_channel_names=ignore_channel_names,
    ):
        seen.append((prepared.context, prepared.context_note))
        if not lesions:
            continue
        predict = functools.partial(explained_probability, prepared, model)
        chosen = [r.id for r in lesions]
        spacing = float(min(prepared.subject.spacing))
        result = context_curve(
            predict,
            prepared.x,
            prepared.instances,
            chosen,
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
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "context_records", records, overwrite)
    write_table(out, "context_curve", curve, overwrite)
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
    if plateau is not None:
        axis.axvline(plateau, color="0.4", lw=0.8, ls=":", label=f"plateau {plateau:g} mm")
    axis.set_xlabel("context kept around the lesion (mm)")
    axis.set_ylabel("mean probability in Ω")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, frameon=False)
    save_figure(figure, out / "context_curve.png", overwrite)
    summary = {
        "n_lesions": int(curve["n_lesions"].max()),
        "volume_band_mm3": list(volume_band_mm3),
        "plateau_mm": plateau,
        "plateau_rule": f"smallest distance from which the mean stays >= {PLATEAU_FRACTION:.0%} "
        "of its value at the largest distance",
        "probability_alone": float(curve["mean_probability"].iloc[0]),
        "probability_at_max": float(curve["mean_probability"].iloc[-1]),
        **context_record(seen),
    }
    atomic_write_json(out / "context_summary.json", summary, overwrite=overwrite)
    return summary


def run_relocation_experiment(
    dataset: PathLike,
    model: nn.Module,
    out: PathLike,
    *,
    max_lesions: int = 40,
    min_volume_mm3: float = 20.0,
    shell_mm: float = 4.0,
    seed: int = 0,
    context: Context | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    ignore_channel_names: bool = False,
) -> dict[str, Any]:
    """Relocate TP lesions to WM, outside the brain, and outside with their shell (SPEC §4).

    At most ``max_lesions`` lesions in all, drawn at random with ``seed`` within each subject, the
    cap spread over the subjects (:func:`sampled_tp_lesions`). The probability is that of
    ``context``'s forward pass (:func:`explained_probability`; ``None``: as ``explain`` chooses,
    the prediction's own); the original probability is the prediction's.
    """
    check_seed(seed)
    out = Path(out)
    rows: list[dict[str, Any]] = []
    conditions: list[Any] = ["white_matter", "outside", "outside_with_shell"]
    seen: list[tuple[Context, str | None]] = []
    for prepared, lesions in sampled_tp_lesions(
        dataset,
        model,
        eligible=lambda r: r.volume_mm3 >= min_volume_mm3,
        max_lesions=max_lesions,
        seed=seed,
        context=context,
        ignore_channel_names=ignore_channel_names,
    ):
        seen.append((prepared.context, prepared.context_note))
        predict = functools.partial(explained_probability, prepared, model)
        for record in lesions:
            domain = prepared.instances.mask(record.id)
            for condition in conditions:
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
                    seed=seed + record.id,
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
                    progress("relocation", len(rows), max_lesions * len(conditions))
    if not rows:
        raise ConfigurationError(f"{dataset}: no TP lesion of at least {min_volume_mm3} mm³")
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "relocation", table, overwrite)
    placed = table[table["placed"]]
    rates = placed.groupby("condition")["detected"].mean().reindex(conditions)
    counts = placed.groupby("condition")["detected"].size().reindex(conditions)
    figure, axis = plt.subplots(figsize=(4.6, 3.2))
    axis.bar(range(3), rates.fillna(0).to_numpy(), color=["#1b9e77", "#d95f02", "#7570b3"])
    axis.set_xticks(range(3), ["healthy WM", "outside", "outside + shell"])
    axis.set_ylabel("detection rate")
    axis.set_ylim(0, 1)
    for i, (rate, n) in enumerate(zip(rates.fillna(0), counts.fillna(0), strict=True)):
        axis.text(i, rate + 0.02, f"{rate:.0%} (n={int(n)})", ha="center", fontsize=8)
    save_figure(figure, out / "relocation.png", overwrite)
    summary = {
        "n_lesions": int(table.groupby(["subject", "lesion_id"]).ngroups),
        "detection_rate": {c: nan_to_none(rates[c]) for c in conditions},
        "n_placed": {c: int(counts[c]) if not pd.isna(counts[c]) else 0 for c in conditions},
        "shell_mm": shell_mm,
        **context_record(seen),
    }
    atomic_write_json(out / "relocation_summary.json", summary, overwrite=overwrite)
    return summary


def nan_to_none(value: Any) -> float | None:
    """A float for JSON, ``None`` for a missing value."""
    return None if pd.isna(value) else float(value)


def run_patch_full_experiment(
    dataset: PathLike,
    model: nn.Module,
    out: PathLike,
    *,
    max_lesions: int = 20,
    n_samples: int = 2,
    seed: int = 0,
    context: Context | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    ignore_channel_names: bool = False,
) -> dict[str, Any]:
    """Agreement of a context's SmoothGrad maps with the full context's over TP lesions (SPEC §2).

    ``context`` is the one compared with ``full``: ``"patch"`` (``None``, the authors' two
    contexts) or ``"deployed"`` (:func:`instasal.saliency.context_agreement`). At most
    ``max_lesions`` lesions in all, drawn at random with ``seed`` within each subject, the cap
    spread over the subjects (:func:`sampled_tp_lesions`); ``seed`` also seeds the SmoothGrad
    noise.

    Raises
    ------
    ConfigurationError
        On ``context="full"`` (full is what the context is compared with).
    """
    if context == "full":
        raise ConfigurationError(
            "context is the one compared with full: patch or deployed, got 'full'"
        )
    out = Path(out)
    rows: list[dict[str, Any]] = []
    seen: list[tuple[Context, str | None]] = []
    for prepared, lesions in sampled_tp_lesions(
        dataset,
        model,
        eligible=lambda _: True,
        max_lesions=max_lesions,
        seed=seed,
        context=context or "patch",
        ignore_channel_names=ignore_channel_names,
    ):
        seen.append((prepared.context, prepared.context_note))
        config = prepared.smoothgrad(model, SmoothGradConfig(n_samples=n_samples, seed=seed))
        for record in lesions:
            agreement = context_agreement(
                prepared.network, prepared.x, prepared.instances.mask(record.id), config
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
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "patch_vs_full", table, overwrite)
    numeric = table.select_dtypes("number").drop(columns=["lesion_id"])
    summary = {
        "n_lesions": len(table),
        "compared_with": "full",
        **context_record(seen),
        "median": {k: float(v) for k, v in numeric.median().items()},
        "min": {k: float(v) for k, v in numeric.min().items()},
        "max": {k: float(v) for k, v in numeric.max().items()},
    }
    atomic_write_json(out / "patch_vs_full_summary.json", summary, overwrite=overwrite)
    return summary
