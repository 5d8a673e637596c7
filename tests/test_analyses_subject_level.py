"""Subject-level intervals beside the domain-level tests, on tables whose answer is known: effects
shared by every subject (intervals of width 0), and an effect carried by one subject alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import row_of
from instasal.analyses.error_modes import error_modes
from instasal.analyses.reliance import modality_reliance
from instasal.analyses.size import aggregation_vs_size
from instasal.analyses.subject_level import subject_level
from instasal.analyses.subjects import cluster_bootstrap


def _table(rows: list[tuple[str, str, float, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["subject", "type", "volume_mm3", "peak_FLAIR", "peak_T1w"])
    total = frame["peak_FLAIR"].abs() + frame["peak_T1w"].abs()
    return frame.assign(reliance_FLAIR=frame["peak_FLAIR"] / total)


def _level(table: pd.DataFrame, table_mean: pd.DataFrame | None = None) -> pd.DataFrame:
    modality = modality_reliance(table, ("FLAIR", "T1w"))
    size = aggregation_vs_size(table, table_mean) if table_mean is not None else None
    found = subject_level(table, error_modes(table), modality, size, table_mean)
    return found.set_index("quantity")


def _shared_effects() -> pd.DataFrame:
    rows = []
    for s in range(6):
        for k, volume in enumerate((10.0, 20.0, 40.0)):
            # TP peak 2 − volume/100: falls with volume in every subject; T1w 0.5 below FLAIR
            peak = 2.0 - volume / 100
            rows.append((f"s{s}", "TP", volume, peak, peak - 0.5))
            rows.append((f"s{s}", "FP", volume + k, 1.0, 0.5))
    return _table(rows)


def test_effects_shared_by_every_subject_have_intervals_of_width_zero() -> None:
    table = _shared_effects()
    level = _level(table, table)
    modes = row_of(level, "median peak_FLAIR: TP − FP")
    # median TP peak = 2 − 0.2 = 1.8 in every resample; FP 1.0
    assert modes[["estimate", "low", "high"]].tolist() == pytest.approx([0.8, 0.8, 0.8])
    assert modes["excludes_null"] and modes["n_subjects"] == 6 and modes["n_domains"] == 36
    modality = row_of(level, "median peak_FLAIR − peak_T1w (TP)")
    assert modality[["estimate", "low", "high"]].tolist() == pytest.approx([0.5, 0.5, 0.5])
    size = row_of(level, "Spearman ρ of peak_FLAIR vs volume, max aggregation")
    assert size[["estimate", "low", "high"]].tolist() == pytest.approx([-1.0, -1.0, -1.0])
    assert size["domain_p"] < 0.01


def test_an_effect_of_one_subject_is_significant_per_domain_but_not_per_subject() -> None:
    rows = [("s0", "TP", 10.0, 5.0, 1.0)] * 20 + [("s0", "FP", 10.0, 0.0, 1.0)] * 20
    for s in range(1, 6):
        rows += [(f"s{s}", "TP", 10.0, 0.0, 1.0)] * 2 + [(f"s{s}", "FP", 10.0, 0.0, 1.0)] * 2
    level = _level(_table(rows))
    modes = row_of(level, "median peak_FLAIR: TP − FP")
    assert modes["domain_p"] < 1e-3  # 20 of 30 TP above every FP
    assert modes["estimate"] == pytest.approx(5.0)
    # s0 is left out of (5/6)^6 ≈ 33 % of resamples, which give a difference of 0
    assert modes["low"] == 0.0 and not modes["excludes_null"]


def test_resamples_where_the_statistic_is_undefined_are_left_out() -> None:
    # column 0 only in subject a, column 1 in b and c: resamples without a are undefined
    values = np.array([[1.0, np.nan], [np.nan, 2.0], [np.nan, 3.0]])

    def difference(rows: np.ndarray) -> float:
        if not np.isfinite(rows[:, 0]).any() or not np.isfinite(rows[:, 1]).any():
            return float("nan")
        return float(np.nanmedian(rows[:, 0]) - np.nanmedian(rows[:, 1]))

    interval = cluster_bootstrap(values, ["a", "b", "c"], difference, n_resamples=500)
    assert interval.estimate == pytest.approx(-1.5)
    assert -2.0 <= interval.low <= interval.high <= -1.0
