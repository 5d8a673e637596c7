"""A finding whose test cannot reach α at the cohort's size is "not testable at this n", with the
smallest p possible and the size that would do, worked out by hand here."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from instasal.analyses import error_modes, modality_reliance, sign_pattern
from instasal.analyses.cohort_report import build_cohort_report
from instasal.analyses.findings import error_modes_finding, modality_finding, sign_finding
from instasal.analyses.statistics import (
    least_sufficient_n,
    smallest_p_rank_sum,
    smallest_p_signed_rank,
)
from test_analyses_report import cohort_table


@pytest.mark.parametrize("n", [2, 6, 10, 11, 30])
def test_smallest_signed_rank_p_is_two_over_two_to_the_n(n: int) -> None:
    assert smallest_p_signed_rank(n) == pytest.approx(2.0 / 2**n, rel=1e-12)


@pytest.mark.parametrize(("first", "second"), [(6, 6), (3, 4), (2, 7)])
def test_smallest_rank_sum_p_is_two_over_the_number_of_orderings(first: int, second: int) -> None:
    assert smallest_p_rank_sum(first, second) == pytest.approx(2 / comb(first + second, first))


def test_least_sufficient_n_is_where_every_larger_n_suffices() -> None:
    # 2^-10 < 0.001 <= 2^-9: a signed-rank test needs 11 values
    assert least_sufficient_n(smallest_p_signed_rank) == 11
    # below α at 5, above it again at 6 and 7 (as exact then approximate p-values can be)
    assert least_sufficient_n(lambda n: 1e-4 if n == 5 or n >= 8 else 0.5) == 8
    assert least_sufficient_n(lambda n: 0.5, limit=20) is None


def _modality_table(differences: np.ndarray) -> pd.DataFrame:
    t1w = np.full(differences.size, 1.0)
    flair = t1w + differences
    return pd.DataFrame(
        {
            "type": "TP",
            "peak_FLAIR": flair,
            "peak_T1w": t1w,
            "reliance_FLAIR": flair / (np.abs(flair) + t1w),
        }
    )


def test_flair_larger_in_every_one_of_six_lesions_is_not_testable_at_this_n() -> None:
    six = modality_finding(modality_reliance(_modality_table(np.arange(1.0, 7.0))))
    assert six.verdict == "not testable at this n"
    assert "6 lesions" in six.note and "0.031" in six.note and "11 or more lesions" in six.note
    twelve = modality_finding(modality_reliance(_modality_table(np.arange(1.0, 13.0))))
    assert (twelve.verdict, twelve.note) == ("reproduced", "")  # p = 2/4096
    reversed_twelve = modality_finding(modality_reliance(_modality_table(-np.arange(1.0, 13.0))))
    assert reversed_twelve.verdict == "not reproduced"


def test_sign_pattern_of_ten_lesions_is_not_testable_at_this_n() -> None:
    inside = np.linspace(0.1, 1.0, 10)
    table = pd.DataFrame(
        {"type": "TP", "volume_mm3": 1.0, "inside_mean_FLAIR": inside, "ring_mean_FLAIR": -inside}
    )
    finding = sign_finding(sign_pattern(table, "FLAIR"))
    assert finding.verdict == "not testable at this n"
    assert "10 inside means" in finding.note and "0.002" in finding.note


def test_six_domains_per_type_cannot_reach_alpha_over_six_holm_corrected_pairs() -> None:
    # perfectly ordered TP > FP > FN > TN: each pair's p is 2/924, Holm's largest 6 * 2/924
    table = pd.DataFrame(
        {
            "type": np.repeat(["TP", "FP", "FN", "TN"], 6),
            "peak_FLAIR": np.arange(24.0, 0.0, -1.0),
        }
    )
    finding = error_modes_finding(error_modes(table))
    assert finding.verdict == "not testable at this n"
    assert f"{6 * 2 / 924:.2g}" in finding.note
    assert "11 or more domains of each type" in finding.note
    larger = pd.DataFrame(
        {
            "type": np.repeat(["TP", "FP", "FN", "TN"], 11),
            "peak_FLAIR": np.arange(44.0, 0.0, -1.0),
        }
    )
    assert error_modes_finding(error_modes(larger)).verdict == "reproduced"


def test_cohort_report_says_not_testable_at_this_n_with_the_n_needed() -> None:
    table = cohort_table(np.random.default_rng(0), subjects=("sub-01",), per_type=6)
    report = build_cohort_report(table, title="one subject", provenance={})
    verdicts = {f.key: f.verdict for f in report.analysis.findings}
    assert verdicts["error_modes"] == verdicts["modality_reliance"] == "not testable at this n"
    assert "not reproduced" not in report.html.split("The paper's findings")[1].split("<h2")[0]
    assert "it needs 11 or more domains of each type" in report.html
    assert 'class="verdict not-testable-at-this-n"' in report.html
