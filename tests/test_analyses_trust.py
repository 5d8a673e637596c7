"""Cohort verdicts of the trust checks on hand-built tables whose answers are worked out here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instasal.analyses.trust_summary import (
    faithfulness_summary,
    negative_neighbourhood,
    randomisation_summary,
)
from instasal.errors import ConfigurationError

SHELLS = [(0, 0.0, 0.0), (1, 0.0, 2.0), (2, 2.0, 4.0), (3, 4.0, 6.0), (4, 6.0, 8.0), (5, 8.0, 10.0)]


def _profiles(curves: dict[tuple[str, int], list[float]], kind: str = "TP") -> pd.DataFrame:
    rows = [
        (subject, lesion, kind, "FLAIR", shell, inner, outer, 10, mean)
        for (subject, lesion), means in curves.items()
        for (shell, inner, outer), mean in zip(SHELLS, means, strict=True)
    ]
    columns = ["subject", "lesion", "type", "channel", "shell", "inner_mm", "outer_mm", "n_voxels"]
    return pd.DataFrame(rows, columns=[*columns, "mean"])


def test_negative_neighbourhood_reproduced_when_every_subject_dips_below_zero() -> None:
    dip = [2.0, 0.5, -0.1, -0.4, -0.2, -5.0]  # shells 0, 1 and 5 lie outside the 2–8 mm band
    # Lesion ids differ between subjects, as they do in lesion tables.
    curves = {(f"s{i}", 10 * i + lesion): dip for i in range(4) for lesion in (1, 2)}
    verdict = negative_neighbourhood(_profiles(curves), channel="FLAIR")
    assert verdict["minimum"] == pytest.approx(-0.4, abs=1e-12)
    assert verdict["minimum_outer_mm"] == 6.0
    assert verdict["interval"] == pytest.approx([-0.4, -0.4], abs=1e-12)
    assert verdict["reproduced"] and verdict["share_negative"] == 1.0
    assert (verdict["n_lesions"], verdict["n_subjects"]) == (8, 4)
    assert verdict["sign_test"]["n_below"] == 4
    assert verdict["sign_test"]["p_value"] == pytest.approx(1 / 16, rel=1e-12)


def test_one_positive_subject_keeps_the_interval_above_zero_at_its_upper_end() -> None:
    curves = {("s0", 1): [1, 1, -1.0, -1.0, -1.0, 0], ("s1", 1): [1, 1, 0.5, 0.5, 0.5, 0]}
    curves |= {("s2", 1): [1, 1, 0.5, 0.5, 0.5, 0]}
    profiles = pd.concat([_profiles(curves), _profiles({("s3", 1): [0, 0, -9, -9, -9, 0]}, "FP")])
    verdict = negative_neighbourhood(profiles, channel="FLAIR")
    # The mean TP profile is flat at 0 in the band; a resample of only s1/s2 gives +0.5.
    assert verdict["minimum"] == pytest.approx(0.0, abs=1e-12)
    assert verdict["interval"][1] == pytest.approx(0.5, abs=1e-12)
    assert not verdict["reproduced"]
    assert verdict["share_negative"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigurationError, match="lacks the columns"):
        negative_neighbourhood(profiles.drop(columns="subject"), channel="FLAIR")


def test_randomisation_summary_applies_the_cohort_share() -> None:
    verdicts = pd.DataFrame(
        {
            "method": ["smoothgrad"] * 10 + ["gradcam"] * 10,
            "passes": [True] * 9 + [False] + [True] * 8 + [False] * 2,
            "crossing_step": [1, 2, 2, 3, 3, 3, 4, 4, 4, None] + [1] * 8 + [None] * 2,
        }
    )
    summary = randomisation_summary(verdicts)
    assert summary["smoothgrad"]["passes"] and summary["smoothgrad"]["share_passing"] == 0.9
    assert not summary["gradcam"]["passes"]
    assert summary["smoothgrad"]["median_crossing_step"] == 3.0


def test_faithfulness_summary_intervals_and_the_gradcam_comparison() -> None:
    lesions = pd.DataFrame(
        {
            "subject": np.repeat(["a", "b", "c"], 2),
            "deletion_gain_smoothgrad_logit": [0.2, 0.2, 0.1, 0.1, 0.3, 0.3],
            "insertion_gain_smoothgrad_logit": [-0.1, 0.1, -0.1, 0.1, -0.1, 0.1],
            "deletion_auc_smoothgrad_logit": [0.3] * 6,
            "deletion_auc_gradcam_logit": [0.5] * 6,
        }
    )
    summary = faithfulness_summary(lesions)
    gain = summary["deletion_gain_smoothgrad_logit"]
    assert gain["estimate"] == pytest.approx(0.2)
    assert 0.1 - 1e-12 <= gain["low"] <= gain["high"] <= 0.3 + 1e-12
    assert gain["better_than_image"]
    insertion = summary["insertion_gain_smoothgrad_logit"]
    assert insertion["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert not insertion["better_than_image"]
    lead = summary["deletion_auc_smoothgrad_minus_gradcam_logit"]
    assert (lead["estimate"], lead["low"], lead["high"]) == pytest.approx((-0.2, -0.2, -0.2))
    with pytest.raises(ConfigurationError, match="lacks every gain column"):
        faithfulness_summary(lesions[["subject"]])
