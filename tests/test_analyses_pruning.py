"""False-positive pruning: counts, split and threshold choice against hand-computed tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instasal.analyses.pruning import lesion_counts, prune_false_positives, split_subjects
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
