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
from instasal.trust import SIGN_PLACES


def _rings(values: dict[str, tuple[float, float]], subjects: int, kind: str = "TP") -> pd.DataFrame:
    """Two lesions per subject, every lesion with the same (trained, random) value per ring;
    rings not named are 0 in both."""
    rows = []
    for subject in range(subjects):
        for lesion in (1, 2):
            row: dict[str, object] = {"subject": f"s{subject}", "id": lesion, "type": kind}
            for place in SIGN_PLACES:
                trained, random = values.get(place, (0.0, 0.0))
                row |= {f"sign_{place}_smoothgrad": trained}
                row |= {f"sign_{place}_smoothgrad_random": random}
            rows.append(row)
    return pd.DataFrame(rows)


def test_negative_neighbourhood_reproduced_when_every_subject_is_below_zero_and_the_null() -> None:
    table = pd.concat([_rings({"ring_4_6mm": (-0.2, 0.05)}, 12), _rings({}, 3, "FP")])
    found = negative_neighbourhood(table)
    assert found["verdict"] == "reproduced" and not found["note"]
    assert (found["n_lesions"], found["n_subjects"]) == (24, 12)
    rings = {ring["place"]: ring for ring in found["rings"]}
    deep = rings["ring_4_6mm"]
    assert deep["trained"]["estimate"] == pytest.approx(-0.2, abs=1e-12)
    assert deep["difference"]["estimate"] == pytest.approx(-0.25, abs=1e-12)
    assert deep["trained"]["level"] == pytest.approx(0.999, abs=1e-12)
    # both sign tests 12 of 12 below: p = 2⁻¹²; Holm over four rings multiplies the smallest by 4
    assert deep["p"] == pytest.approx(0.5**12, rel=1e-12)
    assert deep["p_holm"] == pytest.approx(4 * 0.5**12, rel=1e-12)
    # a ring at 0 has no sign to test: p = 1, kept in Holm's family
    assert rings["ring_0_2mm"]["p"] == 1.0


def test_one_subject_above_zero_leaves_the_finding_not_reproduced() -> None:
    table = _rings({"ring_2_4mm": (-0.3, 0.0)}, 11)
    rising = _rings({"ring_2_4mm": (0.3, 0.0)}, 1).assign(subject="s11")
    found = negative_neighbourhood(pd.concat([table, rising]))
    ring = {r["place"]: r for r in found["rings"]}["ring_2_4mm"]
    # 11 of 12 below: P(X ≥ 11) = 13 / 4096, times 4 rings > 0.001
    assert ring["p"] == pytest.approx(13 / 4096, rel=1e-12)
    assert found["verdict"] == "not reproduced"
    with pytest.raises(ConfigurationError, match="lacks the columns"):
        negative_neighbourhood(table.drop(columns="subject"))


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
