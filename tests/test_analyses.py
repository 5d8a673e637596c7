"""Cohort statistics (SPEC §4) against hand-computed values and scipy called directly."""

from __future__ import annotations

from itertools import combinations, product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from instasal.analyses import (
    LesionTableError,
    aggregation_vs_size,
    error_detection,
    error_modes,
    holm,
    modality_reliance,
    rank_biserial,
    read_lesion_table,
    sign_pattern,
)
from instasal.analyses.findings import (
    aggregation_finding,
    error_modes_finding,
    modality_finding,
    sign_finding,
)
from instasal.analyses.statistics import roc_auc, roc_curve, spearman, wilcoxon_signed_rank

PAPER_MEDIANS = {"TP": 2.0, "FP": 1.6, "FN": 1.2, "TN": 0.5}


def typed_table(
    rng: np.random.Generator, medians: dict[str, float], n: int | dict[str, int] = 60
) -> pd.DataFrame:
    """Lesion rows per type with log-normal peak_FLAIR of the given medians (spread 0.15 in log)."""
    counts = n if isinstance(n, dict) else dict.fromkeys(medians, n)
    frames = []
    for kind, median in medians.items():
        size = counts[kind]
        frames.append(
            pd.DataFrame(
                {
                    "subject": [f"sub-{i % 7:02d}" for i in range(size)],
                    "id": np.arange(1, size + 1),
                    "type": kind,
                    "volume_mm3": rng.uniform(10, 500, size),
                    "peak_FLAIR": median * np.exp(rng.normal(0.0, 0.15, size)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# --- Holm, rank-biserial, ROC ------------------------------------------------------------------


def test_holm_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan():
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.02])  # m = 2: 0.01*2, max(0.02*1, 0.02)
    assert adjusted[0] == pytest.approx(0.02)
    assert np.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)


def test_holm_lies_between_raw_and_bonferroni_and_keeps_order(rng):
    p = rng.uniform(0, 0.2, 12)
    adjusted = holm(p)
    assert np.all(adjusted >= p)
    assert np.all(adjusted <= np.minimum(1, 12 * p) + 1e-15)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)


def test_rank_biserial_from_hand_computed_u():
    first, second = np.array([3.0, 5.0, 7.0]), np.array([1.0, 3.0, 8.0])
    # pairs first > second: 3>1, 3=3 (half), 5>1, 5>3, 7>1, 7>3 -> U = 5.5 of 9 pairs
    u = stats.mannwhitneyu(first, second).statistic
    assert u == 5.5
    assert rank_biserial(u, 3, 3) == pytest.approx(1 - 2 * 3.5 / 9)  # 2/9: first tends larger


def test_rank_biserial_is_probability_difference_and_antisymmetric(rng):
    first = rng.integers(0, 6, 15).astype(float)  # many ties
    second = rng.integers(1, 8, 11).astype(float)
    greater = (first[:, None] > second[None, :]).mean()
    smaller = (first[:, None] < second[None, :]).mean()
    u_first = stats.mannwhitneyu(first, second).statistic
    u_second = stats.mannwhitneyu(second, first).statistic
    assert rank_biserial(u_first, 15, 11) == pytest.approx(greater - smaller)
    assert rank_biserial(u_second, 11, 15) == pytest.approx(-(greater - smaller))


def test_auc_equals_mann_whitney_u_over_pairs(rng):
    positive = np.round(rng.normal(1.0, 1.0, 40), 1)  # rounded: ties within and across classes
    negative = np.round(rng.normal(0.3, 1.0, 55), 1)
    thresholds, fpr, tpr = roc_curve(positive, negative)
    u = stats.mannwhitneyu(positive, negative).statistic
    assert roc_auc(fpr, tpr) == pytest.approx(u / (40 * 55), abs=1e-12)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isinf(thresholds[0])
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(tpr) >= 0)
    # a threshold's rates are the fractions of scores >= it
    k = len(thresholds) // 2
    assert tpr[k] == pytest.approx(np.mean(positive >= thresholds[k]))
    assert fpr[k] == pytest.approx(np.mean(negative >= thresholds[k]))


def test_auc_of_separable_reversed_and_identical_sets():
    low, high = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0])
    assert roc_auc(*roc_curve(high, low)[1:]) == 1.0
    assert roc_auc(*roc_curve(low, high)[1:]) == 0.0
    same = np.array([0.5, 0.7, 0.9, 0.9])
    assert roc_auc(*roc_curve(same, same.copy())[1:]) == pytest.approx(0.5)


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="0 negative"):
        roc_curve(np.array([1.0]), np.array([]))


def test_wilcoxon_and_spearman_report_what_they_cannot_compute():
    assert wilcoxon_signed_rank(np.zeros(5)).reason == "every value is 0"
    assert not wilcoxon_signed_rank(np.array([1.0])).computable
    assert spearman(np.arange(5.0), np.ones(5)).reason == "constant input"
    assert not spearman(np.arange(2.0), np.arange(2.0)).computable


# --- error modes ------------------------------------------------------------------------------


def test_error_modes_recovers_ordering_and_equals_scipy(rng):
    table = typed_table(rng, PAPER_MEDIANS)
    before = table.copy()
    result = error_modes(table)
    pd.testing.assert_frame_equal(table, before)  # input untouched
    assert result.median_order == ("TP", "FP", "FN", "TN")
    assert result.strictly_ordered
    for kind in PAPER_MEDIANS:
        values = table.loc[table["type"] == kind, "peak_FLAIR"].to_numpy()
        group = result.group(kind).distribution
        assert group.n == 60
        assert group.median == pytest.approx(np.median(values))
        assert group.iqr == pytest.approx(np.subtract(*np.percentile(values, [75, 25])))
    assert [(t.first, t.second) for t in result.tests] == list(combinations(PAPER_MEDIANS, 2))
    raw = []
    for test in result.tests:
        x = table.loc[table["type"] == test.first, "peak_FLAIR"].to_numpy()
        y = table.loc[table["type"] == test.second, "peak_FLAIR"].to_numpy()
        direct = stats.mannwhitneyu(x, y, alternative="two-sided")
        assert test.u_statistic == direct.statistic
        assert test.p_value == direct.pvalue
        assert test.rank_biserial > 0  # the earlier type is the larger one in this construction
        raw.append(direct.pvalue)
    assert [t.p_holm for t in result.tests] == pytest.approx(holm(raw).tolist())
    assert error_modes_finding(result).verdict == "reproduced"


def test_error_modes_finding_follows_the_data_not_the_paper(rng):
    swapped = typed_table(rng, {"TP": 2.0, "FP": 1.2, "FN": 1.6, "TN": 0.5})
    result = error_modes(swapped)
    assert result.median_order == ("TP", "FN", "FP", "TN")
    assert error_modes_finding(result).verdict == "not reproduced"
    # FN a copy of FP: the medians tie and that pair's test gives p = 1, so not reproduced
    same = typed_table(rng, PAPER_MEDIANS)
    same.loc[same["type"] == "FN", "peak_FLAIR"] = same.loc[
        same["type"] == "FP", "peak_FLAIR"
    ].to_numpy()
    tied = error_modes(same)
    assert not tied.strictly_ordered
    assert {(t.first, t.second): t.p_value for t in tied.tests}["FP", "FN"] == 1.0
    assert error_modes_finding(tied).verdict == "not reproduced"


def test_error_modes_with_missing_and_single_types(rng):
    table = typed_table(rng, {"TP": 2.0, "FP": 1.0, "FN": 0.5}, n={"TP": 20, "FP": 15, "FN": 1})
    result = error_modes(table)
    tests = {(t.first, t.second): t for t in result.tests}
    assert tests["TP", "FP"].computable
    for pair in [("TP", "FN"), ("FP", "FN"), ("TP", "TN"), ("FP", "TN"), ("FN", "TN")]:
        assert not tests[pair].computable
        assert np.isnan(tests[pair].p_value)
        assert np.isnan(tests[pair].p_holm)
    assert "FN has 1 value(s)" in tests["TP", "FN"].reason
    assert "TN has 0 value(s)" in tests["FN", "TN"].reason
    assert tests["TP", "FP"].p_holm == tests["TP", "FP"].p_value  # a family of one test
    assert result.median_order == ("TP", "FP", "FN")
    assert result.group("TN").distribution.n == 0
    assert error_modes_finding(result).verdict == "not testable"


def test_error_modes_counts_missing_values_apart(rng):
    table = typed_table(rng, PAPER_MEDIANS, n=10)
    table.loc[[0, 1], "peak_FLAIR"] = np.nan  # two TP rows
    group = error_modes(table).group("TP")
    assert (group.distribution.n, group.n_missing) == (8, 2)


def test_missing_column_names_the_column_and_the_file(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "lesions.tsv"
    typed_table(rng, PAPER_MEDIANS, n=3).drop(columns="peak_FLAIR").to_csv(
        path, sep="\t", index=False
    )
    table = read_lesion_table(path)
    with pytest.raises(LesionTableError, match=r"lesions\.tsv: no column 'peak_FLAIR'"):
        error_modes(table)
    with pytest.raises(LesionTableError, match="not found"):
        read_lesion_table(tmp_path / "absent.tsv")


def test_read_lesion_table_reads_na_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "lesions.tsv"
    path.write_text("subject\tid\ttype\tvolume_mm3\tpeak_FLAIR\nsub-01\t1\tTP\t8.0\tn/a\n")
    table = read_lesion_table(path)
    assert np.isnan(table["peak_FLAIR"][0])
    assert table.attrs["source"] == str(path)


# --- modality reliance and sign pattern -------------------------------------------------------


def _reliance_table(rng: np.random.Generator) -> pd.DataFrame:
    t1w = rng.uniform(0.2, 1.0, 20)
    shift = np.full(20, 0.8)
    shift[:3] = -0.1  # T1w larger in exactly 3 of 20 lesions
    flair = t1w + shift
    rows = pd.DataFrame(
        {
            "type": "TP",
            "volume_mm3": 50.0,
            "peak_FLAIR": flair,
            "peak_T1w": t1w,
            "reliance_FLAIR": flair / (np.abs(flair) + np.abs(t1w)),
        }
    )
    # FP rows with T1w far above FLAIR: excluded by types=("TP",), they must not count
    decoys = rows.head(5).assign(type="FP", peak_T1w=100.0)
    return pd.concat([rows, decoys], ignore_index=True)


def test_modality_reliance_by_construction(rng):
    table = _reliance_table(rng)
    result = modality_reliance(table)
    tp = table[table["type"] == "TP"]
    differences = (tp["peak_FLAIR"] - tp["peak_T1w"]).to_numpy()
    assert result.difference.n == 20
    assert result.fraction_first_dominates == pytest.approx(17 / 20)
    assert result.difference.median == pytest.approx(0.8)
    assert result.test.p_value == stats.wilcoxon(differences).pvalue
    assert result.reliance.median == pytest.approx(np.median(tp["reliance_FLAIR"]))
    assert modality_finding(result).verdict == "reproduced"
    reversed_channels = modality_reliance(table.assign(reliance_T1w=0.0), channels=("T1w", "FLAIR"))
    assert reversed_channels.difference.median == pytest.approx(-0.8)
    assert modality_finding(reversed_channels).verdict == "not reproduced"


def test_sign_pattern_by_construction(rng):
    inside = rng.uniform(0.1, 1.0, 30)
    inside[:4] *= -0.1  # 26 of 30 positive; the 4 negatives are the smallest in magnitude
    ring = -rng.uniform(0.05, 0.5, 30)
    ring[:2] = np.nan  # lesions without a ring
    ring[2:5] = 0.01  # 3 positive rings among 28, smallest in magnitude
    table = pd.DataFrame(
        {"type": "TP", "volume_mm3": 1.0, "inside_mean_FLAIR": inside, "ring_mean_FLAIR": ring}
    )
    result = sign_pattern(table, "FLAIR")
    assert result.fraction_inside_positive == pytest.approx(26 / 30)
    assert (result.ring.n, result.n_ring_missing) == (28, 2)
    assert result.fraction_ring_negative == pytest.approx(25 / 28)
    # both signs as expected: rows 5..29 (rows 0-3 negative inside, 0-1 no ring, 2-4 ring > 0)
    assert result.fraction_both == pytest.approx(25 / 28)
    assert result.inside_test.p_value == stats.wilcoxon(inside).pvalue
    assert result.ring_test.p_value == stats.wilcoxon(ring[2:]).pvalue
    assert sign_finding(result).verdict == "reproduced"
    flipped = sign_pattern(table.assign(ring_mean_FLAIR=-ring), "FLAIR")
    assert sign_finding(flipped).verdict == "not reproduced"


# --- aggregation vs size, error detection -----------------------------------------------------


def _size_tables(
    rng: np.random.Generator, n: int, max_slope: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean peaks falling as 1/volume; max peaks flat (or falling by ``max_slope`` per mm³)."""
    volume = rng.uniform(10, 2000, n)
    base = pd.DataFrame({"type": "TP", "volume_mm3": volume})
    table_max = base.assign(peak_FLAIR=rng.normal(2.0, 0.2, n) - max_slope * volume)
    table_mean = base.assign(peak_FLAIR=5.0 / volume * np.exp(rng.normal(0, 0.1, n)))
    return table_max, table_mean


def test_aggregation_vs_size_sign_on_constructed_data(rng):
    table_max, table_mean = _size_tables(rng, 1000)
    volume = table_max["volume_mm3"]
    result = aggregation_vs_size(table_max, table_mean)
    assert result.mean.rho < -0.9
    assert result.mean.rho == stats.spearmanr(volume, table_mean["peak_FLAIR"]).statistic
    assert result.max.p_value == stats.spearmanr(volume, table_max["peak_FLAIR"]).pvalue
    assert abs(result.max.rho) < 0.1
    assert aggregation_finding(result).verdict == "reproduced"
    both_fall = aggregation_vs_size(table_mean, table_mean)
    assert aggregation_finding(both_fall).verdict == "not reproduced"
    assert aggregation_finding(None).verdict == "not testable"


def test_max_not_falling_must_be_shown_not_assumed(rng):
    """A weak but real fall of max peaks (ρ ≈ −0.3) is no "does not fall"; and at 80 lesions a
    flat max cannot show that it does not fall (the old rule, "no fall with p < 0.001", passed
    on that absence of evidence)."""
    falling_max, table_mean = _size_tables(rng, 1000, max_slope=0.0001)
    weak = aggregation_vs_size(falling_max, table_mean)
    assert -0.4 < weak.max.rho < -0.2
    assert aggregation_finding(weak).verdict == "not reproduced"

    small = aggregation_vs_size(*_size_tables(rng, 80))
    finding = aggregation_finding(small)
    assert finding.verdict == "not reproduced"
    assert "250 or more lesions let a flat one pass" in finding.note


def test_error_detection_auc_is_mann_whitney(rng):
    table = typed_table(rng, PAPER_MEDIANS, n={"TP": 30, "FP": 25, "FN": 5, "TN": 5})
    result = error_detection(table)
    tp = table.loc[table["type"] == "TP", "peak_FLAIR"]
    fp = table.loc[table["type"] == "FP", "peak_FLAIR"]
    assert result.auc == pytest.approx(stats.mannwhitneyu(tp, fp).statistic / (30 * 25))
    assert (result.n_positive, result.n_negative) == (30, 25)
    assert len(result.to_frame()) == len(np.unique(np.r_[tp, fp])) + 1
    none = error_detection(table[table["type"] != "FP"])
    assert np.isnan(none.auc)
    assert none.reason.startswith("no FP domain")


@pytest.mark.parametrize(("n_first", "n_second"), list(product([2, 5], [3, 7])))
def test_rank_biserial_bounds(n_first, n_second):
    assert rank_biserial(n_first * n_second, n_first, n_second) == 1.0
    assert rank_biserial(0, n_first, n_second) == -1.0
