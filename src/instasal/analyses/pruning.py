"""False-positive pruning by a saliency threshold (SPEC §4, "Error detection", beyond the paper).

Predicted lesions whose feature (default ``peak_FLAIR``) is below a threshold are removed. The
threshold is chosen on validation subjects (the F1-maximising one; ties keep more lesions) and
judged on the other, test, subjects, with lesion-wise precision, recall and F1 before and after.

Counting, per split: kept TP and FP predicted lesions; false negatives are the FN domains plus the
TP lesions pruned away. (A reference lesion matched by two predicted components counts twice as
TP; a pruned TP counts as one missed lesion.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses._table import require_columns
from instasal.errors import ConfigurationError

__all__ = [
    "LesionCounts",
    "PruningResult",
    "RegionPruningComparison",
    "RegionPruningResult",
    "compare_pruning_features",
    "compare_region_pruning",
    "known_region",
    "lesion_counts",
    "prune_by_region",
    "prune_false_positives",
    "split_subjects",
]


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-wise counts and the scores derived from them."""

    true_positive: int
    false_positive: int
    false_negative: int

    @property
    def precision(self) -> float:
        kept = self.true_positive + self.false_positive
        return self.true_positive / kept if kept else float("nan")

    @property
    def recall(self) -> float:
        total = self.true_positive + self.false_negative
        return self.true_positive / total if total else float("nan")

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positive + self.false_positive + self.false_negative
        return 2 * self.true_positive / denominator if denominator else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "tp": self.true_positive,
            "fp": self.false_positive,
            "fn": self.false_negative,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def lesion_counts(table: pd.DataFrame, feature: str, threshold: float) -> LesionCounts:
    """Counts after removing predicted lesions with ``feature < threshold`` (NaN: kept)."""
    predicted = table[table["type"].isin(["TP", "FP"])]
    pruned = predicted[feature] < threshold
    tp_kept = int(((predicted["type"] == "TP") & ~pruned).sum())
    fp_kept = int(((predicted["type"] == "FP") & ~pruned).sum())
    tp_pruned = int(((predicted["type"] == "TP") & pruned).sum())
    missed = int((table["type"] == "FN").sum())
    return LesionCounts(tp_kept, fp_kept, missed + tp_pruned)


def split_subjects(
    subjects: Sequence[str], validation_fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A seeded split of subject ids into validation and test (each non-empty)."""
    unique = sorted(set(subjects))
    if len(unique) < 2:
        raise ConfigurationError(
            f"pruning needs at least 2 subjects to split into validation and test, got {unique}"
        )
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigurationError(
            f"validation_fraction must be in (0, 1), got {validation_fraction}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    n_validation = min(len(unique) - 1, max(1, round(validation_fraction * len(unique))))
    validation = sorted(unique[i] for i in order[:n_validation])
    test = sorted(unique[i] for i in order[n_validation:])
    return validation, test


@dataclass(frozen=True)
class PruningResult:
    """The chosen threshold and the test-split scores before and after pruning."""

    feature: str
    threshold: float
    validation_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    validation_before: LesionCounts
    validation_after: LesionCounts
    test_before: LesionCounts
    test_after: LesionCounts

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "rule": "F1-maximising threshold on the validation subjects (ties: the lowest)",
            "validation_subjects": list(self.validation_subjects),
            "test_subjects": list(self.test_subjects),
            "validation_before": self.validation_before.to_dict(),
            "validation_after": self.validation_after.to_dict(),
            "test_before": self.test_before.to_dict(),
            "test_after": self.test_after.to_dict(),
        }


def prune_false_positives(
    table: pd.DataFrame,
    feature: str = "peak_FLAIR",
    *,
    validation_fraction: float = 0.5,
    seed: int = 0,
) -> PruningResult:
    """Choose a pruning threshold on validation subjects and score it on test subjects.

    Parameters
    ----------
    table
        A cohort lesion table with ``subject``, ``type`` (TP/FP/FN…) and ``feature`` columns.
    feature
        The lesion-table column thresholded (higher = more lesion-like).
    validation_fraction, seed
        The seeded split of subjects.
    """
    require_columns(table, ["subject", "type", feature])
    validation, test = split_subjects(
        table["subject"].astype(str).tolist(), validation_fraction, seed
    )
    on_validation = table[table["subject"].astype(str).isin(validation)]
    on_test = table[table["subject"].astype(str).isin(test)]
    best_threshold = _best_threshold(on_validation, feature)
    return PruningResult(
        feature=feature,
        threshold=float(best_threshold),
        validation_subjects=tuple(validation),
        test_subjects=tuple(test),
        validation_before=lesion_counts(on_validation, feature, -np.inf),
        validation_after=lesion_counts(on_validation, feature, best_threshold),
        test_before=lesion_counts(on_test, feature, -np.inf),
        test_after=lesion_counts(on_test, feature, best_threshold),
    )


UNKNOWN_REGIONS = ("none", "n/a", "other")
"""Region labels of domains with no known region (like missing values)."""


def known_region(regions: pd.Series) -> pd.Series:
    """Which rows name a region (not missing, ``none``, ``n/a`` or ``other``)."""
    return regions.notna() & ~regions.astype(str).isin(UNKNOWN_REGIONS)


def _best_threshold(table: pd.DataFrame, feature: str) -> float:
    """The F1-maximising pruning threshold on ``table`` (``-inf``: prune nothing; ties: lowest)."""
    kinds = table["type"].to_numpy()
    values = table[feature].to_numpy(dtype=float)
    tp, fp = np.sort(values[kinds == "TP"]), np.sort(values[kinds == "FP"])
    scores = np.concatenate([tp, fp])
    candidates = np.unique(scores[~np.isnan(scores)])
    baseline = lesion_counts(table, feature, -np.inf)
    if candidates.size == 0:
        return -np.inf
    # Pruning removes values < t; NaN sorts last, so it is never below a threshold (kept).
    tp_kept = tp.size - np.searchsorted(tp, candidates, side="left")
    fp_kept = fp.size - np.searchsorted(fp, candidates, side="left")
    missed = baseline.false_negative + (tp.size - tp_kept)
    denominator = 2 * tp_kept + fp_kept + missed
    f1 = np.divide(2 * tp_kept, denominator, out=np.zeros(candidates.size), where=denominator > 0)
    best = int(np.argmax(f1))  # the first maximum: the lowest threshold among ties
    return float(candidates[best]) if f1[best] > baseline.f1 else -np.inf


def _summed(counts: Sequence[LesionCounts]) -> LesionCounts:
    return LesionCounts(
        sum(c.true_positive for c in counts),
        sum(c.false_positive for c in counts),
        sum(c.false_negative for c in counts),
    )


@dataclass(frozen=True)
class RegionPruningResult:
    """One global threshold against one threshold per lesion region, on one subject split.

    ``thresholds`` maps each region to its own threshold (chosen on the validation subjects of
    that region; a region without predicted lesions there keeps the global threshold).
    ``test_global`` / ``test_regional`` are the test-split counts over all regions; ``by_region``
    holds, per region, the test counts before, with the global and with the regional threshold.
    """

    feature: str
    global_threshold: float
    thresholds: dict[str, float]
    test_before: LesionCounts
    test_global: LesionCounts
    test_regional: LesionCounts
    by_region: dict[str, dict[str, LesionCounts]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "global_threshold": self.global_threshold,
            "thresholds": self.thresholds,
            "test_before": self.test_before.to_dict(),
            "test_global": self.test_global.to_dict(),
            "test_regional": self.test_regional.to_dict(),
            "by_region": {
                region: {name: counts.to_dict() for name, counts in scores.items()}
                for region, scores in self.by_region.items()
            },
        }


def prune_by_region(
    table: pd.DataFrame,
    feature: str = "peak_FLAIR",
    *,
    region_column: str = "region",
    validation_fraction: float = 0.5,
    seed: int = 0,
) -> RegionPruningResult:
    """Per-region pruning thresholds against one global threshold (issue 8, open question Q2).

    Both are chosen the same way (F1-maximising on the validation subjects, see
    :func:`prune_false_positives`): the global one on all lesions, each regional one on the lesions
    of its region only (FN domains counted in their own region). Both are scored on the test
    subjects. Rows whose region is unknown (``none``, ``n/a``, ``other``) are left out of both.
    """
    require_columns(table, ["subject", "type", feature, region_column])
    known = table[known_region(table[region_column])]
    regions = sorted(known[region_column].astype(str).unique())
    if not regions:
        raise ConfigurationError(
            f"column {region_column!r} names no region (only none/n/a); give the run a region "
            "atlas (instasal analyse --regions-from DATASET)"
        )
    validation, test = split_subjects(
        table["subject"].astype(str).tolist(), validation_fraction, seed
    )
    subjects = known["subject"].astype(str)
    on_validation, on_test = known[subjects.isin(validation)], known[subjects.isin(test)]
    global_threshold = _best_threshold(on_validation, feature)
    thresholds: dict[str, float] = {}
    by_region: dict[str, dict[str, LesionCounts]] = {}
    for region in regions:
        region_validation = on_validation[on_validation[region_column].astype(str) == region]
        region_test = on_test[on_test[region_column].astype(str) == region]
        has_predictions = region_validation["type"].isin(["TP", "FP"]).any()
        thresholds[region] = (
            _best_threshold(region_validation, feature) if has_predictions else global_threshold
        )
        by_region[region] = {
            "before": lesion_counts(region_test, feature, -np.inf),
            "global": lesion_counts(region_test, feature, global_threshold),
            "regional": lesion_counts(region_test, feature, thresholds[region]),
        }
    return RegionPruningResult(
        feature=feature,
        global_threshold=global_threshold,
        thresholds=thresholds,
        test_before=_summed([s["before"] for s in by_region.values()]),
        test_global=_summed([s["global"] for s in by_region.values()]),
        test_regional=_summed([s["regional"] for s in by_region.values()]),
        by_region=by_region,
    )


@dataclass(frozen=True)
class RegionPruningComparison:
    """Global against per-region thresholds over many seeded subject splits.

    ``splits`` has one row per split: test F1 before pruning, with the global and with the
    regional thresholds. Splits of one cohort share subjects, so they are not independent samples
    and no p-value is given: the distribution of the paired differences is the result.
    """

    feature: str
    splits: pd.DataFrame
    median_f1_difference: float
    f1_difference_range_90: tuple[float, float]
    share_regional_better: float
    share_regional_worse: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "n_splits": len(self.splits),
            "median_test_f1": {
                name: float(self.splits[f"f1_{name}"].median())
                for name in ("before", "global", "regional")
            },
            "median_f1_difference_regional_minus_global": self.median_f1_difference,
            "f1_difference_5th_95th_percentile": list(self.f1_difference_range_90),
            "share_regional_better": self.share_regional_better,
            "share_regional_worse": self.share_regional_worse,
            "rule": "per split: thresholds chosen on validation subjects, F1 on test subjects",
        }


def compare_region_pruning(
    table: pd.DataFrame,
    feature: str = "peak_FLAIR",
    *,
    n_splits: int = 100,
    region_column: str = "region",
    validation_fraction: float = 0.5,
) -> RegionPruningComparison:
    """:func:`prune_by_region` over ``n_splits`` seeded splits (seeds 0 … n_splits − 1).

    One split of a small cohort is mostly luck; the distribution over splits says whether
    regional thresholds generalise better than one global threshold.
    """
    if n_splits < 1:
        raise ConfigurationError(f"n_splits must be >= 1, got {n_splits}")
    rows = []
    for seed in range(n_splits):
        result = prune_by_region(
            table,
            feature,
            region_column=region_column,
            validation_fraction=validation_fraction,
            seed=seed,
        )
        rows.append(
            {
                "seed": seed,
                "f1_before": result.test_before.f1,
                "f1_global": result.test_global.f1,
                "f1_regional": result.test_regional.f1,
            }
        )
    splits = pd.DataFrame(rows)
    difference = (splits["f1_regional"] - splits["f1_global"]).dropna().to_numpy()
    if difference.size == 0:
        raise ConfigurationError("no split gave a test F1 (no predicted or missed lesion to score)")
    low, high = np.percentile(difference, [5, 95])
    return RegionPruningComparison(
        feature=feature,
        splits=splits,
        median_f1_difference=float(np.median(difference)),
        f1_difference_range_90=(float(low), float(high)),
        share_regional_better=float((difference > 0).mean()),
        share_regional_worse=float((difference < 0).mean()),
    )


def compare_pruning_features(
    table: pd.DataFrame,
    features: Sequence[str],
    *,
    n_splits: int = 100,
    validation_fraction: float = 0.5,
) -> pd.DataFrame:
    """Global pruning by each feature over the same seeded splits: is saliency the best feature?

    One row per feature present in ``table``: the median over ``n_splits`` splits (seeds
    0 … n_splits − 1) of the test F1 before and after pruning, and the share of splits where
    pruning raised the test F1.
    """
    if n_splits < 1:
        raise ConfigurationError(f"n_splits must be >= 1, got {n_splits}")
    rows = []
    for feature in (f for f in features if f in table.columns):
        results = [
            prune_false_positives(
                table, feature, validation_fraction=validation_fraction, seed=seed
            )
            for seed in range(n_splits)
        ]
        before = np.array([r.test_before.f1 for r in results])
        after = np.array([r.test_after.f1 for r in results])
        rows.append(
            {
                "feature": feature,
                "median_test_f1_before": float(np.nanmedian(before)),
                "median_test_f1_after": float(np.nanmedian(after)),
                "share_splits_improved": float(np.mean(after > before)),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "feature",
            "median_test_f1_before",
            "median_test_f1_after",
            "share_splits_improved",
        ],
    )
