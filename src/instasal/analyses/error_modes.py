"""Error modes: saliency distributions of TP, FP, FN and TN domains (SPEC §4, paper Fig. 11).

The paper compares peak FLAIR saliency between the four domain types with Mann–Whitney U tests on
every pair and finds all p < 0.001, with medians ordered TP > FP > FN > TN. Here every pair of the
types present is tested two-sided, the p-values are Holm-corrected over the family of computable
tests, and each pair gets a rank-biserial effect size.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, pairwise
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from instasal.analyses._table import DOMAIN_TYPES, finite_values, require_columns, select_types
from instasal.analyses.statistics import Distribution, describe, holm, rank_biserial
from instasal.typing import Metric

__all__ = ["ErrorModes", "GroupSummary", "Metric", "PairwiseTest", "error_modes"]


_MIN_SAMPLES = 2


@dataclass(frozen=True)
class GroupSummary:
    """The finite values of one domain type: their distribution and how many were missing."""

    type: str
    distribution: Distribution
    n_missing: int

    def to_dict(self) -> dict[str, Any]:
        """A flat record: type, n, median, quartiles, IQR, extremes, n_missing."""
        return {"type": self.type, **self.distribution.to_dict(), "n_missing": self.n_missing}


@dataclass(frozen=True)
class PairwiseTest:
    """Two-sided Mann–Whitney U test of ``first`` against ``second``.

    ``u_statistic`` is the U of ``first`` (pairs where ``first`` is larger, ties one half);
    ``rank_biserial`` > 0 means ``first`` tends to be larger (see
    :func:`~instasal.analyses.statistics.rank_biserial`); ``p_holm`` is Holm-corrected over the
    computable tests of the same analysis. A pair with fewer than 2 values on a side is not
    computable: NaN numbers and a ``reason``.
    """

    first: str
    second: str
    n_first: int
    n_second: int
    u_statistic: float
    p_value: float
    p_holm: float
    rank_biserial: float
    reason: str = ""

    @property
    def computable(self) -> bool:
        """Whether the test was computed."""
        return not self.reason

    def to_dict(self) -> dict[str, Any]:
        """A flat record of the test."""
        return {
            "first": self.first,
            "second": self.second,
            "n_first": self.n_first,
            "n_second": self.n_second,
            "u_statistic": self.u_statistic,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "rank_biserial": self.rank_biserial,
            "computable": self.computable,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ErrorModes:
    """Per-type summaries and pairwise tests of one saliency column (see :func:`error_modes`).

    ``median_order`` lists the types that have values, by decreasing median (ties keep the
    TP, FP, FN, TN order); ``strictly_ordered`` says whether those medians all differ.
    """

    column: str
    groups: tuple[GroupSummary, ...]
    tests: tuple[PairwiseTest, ...]
    median_order: tuple[str, ...]
    strictly_ordered: bool

    def group(self, kind: str) -> GroupSummary:
        """The summary of domain type ``kind``."""
        for group in self.groups:
            if group.type == kind:
                return group
        raise KeyError(f"no domain type {kind!r} in {[g.type for g in self.groups]}")

    def groups_frame(self) -> pd.DataFrame:
        """One row per domain type: n, median, quartiles, IQR, extremes, n_missing."""
        return pd.DataFrame([group.to_dict() for group in self.groups])

    def tests_frame(self) -> pd.DataFrame:
        """One row per pair of types: U, p, Holm-adjusted p, rank-biserial r, reason."""
        return pd.DataFrame([test.to_dict() for test in self.tests])

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python values."""
        return {
            "column": self.column,
            "groups": [group.to_dict() for group in self.groups],
            "tests": [test.to_dict() for test in self.tests],
            "median_order": list(self.median_order),
            "strictly_ordered": self.strictly_ordered,
        }


def error_modes(
    table: pd.DataFrame,
    channel: str = "FLAIR",
    metric: Metric = "peak",
    *,
    types: tuple[str, ...] = DOMAIN_TYPES,
) -> ErrorModes:
    """Compare ``<metric>_<channel>`` between domain types (SPEC §4 "Error modes", paper Fig. 11).

    Parameters
    ----------
    table
        A cohort lesion table with ``type`` and the ``<metric>_<channel>`` column; not modified.
    channel, metric
        The saliency column: ``peak_FLAIR`` by default, the paper's peak saliency.
    types
        The domain types compared, in this order; every pair ``(a, b)`` with ``a`` before ``b`` is
        tested, so positive effect sizes mean the earlier type has the larger values.

    Returns
    -------
    ErrorModes
        Per type: count of finite values, median, quartiles (missing values are counted apart).
        Per pair: two-sided Mann–Whitney U (:func:`scipy.stats.mannwhitneyu`, ``method="auto"``),
        Holm-adjusted p over the computable pairs, rank-biserial ``r = 1 - 2 U_b / (n_a n_b)``.

    Examples
    --------
    >>> result = error_modes(cohort_table)  # doctest: +SKIP
    >>> result.median_order  # doctest: +SKIP
    ('TP', 'FP', 'FN', 'TN')
    """
    column = f"{metric}_{channel}"
    require_columns(table, ("type", column))
    samples: dict[str, np.ndarray] = {}
    groups = []
    for kind in types:
        values, n_missing = finite_values(select_types(table, (kind,)), column)
        samples[kind] = values
        groups.append(GroupSummary(kind, describe(values), n_missing))

    pairs = list(combinations(types, 2))
    raw: list[tuple[float, float, float, str]] = []
    for first, second in pairs:
        x, y = samples[first], samples[second]
        short = [
            f"{k} has {samples[k].size} value(s)"
            for k in (first, second)
            if samples[k].size < _MIN_SAMPLES
        ]
        if short:
            raw.append(
                (np.nan, np.nan, np.nan, "; ".join(short) + f", need at least {_MIN_SAMPLES}")
            )
            continue
        result = stats.mannwhitneyu(x, y, alternative="two-sided")
        u = float(result.statistic)
        raw.append((u, float(result.pvalue), rank_biserial(u, x.size, y.size), ""))
    adjusted = holm([p for _, p, _, _ in raw])
    tests = tuple(
        PairwiseTest(
            first,
            second,
            int(samples[first].size),
            int(samples[second].size),
            u,
            p,
            float(p_holm),
            r,
            reason,
        )
        for (first, second), (u, p, r, reason), p_holm in zip(pairs, raw, adjusted, strict=True)
    )

    present = [g for g in groups if g.distribution.n > 0]
    ordered = sorted(present, key=lambda g: -g.distribution.median)
    medians = [g.distribution.median for g in ordered]
    strictly = all(a > b for a, b in pairwise(medians))
    return ErrorModes(column, tuple(groups), tests, tuple(g.type for g in ordered), strictly)
