"""Statistical building blocks of the cohort analyses (SPEC §4), each with a stated convention.

Tests come from :mod:`scipy.stats` with its defaults (two-sided; ``method="auto"``); what is ours
is written out here and tested against hand-computed values: Holm's step-down correction, the
rank-biserial effect size, the ROC curve and its area. A test that cannot be computed (too few
values, constant input) is reported with NaN and a reason instead of raising, so a cohort without,
say, false negatives still gets every other number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from instasal.typing import FloatArray

__all__ = [
    "ALPHA",
    "SIZE_EQUIVALENCE_MARGIN",
    "Correlation",
    "Distribution",
    "TestResult",
    "describe",
    "equivalence_sufficient_n",
    "holm",
    "least_sufficient_n",
    "rank_biserial",
    "roc_auc",
    "roc_curve",
    "smallest_p_rank_sum",
    "smallest_p_signed_rank",
    "spearman",
    "spearman_lower_bound",
    "wilcoxon_signed_rank",
]

#: Significance level of every "reproduced" rule: the paper reports p < 0.001 throughout.
ALPHA = 0.001

_NAN = float("nan")


@dataclass(frozen=True)
class Distribution:
    """Count and quantiles of a sample (NaN quantiles for an empty sample).

    ``q1`` and ``q3`` are the 25th and 75th percentiles (numpy's linear interpolation).
    """

    n: int
    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1``."""
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, Any]:
        """The fields and the IQR as a flat dict."""
        return {**asdict(self), "iqr": self.iqr}


def describe(values: FloatArray) -> Distribution:
    """Summarise finite ``values`` (see :class:`Distribution`)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Distribution(0, _NAN, _NAN, _NAN, _NAN, _NAN)
    q1, median, q3 = np.percentile(values, [25.0, 50.0, 75.0])
    return Distribution(
        int(values.size),
        float(median),
        float(q1),
        float(q3),
        float(values.min()),
        float(values.max()),
    )


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its p-value; ``reason`` says why both are NaN when not computable."""

    statistic: float
    p_value: float
    reason: str = ""

    @property
    def computable(self) -> bool:
        """Whether the test was computed."""
        return not self.reason


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation ``rho`` of ``n`` pairs and its two-sided p-value."""

    n: int
    rho: float
    p_value: float
    reason: str = ""

    @property
    def computable(self) -> bool:
        """Whether the correlation was computed."""
        return not self.reason


def holm(p_values: Sequence[float]) -> FloatArray:
    """Holm's step-down adjusted p-values, in the input order.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= … <= p_(m)``, the adjusted value of
    the ``i``-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (Holm 1979). NaN entries (tests that
    could not be computed) stay NaN and do not count in ``m``. Rejecting where the adjusted value is
    below α controls the family-wise error rate at α.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, 0.005]).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite].tolist()}")
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def rank_biserial(u_first: float, n_first: int, n_second: int) -> float:
    """Rank-biserial correlation of two independent samples from the first sample's U.

    ``u_first`` is the Mann–Whitney U of the first sample as :func:`scipy.stats.mannwhitneyu`
    returns it for ``x = first``: the number of pairs in which the first sample's value is larger,
    ties counting one half. With ``U_second = n_first n_second - u_first``,

        r = 1 - 2 U_second / (n_first n_second) = P(first > second) - P(first < second)

    (Kerby's simple difference formula): **r > 0 means the first sample tends to be larger**, r = 1
    when every value of the first exceeds every value of the second, r = -1 in the opposite case.
    """
    pairs = n_first * n_second
    if pairs == 0:
        return _NAN
    return 1.0 - 2.0 * (pairs - u_first) / pairs


def wilcoxon_signed_rank(differences: FloatArray) -> TestResult:
    """Two-sided Wilcoxon signed-rank test that ``differences`` are centred on 0.

    :func:`scipy.stats.wilcoxon` with its defaults (zero differences dropped, ``method="auto"``).
    Not computable with fewer than 2 values or when every difference is 0.
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size < 2:
        return TestResult(_NAN, _NAN, f"{differences.size} value(s), need at least 2")
    if not np.any(differences != 0):
        return TestResult(_NAN, _NAN, "every value is 0")
    result = stats.wilcoxon(differences)
    return TestResult(float(result.statistic), float(result.pvalue))


def smallest_p_signed_rank(n: int) -> float:
    """The smallest p :func:`wilcoxon_signed_rank` can return for ``n`` non-zero differences.

    It is reached when every difference has one sign and the magnitudes are distinct; for
    ``n <= 50`` (scipy's exact distribution) it is ``2 / 2**n``. NaN below 2 values.

    Examples
    --------
    >>> smallest_p_signed_rank(6)
    0.03125
    """
    if n < 2:
        return _NAN
    return float(stats.wilcoxon(np.arange(1.0, n + 1)).pvalue)


def smallest_p_rank_sum(n_first: int, n_second: int) -> float:
    """The smallest p a two-sided Mann–Whitney U test of samples of these sizes can return.

    It is reached when every value of one sample exceeds every value of the other, without ties,
    computed as :mod:`instasal.analyses.error_modes` tests (:func:`scipy.stats.mannwhitneyu`,
    ``method="auto"``: exact with at most 8 values in a sample, ``2 / C(n_1 + n_2, n_1)``, else
    the normal approximation). NaN with fewer than 2 values on a side.

    Examples
    --------
    >>> round(smallest_p_rank_sum(6, 6), 6)  # 2 / 924
    0.002165
    """
    if min(n_first, n_second) < 2:
        return _NAN
    larger = np.arange(n_first, dtype=np.float64) + n_second
    smaller = np.arange(n_second, dtype=np.float64)
    return float(stats.mannwhitneyu(larger, smaller, alternative="two-sided").pvalue)


def least_sufficient_n(
    smallest_p: Callable[[int], float], alpha: float = ALPHA, limit: int = 200
) -> int | None:
    """The least ``n`` from which every ``m`` up to ``limit`` has ``smallest_p(m) < alpha``.

    "From which on", not "the first": scipy's exact small-sample p-values can fall below ``alpha``
    at a size where the normal approximation used just above it does not (two-sided Mann–Whitney
    at 8 against 8 values, then not at 9 against 9). None when ``limit`` itself does not suffice.

    Examples
    --------
    >>> least_sufficient_n(smallest_p_signed_rank)
    11
    """
    failing = [m for m in range(2, limit + 1) if not smallest_p(m) < alpha]
    if failing and failing[-1] == limit:
        return None
    return failing[-1] + 1 if failing else 2


def spearman(x: FloatArray, y: FloatArray) -> Correlation:
    """Spearman's ρ of paired finite samples with :func:`scipy.stats.spearmanr` (two-sided p).

    Not computable with fewer than 3 pairs or when either sample is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    n = int(x.size)
    if n < 3:
        return Correlation(n, _NAN, _NAN, f"{n} pair(s), need at least 3")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return Correlation(n, _NAN, _NAN, "constant input")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(x, y)
    return Correlation(n, float(result.statistic), float(result.pvalue))


SIZE_EQUIVALENCE_MARGIN = 0.2
"""The largest fall of Spearman's ρ(volume, peak) that still counts as "does not fall with size":
a weak correlation at most (|ρ| < 0.2), fixed before any cohort was analysed with it."""


def spearman_lower_bound(rho: float, n: int, alpha: float = ALPHA) -> float:
    """The one-sided lower ``1 − alpha`` confidence bound of Spearman's ρ over ``n`` pairs.

    Fisher's z with Fieller, Hartley and Pearson's (1957) standard error for Spearman's ρ,
    ``√(1.06 / (n − 3))``: ``tanh(atanh ρ − z₁₋α · SE)``. NaN below 4 pairs.

    Examples
    --------
    >>> round(spearman_lower_bound(0.0, 250), 3)
    -0.2
    """
    if n < 4 or rho != rho:
        return _NAN
    clipped = float(np.clip(rho, -0.999999, 0.999999))
    z = float(stats.norm.ppf(1.0 - alpha))
    return float(np.tanh(np.arctanh(clipped) - z * np.sqrt(1.06 / (n - 3))))


def equivalence_sufficient_n(margin: float = SIZE_EQUIVALENCE_MARGIN, alpha: float = ALPHA) -> int:
    """The least number of pairs at which a ρ of 0 has its lower bound
    (:func:`spearman_lower_bound`) above ``-margin``: below it, no data can show "no fall".

    >>> equivalence_sufficient_n()
    250
    """
    n = 4
    while not spearman_lower_bound(0.0, n, alpha) > -margin:
        n += 1
    return n


def roc_curve(
    positive: FloatArray, negative: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve of a score that should be higher for ``positive`` than for ``negative`` samples.

    A sample is called positive when its score is ``>= threshold``. Thresholds are the distinct
    scores in decreasing order, preceded by ``+inf`` (nothing called positive), so the curve starts
    at (0, 0) and ends at (1, 1); tied scores move both rates at once (a diagonal step).

    Returns
    -------
    thresholds, false_positive_rate, true_positive_rate
        Three arrays of equal length.
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    if positive.size == 0 or negative.size == 0:
        raise ValueError(
            f"a ROC curve needs both classes, got {positive.size} positive and "
            f"{negative.size} negative samples"
        )
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    # count of scores >= t, for every threshold t, by binary search on the sorted scores
    positive_sorted = np.sort(positive)
    negative_sorted = np.sort(negative)
    called_positive = positive.size - np.searchsorted(positive_sorted, thresholds, side="left")
    called_negative = negative.size - np.searchsorted(negative_sorted, thresholds, side="left")
    true_positive_rate = np.concatenate([[0.0], called_positive / positive.size])
    false_positive_rate = np.concatenate([[0.0], called_negative / negative.size])
    return np.concatenate([[np.inf], thresholds]), false_positive_rate, true_positive_rate


def roc_auc(false_positive_rate: FloatArray, true_positive_rate: FloatArray) -> float:
    """Area under a ROC curve by the trapezoidal rule.

    For the curve of :func:`roc_curve` this equals ``U / (n_positive n_negative)``, the Mann–Whitney
    U of the positive sample (ties counting one half): the probability that a random positive
    outscores a random negative.
    """
    fpr = np.asarray(false_positive_rate, dtype=np.float64)
    tpr = np.asarray(true_positive_rate, dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
