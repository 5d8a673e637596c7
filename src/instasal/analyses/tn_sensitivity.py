"""TN sensitivity: the error-mode comparisons with TN domains drawn from other tissue pools.

The paper draws its true-negative domains in normal-appearing white matter. Cohort runs of the
same data and model with ``--tn-from wm``, ``gm`` and ``brain`` differ only in their TN domains;
here the TP, FP and FN domains of one run are compared with the TN domains of each, by the same
Mann–Whitney tests as :func:`instasal.analyses.error_modes.error_modes` and the subject-level
intervals of :func:`instasal.analyses.subject_level.subject_level`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from instasal.analyses._table import require_columns
from instasal.analyses.error_modes import error_modes
from instasal.analyses.subject_level import subject_level

__all__ = ["TN_SENSITIVITY_COLUMNS", "tn_sensitivity"]

TN_SENSITIVITY_COLUMNS = [
    "pool",
    "comparison",
    "n_first",
    "n_tn",
    "median_first",
    "median_tn",
    "p_holm",
    "rank_biserial",
    "estimate",
    "low",
    "high",
    "n_subjects",
    "median_order",
]


def tn_sensitivity(
    base: pd.DataFrame,
    pools: Mapping[str, pd.DataFrame],
    channel: str = "FLAIR",
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare TP, FP and FN with the TN domains of each pool.

    Parameters
    ----------
    base
        A cohort lesion table (``subject``, ``type``, ``peak_<channel>``); its TP, FP and FN rows
        are used. Not modified.
    pools
        ``{pool name: cohort lesion table}``; each one's TN rows of the subjects in ``base`` are
        used (the base run's own pool may be one of them).
    channel
        The error-mode column is ``peak_<channel>``.
    seed
        Seeds the cluster bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per pool and comparison ``<type> − TN`` (:data:`TN_SENSITIVITY_COLUMNS`): counts,
        medians, Holm-adjusted Mann–Whitney p and rank-biserial r over the pool's four-type
        family, the difference of medians with its 95 % cluster-bootstrap interval over subjects,
        and the pool's median order of the types.
    """
    column = f"peak_{channel}"
    require_columns(base, ("subject", "type", column))
    detected = base[base["type"].astype(str).isin(["TP", "FP", "FN"])]
    rows = []
    for pool, table in pools.items():
        require_columns(table, ("subject", "type", column))
        negatives = table[
            (table["type"].astype(str) == "TN") & table["subject"].isin(set(base["subject"]))
        ]
        combined = pd.concat([detected, negatives], ignore_index=True)
        modes = error_modes(combined, channel)
        level = subject_level(combined, modes, seed=seed).set_index("quantity")
        order = " > ".join(modes.median_order)
        for test in modes.tests:
            if test.second != "TN":
                continue
            interval = level.reindex([f"median {column}: {test.first} − TN"]).iloc[0]
            rows.append(
                {
                    "pool": pool,
                    "comparison": f"{test.first} − TN",
                    "n_first": test.n_first,
                    "n_tn": test.n_second,
                    "median_first": modes.group(test.first).distribution.median,
                    "median_tn": modes.group("TN").distribution.median,
                    "p_holm": test.p_holm,
                    "rank_biserial": test.rank_biserial,
                    "estimate": interval["estimate"],
                    "low": interval["low"],
                    "high": interval["high"],
                    "n_subjects": interval["n_subjects"],
                    "median_order": order,
                }
            )
    return pd.DataFrame(rows, columns=TN_SENSITIVITY_COLUMNS)
