"""Subject-level statistics beside the domain-level tests of the error-mode, modality and
aggregation-vs-size analyses.

The domain-level tests (Mann–Whitney, Wilcoxon, Spearman) treat every domain as independent; the
domains of one subject are not. Here the same effect is estimated over all domains and given a
95 % cluster-bootstrap interval (:func:`instasal.analyses.subjects.cluster_bootstrap`: subjects
drawn with replacement, all their domains with them). The effect is supported at subject level
when the interval excludes its null value (0 for differences and correlations).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from instasal.analyses._table import DOMAIN_TYPES
from instasal.analyses.error_modes import ErrorModes
from instasal.analyses.reliance import ModalityReliance
from instasal.analyses.size import AggregationVsSize
from instasal.analyses.subjects import cluster_bootstrap
from instasal.typing import FloatArray

__all__ = ["SUBJECT_LEVEL_COLUMNS", "subject_level"]

SUBJECT_LEVEL_COLUMNS = [
    "analysis",
    "quantity",
    "n_domains",
    "domain_test",
    "domain_p",
    "estimate",
    "low",
    "high",
    "n_subjects",
    "excludes_null",
]


def _numeric(frame: pd.DataFrame, columns: list[str]) -> FloatArray:
    return frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)


def _median_difference(rows: FloatArray) -> float:
    first, second = rows[:, 0], rows[:, 1]
    if not (np.isfinite(first).any() and np.isfinite(second).any()):
        return float("nan")
    return float(np.nanmedian(first) - np.nanmedian(second))


def _spearman(rows: FloatArray) -> float:
    complete = rows[np.isfinite(rows).all(axis=1)]
    if len(complete) < 3 or np.ptp(complete[:, 0]) == 0 or np.ptp(complete[:, 1]) == 0:
        return float("nan")
    return float(stats.spearmanr(complete[:, 0], complete[:, 1]).statistic)


def _row(
    analysis: str,
    quantity: str,
    values: FloatArray,
    subjects: np.ndarray,
    statistic: Callable[[FloatArray], float],
    domain_test: str,
    domain_p: float,
    seed: int,
) -> dict[str, Any]:
    interval = cluster_bootstrap(values, subjects, statistic, seed=seed)
    excludes = bool(interval.low > 0 or interval.high < 0)
    return {
        "analysis": analysis,
        "quantity": quantity,
        "n_domains": interval.n_values,
        "domain_test": domain_test,
        "domain_p": domain_p,
        "estimate": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "n_subjects": interval.n_subjects,
        "excludes_null": excludes,
    }


def subject_level(
    table_max: pd.DataFrame,
    modes: ErrorModes,
    modality: ModalityReliance | None = None,
    aggregation: AggregationVsSize | None = None,
    table_mean: pd.DataFrame | None = None,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Cluster-bootstrap intervals over subjects for the effects the domain-level tests test.

    Parameters
    ----------
    table_max
        The cohort lesion table (with ``subject``); not modified.
    modes, modality, aggregation
        The domain-level analyses (their columns, types and p-values are reused).
    table_mean
        The mean-aggregation table, for the aggregation rows.
    seed
        Seeds the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per effect (:data:`SUBJECT_LEVEL_COLUMNS`): for every pair of domain types the
        difference of medians of the error-mode column (domain test: Mann–Whitney, Holm p); the
        median per-lesion difference of the two channels' peaks (Wilcoxon); per aggregation
        Spearman's ρ of peak against volume. ``excludes_null``: the interval excludes 0.
    """
    rows: list[dict[str, Any]] = []
    kinds = table_max["type"].astype(str).to_numpy()
    subjects = table_max["subject"].astype(str).to_numpy()
    values = _numeric(table_max, [modes.column])[:, 0]
    tests = {(t.first, t.second): t for t in modes.tests}
    present = [k for k in DOMAIN_TYPES if (kinds == k).any()]
    for first, second in combinations(present, 2):
        pair = np.full((len(values), 2), np.nan)
        pair[kinds == first, 0] = values[kinds == first]
        pair[kinds == second, 1] = values[kinds == second]
        test = tests.get((first, second))
        rows.append(
            _row(
                "error modes",
                f"median {modes.column}: {first} − {second}",
                pair,
                subjects,
                _median_difference,
                "Mann–Whitney U (Holm)",
                test.p_holm if test is not None else float("nan"),
                seed,
            )
        )
    if modality is not None:
        first, second = modality.channels
        chosen = np.isin(kinds, modality.types)
        peaks = _numeric(table_max, [f"peak_{first}", f"peak_{second}"])[chosen]
        rows.append(
            _row(
                "modality reliance",
                f"median peak_{first} − peak_{second} ({'/'.join(modality.types)})",
                peaks[:, 0] - peaks[:, 1],
                subjects[chosen],
                lambda d: float(np.median(d)),
                "Wilcoxon signed-rank",
                modality.test.p_value,
                seed,
            )
        )
    if aggregation is not None and table_mean is not None:
        column = f"peak_{aggregation.channel}"
        for name, table, found in (
            ("max", table_max, aggregation.max),
            ("mean", table_mean, aggregation.mean),
        ):
            chosen = table["type"].astype(str).isin(aggregation.types).to_numpy()
            pairs = _numeric(table, ["volume_mm3", column])[chosen]
            rows.append(
                _row(
                    "aggregation vs size",
                    f"Spearman ρ of {column} vs volume, {name} aggregation",
                    pairs,
                    table["subject"].astype(str).to_numpy()[chosen],
                    _spearman,
                    "Spearman",
                    found.p_value,
                    seed,
                )
            )
    return pd.DataFrame(rows, columns=SUBJECT_LEVEL_COLUMNS)
