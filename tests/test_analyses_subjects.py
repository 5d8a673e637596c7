"""Subject-level statistics against closed forms: the bootstrap standard error of a mean of
cluster means, invariance to repeating a subject's domains, and the binomial sign test by hand."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from instasal.analyses.subjects import cluster_bootstrap, subject_sign_test
from instasal.errors import ConfigurationError


def test_interval_matches_the_standard_error_of_subject_means() -> None:
    rng = np.random.default_rng(0)
    subject_effect = rng.normal(0.0, 1.0, size=40)
    # Three domains per subject sharing its effect, plus a little domain noise.
    values = np.repeat(subject_effect, 3) + rng.normal(0.0, 0.05, size=120)
    subjects = np.repeat(np.arange(40), 3)
    interval = cluster_bootstrap(values, subjects, n_resamples=4000, seed=1)
    means = values.reshape(40, 3).mean(axis=1)
    # Bootstrap SE of a mean of n equal-size cluster means: sd(ddof=0) / sqrt(n).
    half_width = 1.959964 * means.std() / np.sqrt(40)
    assert interval.estimate == pytest.approx(values.mean(), abs=1e-12)
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)
    # Treating the 120 domains as independent would give an interval about sqrt(3) narrower.
    naive = cluster_bootstrap(values, np.arange(120), n_resamples=4000, seed=1)
    assert (interval.high - interval.low) / (naive.high - naive.low) == pytest.approx(
        np.sqrt(3), rel=0.15
    )
    assert (interval.n_subjects, interval.n_values) == (40, 120)


def test_repeating_every_domain_of_a_subject_leaves_the_interval_unchanged() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=30)
    subjects = np.repeat(np.arange(10), 3)
    once = cluster_bootstrap(values, subjects, np.median, seed=3)
    twice = cluster_bootstrap(np.repeat(values, 2), np.repeat(subjects, 2), np.median, seed=3)
    assert (once.low, once.high) == pytest.approx((twice.low, twice.high), abs=1e-12)


def test_nan_values_are_left_out_and_one_subject_has_no_spread() -> None:
    interval = cluster_bootstrap(np.array([1.0, np.nan, 3.0]), ["a", "a", "a"])
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((2.0, 2.0, 2.0))
    assert (interval.n_subjects, interval.n_values) == (1, 2)
    assert np.isnan(cluster_bootstrap(np.array([np.nan]), ["a"]).estimate)
    with pytest.raises(ConfigurationError, match="one length"):
        cluster_bootstrap(np.zeros(3), ["a", "b"])


def test_sign_test_is_the_one_sided_binomial_tail() -> None:
    values = np.array([-1.0, -0.5, -2.0, 0.3, -0.1, 0.0, np.nan, -4.0])
    result = subject_sign_test(values)
    # Six non-zero finite values, five below 0: P(K >= 5 | n=6, 1/2) = (6 + 1) / 64.
    assert (result["n"], result["n_below"]) == (6, 5)
    assert result["p_value"] == pytest.approx((comb(6, 5) + comb(6, 6)) / 64, rel=1e-12)
    assert np.isnan(subject_sign_test(np.array([0.0]))["p_value"])
