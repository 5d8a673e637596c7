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
    "lesion_counts",
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
    predicted = on_validation[on_validation["type"].isin(["TP", "FP"])]
    candidates = np.unique(predicted[feature].dropna().to_numpy(dtype=float))
    best_threshold, best_f1 = -np.inf, lesion_counts(on_validation, feature, -np.inf).f1
    for threshold in candidates:
        f1 = lesion_counts(on_validation, feature, float(threshold)).f1
        if f1 > best_f1:
            best_threshold, best_f1 = float(threshold), f1
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
