"""False-positive pruning: counts, split and threshold choice against hand-computed tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instasal.analyses.pruning import (
    compare_region_pruning,
    lesion_counts,
    prune_by_region,
    prune_false_positives,
    split_subjects,
)
from instasal.errors import ConfigurationError


def _table(rows):
    return pd.DataFrame(rows, columns=["subject", "type", "peak_FLAIR"])


def test_counts_by_hand():
    table = _table(
        [
            ("a", "TP", 2.0),
            ("a", "TP", 0.5),
            ("a", "FP", 0.4),
            ("a", "FP", 1.5),
            ("a", "FN", 0.1),
            ("a", "TN", 0.0),
        ]
    )
    before = lesion_counts(table, "peak_FLAIR", -np.inf)
    assert (before.true_positive, before.false_positive, before.false_negative) == (2, 2, 1)
    assert before.precision == 0.5 and before.recall == pytest.approx(2 / 3)
    after = lesion_counts(table, "peak_FLAIR", 1.0)  # prunes TP 0.5 and FP 0.4
    assert (after.true_positive, after.false_positive, after.false_negative) == (1, 1, 2)
    assert after.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))


def test_split_is_seeded_disjoint_and_complete():
    subjects = [f"sub-{i:02d}" for i in range(10)]
    validation, test = split_subjects(subjects, 0.5, seed=3)
    assert sorted(validation + test) == subjects and not set(validation) & set(test)
    assert split_subjects(subjects, 0.5, seed=3) == (validation, test)
    assert split_subjects(subjects, 0.5, seed=4) != (validation, test)
    with pytest.raises(ConfigurationError, match="at least 2 subjects"):
        split_subjects(["sub-01"])


def test_threshold_found_on_validation_is_scored_on_test():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        subject = f"sub-{i}"
        rows += [(subject, "TP", v) for v in rng.uniform(2, 3, 5)]  # separable: TP high
        rows += [(subject, "FP", v) for v in rng.uniform(0, 1, 5)]
        rows += [(subject, "FN", 0.0)]
    result = prune_false_positives(_table(rows), seed=1)
    assert 0.0 < result.threshold <= 3.0
    assert result.test_after.false_positive == 0  # every FP is below every TP
    assert result.test_after.true_positive == result.test_before.true_positive
    assert result.test_after.precision == 1.0
    assert result.test_before.precision == pytest.approx(0.5)
    assert set(result.validation_subjects).isdisjoint(result.test_subjects)


def test_useless_feature_keeps_everything():
    rows = [(f"s{i}", kind, 1.0) for i in range(4) for kind in ("TP", "FP", "FN")]
    result = prune_false_positives(_table(rows))
    assert result.threshold == -np.inf
    assert result.test_after == result.test_before


def _regional_table(rows):
    return pd.DataFrame(rows, columns=["subject", "type", "peak_FLAIR", "region"])


def _two_region_rows(n_subjects: int = 8) -> list[tuple[str, str, float, str]]:
    """Region A: FPs at 1.0, TPs at 2.0; region B: FPs at 2.5, TPs at 3.0 (plus FNs, unknowns)."""
    rows = []
    for i in range(n_subjects):
        subject = f"sub-{i}"
        rows += [(subject, "TP", 2.0, "A"), (subject, "FP", 1.0, "A")]
        rows += [(subject, "TP", 3.0, "B"), (subject, "FP", 2.5, "B")]
        rows += [(subject, "FN", 0.0, "B"), (subject, "FP", 9.0, "none")]
    return rows


def test_regional_thresholds_separate_what_one_global_threshold_cannot():
    table = _regional_table(_two_region_rows())
    result = prune_by_region(table, seed=0)
    # Per region the classes separate: every FP pruned, every TP kept.
    assert result.thresholds == {"A": 2.0, "B": 3.0}
    assert result.global_threshold == 2.0
    assert result.test_regional.false_positive == 0
    assert result.test_regional.true_positive == result.test_before.true_positive
    # Globally, region B's FPs (2.5) lie above region A's TPs (2.0): a single cut loses.
    assert result.test_global.f1 < result.test_regional.f1
    # Rows of unknown region ("none") are left out of both; counts add up over regions.
    assert result.test_before.false_positive == sum(
        s["before"].false_positive for s in result.by_region.values()
    )
    assert result.test_before.false_positive == 2 * 4  # 4 test subjects × (A + B), no "none"


def test_region_without_validation_predictions_keeps_the_global_threshold():
    rows = [*_two_region_rows(4), ("sub-0", "TP", 5.0, "C")]
    table = _regional_table(rows)
    seed = next(
        s for s in range(100) if "sub-0" not in split_subjects(table["subject"].tolist(), 0.5, s)[0]
    )
    result = prune_by_region(table, seed=seed)
    assert result.thresholds["C"] == result.global_threshold
    assert result.by_region["C"]["regional"].true_positive == 1


def test_region_pruning_comparison_over_splits():
    table = _regional_table(_two_region_rows())
    comparison = compare_region_pruning(table, n_splits=12)
    assert len(comparison.splits) == 12
    assert comparison.share_regional_better + comparison.share_regional_worse <= 1.0
    assert comparison.share_regional_better == 1.0  # separable per region, not globally
    low, high = comparison.f1_difference_range_90
    assert 0 < low <= comparison.median_f1_difference <= high
    summary = comparison.to_dict()
    assert summary["n_splits"] == 12 and "wilcoxon_p" not in summary


def test_region_pruning_needs_regions_and_splits():
    table = _regional_table([(f"s{i}", "FP", 1.0, "none") for i in range(4)])
    with pytest.raises(ConfigurationError, match="names no region"):
        prune_by_region(table)
    with pytest.raises(ConfigurationError, match="n_splits"):
        compare_region_pruning(_regional_table(_two_region_rows()), n_splits=0)


def _naive_best_threshold(table: pd.DataFrame, feature: str) -> float:
    """The rule written as a loop: every candidate, strict improvement keeps the lowest."""
    predicted = table[table["type"].isin(["TP", "FP"])]
    best, best_f1 = -np.inf, lesion_counts(table, feature, -np.inf).f1
    for threshold in np.unique(predicted[feature].dropna().to_numpy(dtype=float)):
        f1 = lesion_counts(table, feature, float(threshold)).f1
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    return best


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_threshold_choice_equals_the_loop(seed: int) -> None:
    from instasal.analyses.pruning import _best_threshold

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    kinds = rng.choice(["TP", "FP", "FN", "TN"], size=n)
    values = np.round(rng.normal(size=n), 1)  # ties on purpose
    values[rng.random(n) < 0.1] = np.nan
    table = pd.DataFrame({"subject": "s", "type": kinds, "peak_FLAIR": values})
    assert _best_threshold(table, "peak_FLAIR") == _naive_best_threshold(table, "peak_FLAIR")


def _feature_table() -> pd.DataFrame:
    """prob_max separates TP from FP perfectly; peak_FLAIR is noise; FN rows have no probability."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        for kind, probability in (("TP", 0.9), ("FP", 0.2)):
            for _ in range(4):
                rows.append(
                    {
                        "subject": f"s{i}",
                        "type": kind,
                        "prob_max": probability if kind == "TP" else 0.2 + 0.05 * rng.random(),
                        "peak_FLAIR": rng.normal(),
                        "peak_FLAIR_voxel": "1,2,3",
                    }
                )
        rows.append({"subject": f"s{i}", "type": "FN", "prob_max": np.nan, "peak_FLAIR": 0.0})
    return pd.DataFrame(rows)


def test_feature_ranking_puts_the_separating_baseline_first():
    from instasal.analyses.detection import feature_ranking

    ranking = feature_ranking(_feature_table())
    assert ranking["feature"].tolist() == ["prob_max", "peak_FLAIR"]  # no *_voxel column
    assert ranking.loc[0, "auc"] == 1.0 and ranking.loc[0, "kind"] == "probability"
    assert ranking.loc[1, "kind"] == "SmoothGrad" and ranking.loc[1, "n_positive"] == 32


def test_pruning_features_compared_over_the_same_splits():
    from instasal.analyses.pruning import compare_pruning_features

    table = _feature_table()
    result = compare_pruning_features(table, ["peak_FLAIR", "prob_max", "absent"], n_splits=10)
    assert result["feature"].tolist() == ["peak_FLAIR", "prob_max"]
    by_feature = result.set_index("feature")
    assert by_feature["share_splits_improved"]["prob_max"] == 1.0
    # 4 test subjects: 16 TP kept, every FP pruned, 4 FN: F1 = 32 / (32 + 0 + 4)
    f1_after = by_feature["median_test_f1_after"]
    assert f1_after["prob_max"] == pytest.approx(32 / 36)
    assert f1_after["prob_max"] > f1_after["peak_FLAIR"]
    with pytest.raises(ConfigurationError, match="n_splits"):
        compare_pruning_features(table, ["prob_max"], n_splits=0)
