"""Statistics that respect subjects: a cluster bootstrap over subjects and a sign test over them.

Lesion domains of one subject share a brain, a scan and the model's behaviour on it, so they are
not independent; a test that treats them as independent overstates its evidence. Beside the
domain-level tests of :mod:`instasal.analyses.statistics` the cohort analyses resample *subjects*
(all their domains with them) and recompute the statistic.

Why a bootstrap rather than a mixed model: the quantities compared are medians, minima of radial
profiles and differences of areas under curves, whose distributions are skewed and bounded; a
linear mixed model's normal random effects describe them poorly, and the bootstrap needs no
package beyond numpy. Its known weakness: with few subjects (under about 10) the percentile
interval is too narrow, so the number of subjects is always reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from instasal.errors import ConfigurationError
from instasal.typing import FloatArray

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "ClusterInterval",
    "cluster_bootstrap",
    "subject_sign_test",
]

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of every cluster bootstrap (seeded)."""

Statistic = Callable[[FloatArray], float]


@dataclass(frozen=True)
class ClusterInterval:
    """A statistic over all domains and its percentile interval from resampling subjects.

    Attributes
    ----------
    estimate
        The statistic of all finite values.
    low, high
        The ``(1 − level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled statistic.
    level
        Coverage of the interval (0.95 by default).
    n_subjects, n_values
        Subjects and values (rows) that entered.
    """

    estimate: float
    low: float
    high: float
    level: float
    n_subjects: int
    n_values: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a flat dict."""
        return asdict(self)


def cluster_bootstrap(
    values: FloatArray,
    subjects: Sequence[Hashable] | np.ndarray,
    statistic: Statistic = np.mean,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> ClusterInterval:
    """Percentile interval of ``statistic`` with subjects, not values, drawn with replacement.

    Parameters
    ----------
    values
        One value per domain (NaN values are left out), or one row per domain (rows without a
        finite value are left out; the statistic sees the rest, NaN included).
    subjects
        The subject of each value or row.
    statistic
        A function of an array of the same dimension, its rows the resampled domains (default:
        the mean).
    n_resamples, level, seed
        Resamples, coverage and the seed of the resampling.

    Returns
    -------
    ClusterInterval
        NaN estimate and interval when no finite value is left; a single subject gives an
        interval of width 0 (nothing to resample), which its ``n_subjects`` shows. Resamples
        where the statistic is undefined (NaN, e.g. a group drawn empty) are left out of the
        percentiles; when they are half or more of all resamples the interval is NaN.

    Raises
    ------
    ConfigurationError
        If ``values`` and ``subjects`` differ in length, or ``level`` is not in (0, 1).
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(subjects, dtype=object)
    if values.ndim not in (1, 2) or labels.shape != values.shape[:1]:
        raise ConfigurationError(
            "values (1-D, or 2-D with one row per domain) and subjects must be of one length, "
            f"got {values.shape} and {labels.shape}"
        )
    if not 0 < level < 1:
        raise ConfigurationError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ConfigurationError(f"n_resamples must be >= 1, got {n_resamples}")
    finite = np.isfinite(values) if values.ndim == 1 else np.isfinite(values).any(axis=1)
    values, labels = values[finite], labels[finite]
    names = list(dict.fromkeys(labels.tolist()))
    if not names:
        nan = float("nan")
        return ClusterInterval(nan, nan, nan, level, 0, 0)
    groups = [values[labels == name] for name in names]
    rng = np.random.default_rng(seed)
    resampled = np.empty(n_resamples)
    for r in range(n_resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        resampled[r] = statistic(np.concatenate([groups[i] for i in drawn]))
    defined = resampled[np.isfinite(resampled)]
    if defined.size < n_resamples / 2:
        low = high = float("nan")
    else:
        low, high = np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])
    return ClusterInterval(
        float(statistic(values)), float(low), float(high), level, len(groups), len(values)
    )


def subject_sign_test(per_subject: FloatArray) -> dict[str, float]:
    """One-sided sign test that per-subject values lie below 0 more often than not.

    Returns ``n`` (non-zero finite values), ``n_below`` and ``p_value`` (exact binomial, H1: the
    share below 0 exceeds 1/2; NaN for no values).
    """
    values = np.asarray(per_subject, dtype=np.float64)
    values = values[np.isfinite(values) & (values != 0)]
    below = int((values < 0).sum())
    if values.size == 0:
        return {"n": 0, "n_below": 0, "p_value": float("nan")}
    result = stats.binomtest(below, int(values.size), 0.5, alternative="greater")
    return {"n": int(values.size), "n_below": below, "p_value": float(result.pvalue)}
