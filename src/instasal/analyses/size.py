"""Aggregation versus lesion size: why the paper's v3 uses max aggregation (SPEC §2 and §4).

Mean aggregation averages Jacobian rows over Ω, and rows of distant voxels share little, so the mean
map of a large lesion is systematically weaker; max aggregation keeps, per input voxel, the row of
largest magnitude, so its peak should not fall with size (paper §2 and Fig. 7). Tested here with
Spearman's ρ of peak saliency against volume, once per aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses._table import require_columns, select_types
from instasal.analyses.statistics import Correlation, spearman

__all__ = ["AggregationVsSize", "aggregation_vs_size", "peak_and_volume"]


@dataclass(frozen=True)
class AggregationVsSize:
    """Spearman's ρ of ``peak_<channel>`` against ``volume_mm3`` for max and mean aggregation."""

    channel: str
    types: tuple[str, ...]
    max: Correlation
    mean: Correlation

    def to_frame(self) -> pd.DataFrame:
        """One row per aggregation: n, ρ, p, reason."""
        return pd.DataFrame(
            [
                {
                    "aggregation": name,
                    "n": c.n,
                    "rho": c.rho,
                    "p_value": c.p_value,
                    "reason": c.reason,
                }
                for name, c in (("max", self.max), ("mean", self.mean))
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python values."""
        return {
            "channel": self.channel,
            "types": list(self.types),
            "correlations": self.to_frame().to_dict(orient="records"),
        }


def peak_and_volume(
    table: pd.DataFrame, channel: str, types: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Volumes (mm³) and ``peak_<channel>`` of the rows of ``types`` where both are finite."""
    column = f"peak_{channel}"
    require_columns(table, ("type", "volume_mm3", column))
    rows = select_types(table, types)
    values = rows[["volume_mm3", column]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    values = values[np.all(np.isfinite(values), axis=1)]
    return values[:, 0], values[:, 1]


def aggregation_vs_size(
    table_max: pd.DataFrame,
    table_mean: pd.DataFrame,
    channel: str = "FLAIR",
    types: tuple[str, ...] = ("TP",),
) -> AggregationVsSize:
    """Spearman's ρ of peak saliency against lesion volume, per aggregation (SPEC §4).

    Parameters
    ----------
    table_max, table_mean
        Lesion tables of the same cohort computed with ``aggregation="max"`` and ``"mean"``
        (neither is modified; they are analysed separately, so they need not list the same rows).
    channel
        The input channel whose peak is used (the paper: FLAIR).
    types
        The domain types included (default: TP).

    Returns
    -------
    AggregationVsSize
        Two-sided Spearman correlations (:func:`scipy.stats.spearmanr`). The paper's finding,
        "mean falls with size, max does not", reads as ρ_mean < 0 with a small p-value and no such
        significant fall for max.
    """
    correlations = []
    for table in (table_max, table_mean):
        volume, peak = peak_and_volume(table, channel, types)
        correlations.append(spearman(volume, peak))
    return AggregationVsSize(channel, tuple(types), correlations[0], correlations[1])
