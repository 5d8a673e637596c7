"""Modality reliance and the inside/ring sign pattern of instance saliency (SPEC §4, paper §3).

The paper reads its maps two ways: the network relies more on FLAIR than on MPRAGE/T1w (peak FLAIR
saliency above peak T1w saliency), and saliency is positive inside a lesion and negative in its
neighbourhood. Both are tested here per lesion with Wilcoxon signed-rank tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses._table import require_columns, select_types
from instasal.analyses.statistics import (
    Distribution,
    TestResult,
    describe,
    wilcoxon_signed_rank,
)
from instasal.typing import FloatArray

__all__ = ["ModalityReliance", "SignPattern", "modality_reliance", "sign_pattern"]


def _fraction(mask: FloatArray) -> float:
    return float(np.mean(mask)) if mask.size else float("nan")


@dataclass(frozen=True)
class ModalityReliance:
    """Peak saliency of two channels compared per lesion (see :func:`modality_reliance`).

    ``difference`` summarises ``peak_first - peak_second`` per lesion; ``test`` is the paired
    two-sided Wilcoxon signed-rank test of those differences; ``fraction_first_dominates`` the
    share of lesions with ``peak_first > peak_second``; ``reliance`` the distribution of
    ``reliance_first = peak_first / Σ_channels |peak|`` (0.5 for two equal positive peaks).
    """

    channels: tuple[str, str]
    types: tuple[str, ...]
    n_missing: int
    first: Distribution
    second: Distribution
    difference: Distribution
    fraction_first_dominates: float
    test: TestResult
    reliance: Distribution

    def to_frame(self) -> pd.DataFrame:
        """One row per summarised quantity: peaks, their difference, the reliance ratio."""
        first, second = self.channels
        rows = {
            f"peak_{first}": self.first,
            f"peak_{second}": self.second,
            f"peak_{first} - peak_{second}": self.difference,
            f"reliance_{first}": self.reliance,
        }
        return pd.DataFrame([{"quantity": k, **v.to_dict()} for k, v in rows.items()])

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python values."""
        return {
            "channels": list(self.channels),
            "types": list(self.types),
            "n_missing": self.n_missing,
            "first": self.first.to_dict(),
            "second": self.second.to_dict(),
            "difference": self.difference.to_dict(),
            "fraction_first_dominates": self.fraction_first_dominates,
            "wilcoxon_statistic": self.test.statistic,
            "p_value": self.test.p_value,
            "reason": self.test.reason,
            "reliance": self.reliance.to_dict(),
        }


def modality_reliance(
    table: pd.DataFrame,
    channels: tuple[str, str] = ("FLAIR", "T1w"),
    types: tuple[str, ...] = ("TP",),
) -> ModalityReliance:
    """Compare peak saliency of two channels per lesion (SPEC §4 "Modality reliance").

    Parameters
    ----------
    table
        A cohort lesion table with ``type``, ``peak_<c>`` for both channels and
        ``reliance_<first>``; not modified.
    channels
        ``(first, second)``: the paper's FLAIR and MPRAGE/T1w.
    types
        The domain types included (the paper: detected lesions, TP). Use ``("lesion",)`` for a
        cohort without a reference.

    Returns
    -------
    ModalityReliance
        Lesions where either peak is missing are left out (counted in ``n_missing``).
        The paper's finding, "FLAIR dominates", reads as a positive median difference with a small
        p-value and ``fraction_first_dominates`` above one half.
    """
    if len(channels) != 2:
        raise ValueError(f"channels must be a pair (first, second), got {channels}")
    first, second = channels
    columns = (f"peak_{first}", f"peak_{second}", f"reliance_{first}")
    require_columns(table, ("type", *columns))
    rows = select_types(table, types)
    peaks = rows[list(columns[:2])].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    complete = np.all(np.isfinite(peaks), axis=1)
    peak_first, peak_second = peaks[complete, 0], peaks[complete, 1]
    differences = peak_first - peak_second
    reliance = pd.to_numeric(rows[columns[2]], errors="coerce").to_numpy(np.float64)
    return ModalityReliance(
        channels=(first, second),
        types=tuple(types),
        n_missing=int((~complete).sum()),
        first=describe(peak_first),
        second=describe(peak_second),
        difference=describe(differences),
        fraction_first_dominates=_fraction(differences > 0),
        test=wilcoxon_signed_rank(differences),
        reliance=describe(reliance[np.isfinite(reliance)]),
    )


@dataclass(frozen=True)
class SignPattern:
    """Mean saliency inside Ω and in its 1–3 mm ring, per lesion (see :func:`sign_pattern`).

    ``inside_test`` and ``ring_test`` are two-sided Wilcoxon signed-rank tests against 0 of the
    per-lesion means; ``fraction_both`` is the share of lesions (with both means) that are positive
    inside *and* negative in the ring.
    """

    channel: str
    types: tuple[str, ...]
    inside: Distribution
    ring: Distribution
    n_inside_missing: int
    n_ring_missing: int
    fraction_inside_positive: float
    fraction_ring_negative: float
    fraction_both: float
    inside_test: TestResult
    ring_test: TestResult

    def to_frame(self) -> pd.DataFrame:
        """Two rows, inside and ring: distribution, fraction with the expected sign, the test."""
        rows = []
        for where, distribution, missing, fraction, test in (
            (
                "inside",
                self.inside,
                self.n_inside_missing,
                self.fraction_inside_positive,
                self.inside_test,
            ),
            ("ring", self.ring, self.n_ring_missing, self.fraction_ring_negative, self.ring_test),
        ):
            rows.append(
                {
                    "where": where,
                    **distribution.to_dict(),
                    "n_missing": missing,
                    "fraction_expected_sign": fraction,
                    "wilcoxon_statistic": test.statistic,
                    "p_value": test.p_value,
                    "reason": test.reason,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python values."""
        return {
            "channel": self.channel,
            "types": list(self.types),
            "rows": self.to_frame().to_dict(orient="records"),
            "fraction_both": self.fraction_both,
        }


def sign_pattern(
    table: pd.DataFrame, channel: str = "FLAIR", types: tuple[str, ...] = ("TP",)
) -> SignPattern:
    """Test the sign of saliency inside lesions and around them (SPEC §2 and §4; paper §3).

    Parameters
    ----------
    table
        A cohort lesion table with ``type``, ``inside_mean_<channel>`` and ``ring_mean_<channel>``
        (the mean of the instance SmoothGrad map over Ω and over the 1–3 mm shell around it).
    channel
        The input channel (the paper: FLAIR).
    types
        The domain types included (default: TP).

    Returns
    -------
    SignPattern
        Fractions positive inside and negative in the ring, and two-sided Wilcoxon signed-rank
        tests of each against 0. Lesions with no ring (an empty shell) are left out of the ring
        numbers and counted in ``n_ring_missing``.
    """
    inside_column, ring_column = f"inside_mean_{channel}", f"ring_mean_{channel}"
    require_columns(table, ("type", inside_column, ring_column))
    rows = select_types(table, types)
    means = rows[[inside_column, ring_column]].apply(pd.to_numeric, errors="coerce")
    values = means.to_numpy(np.float64)
    inside, ring = values[:, 0], values[:, 1]
    inside_ok, ring_ok = np.isfinite(inside), np.isfinite(ring)
    both = inside_ok & ring_ok
    return SignPattern(
        channel=channel,
        types=tuple(types),
        inside=describe(inside[inside_ok]),
        ring=describe(ring[ring_ok]),
        n_inside_missing=int((~inside_ok).sum()),
        n_ring_missing=int((~ring_ok).sum()),
        fraction_inside_positive=_fraction(inside[inside_ok] > 0),
        fraction_ring_negative=_fraction(ring[ring_ok] < 0),
        fraction_both=_fraction((inside[both] > 0) & (ring[both] < 0)),
        inside_test=wilcoxon_signed_rank(inside[inside_ok]),
        ring_test=wilcoxon_signed_rank(ring[ring_ok]),
    )
