"""Perilesional context experiment (SPEC §4; paper Fig. 15).

For a lesion Ω, keep only Ω dilated by d iterations (18-connectivity) of the normalised input
and zero the rest, run inference, and record the mean probability inside Ω and whether any Ω
voxel passes the threshold. Over many lesions the curve mean ± sd against the dilation distance
(in mm, through the grid spacing) shows how much healthy tissue around a lesion the model needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.instances import Instances
from instasal.typing import Progress

__all__ = ["ContextCurve", "context_curve", "plateau_distance", "summarise_curve"]

PLATEAU_FRACTION = 0.95


@dataclass(frozen=True)
class ContextCurve:
    """Per-lesion results (``records``) and the curve summary (``curve``) of the experiment."""

    records: pd.DataFrame
    curve: pd.DataFrame
    plateau_mm: float | None
    rule: str


def plateau_distance(
    distances_mm: Sequence[float], mean_probability: Sequence[float], fraction: float = 0.95
) -> float | None:
    """The smallest distance from which the curve stays ≥ ``fraction`` × its value at the largest.

    This is the stated rule for "the plateau"; ``None`` when the last value is not positive.
    """
    values = np.asarray(mean_probability, dtype=float)
    if values.size == 0 or not values[-1] > 0:
        return None
    level = fraction * values[-1]
    below = np.flatnonzero(values < level)
    first = 0 if below.size == 0 else int(below[-1]) + 1
    return float(distances_mm[first]) if first < len(distances_mm) else None


def summarise_curve(records: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Mean ± sd probability and detection rate per distance, and the plateau distance.

    ``records`` has one row per (lesion, distance): ``lesion_id`` (and optionally ``subject``),
    ``distance_mm``, ``mean_probability``, ``detected``.
    """
    keys = ["subject", "lesion_id"] if "subject" in records else ["lesion_id"]
    curve = (
        records.assign(lesion=records[keys].astype(str).agg("/".join, axis=1))
        .groupby("distance_mm")
        .agg(
            mean_probability=("mean_probability", "mean"),
            sd_probability=("mean_probability", "std"),
            detection_rate=("detected", "mean"),
            n_lesions=("lesion", "nunique"),
        )
        .reset_index()
    )
    plateau = plateau_distance(
        curve["distance_mm"].tolist(), curve["mean_probability"].tolist(), PLATEAU_FRACTION
    )
    return curve, plateau


def context_curve(
    predict: Callable[[torch.Tensor, np.ndarray], np.ndarray],
    x: torch.Tensor,
    instances: Instances,
    lesion_ids: Sequence[int],
    *,
    threshold: float,
    max_iterations: int = 34,
    progress: Progress | None = None,
) -> ContextCurve:
    """Mean probability inside Ω against the width of context kept around it.

    Parameters
    ----------
    predict
        Maps a normalised input ``[C, X, Y, Z]`` and the lesion mask ``[X, Y, Z]`` to the lesion
        probability ``[X, Y, Z]``, which must be right at least inside the mask (e.g.
        ``lambda x, lesion: predict_probability(model, x, region=lesion)``).
    x
        The subject's normalised input.
    instances
        Its domains; ``lesion_ids`` selects the lesions (authors: TP lesions of 90–120 voxels).
    threshold
        Detection threshold (a lesion is detected when any Ω voxel reaches it).
    max_iterations
        Dilations d = 0 … ``max_iterations`` (18-connectivity); d = 0 keeps Ω alone.
    """
    if max_iterations < 1:
        raise ConfigurationError(f"max_iterations must be >= 1, got {max_iterations}")
    if not lesion_ids:
        raise ConfigurationError("lesion_ids is empty: no lesion to run the experiment on")
    spacing = np.linalg.norm(instances.affine[:3, :3], axis=0)
    step_mm = float(spacing.min())
    structure = ndimage.generate_binary_structure(3, 2)
    rows = []
    total = float(len(lesion_ids) * (max_iterations + 1))
    for n, lesion_id in enumerate(lesion_ids):
        domain = instances.mask(lesion_id)
        kept = domain.copy()
        for d in range(max_iterations + 1):
            if d > 0:
                kept = ndimage.binary_dilation(kept, structure=structure)
            masked = x * torch.from_numpy(kept).to(x.dtype)
            probability = predict(masked, domain)
            inside = probability[domain]
            rows.append(
                {
                    "lesion_id": lesion_id,
                    "iterations": d,
                    "distance_mm": d * step_mm,
                    "mean_probability": float(inside.mean()),
                    "detected": bool((inside >= threshold).any()),
                }
            )
            if progress is not None:
                progress(f"context of lesion {lesion_id}", n * (max_iterations + 1) + d + 1, total)
    records = pd.DataFrame(rows)
    curve, plateau = summarise_curve(records)
    rule = (
        f"smallest distance from which the mean probability stays >= {PLATEAU_FRACTION:.0%} of its "
        f"value at the largest distance ({max_iterations * step_mm:g} mm)"
    )
    return ContextCurve(records, curve, plateau, rule)
