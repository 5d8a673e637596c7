"""Cohort verdicts of the trust checks, by the rules fixed in ``docs/trust.md`` before any run.

Inputs are the per-lesion tables :mod:`instasal.trust` produces, with a ``subject`` column added:
randomisation verdicts, faithfulness numbers and radial profiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses.subjects import cluster_bootstrap, subject_sign_test
from instasal.errors import ConfigurationError
from instasal.trust.profiles import TROUGH_BAND_MM, profile_minimum
from instasal.trust.sanity import COHORT_PASS_SHARE

__all__ = [
    "faithfulness_summary",
    "negative_neighbourhood",
    "randomisation_summary",
]


def _require(table: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigurationError(f"{name} lacks the columns {missing}")


def randomisation_summary(verdicts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per method: lesions, the share passing, and whether the method passes on the cohort.

    ``verdicts`` has one row per lesion and method: ``method``, ``passes`` and ``crossing_step``
    (as :meth:`instasal.trust.RandomisationResult.verdict` gives). A method passes when at least
    :data:`~instasal.trust.COHORT_PASS_SHARE` of its lesions pass.
    """
    _require(verdicts, ["method", "passes", "crossing_step"], "the randomisation table")
    summary = {}
    for method, rows in verdicts.groupby("method", sort=True):
        share = float(rows["passes"].astype(bool).mean())
        steps = pd.to_numeric(rows["crossing_step"], errors="coerce").dropna()
        summary[str(method)] = {
            "n_lesions": len(rows),
            "share_passing": share,
            "passes": share >= COHORT_PASS_SHARE,
            "median_crossing_step": float(steps.median()) if not steps.empty else float("nan"),
        }
    return summary


def faithfulness_summary(lesions: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Cluster-bootstrap intervals of the mean gains and of SmoothGrad's lead over Grad-CAM++.

    ``lesions`` has ``subject`` and the numbers of :func:`instasal.trust.deletion_insertion`.
    A method ranks better than chance when the interval of its mean ``deletion_gain`` lies above
    0; the comparison is the interval of the mean ``deletion_auc − deletion_auc_gradcam`` (above
    0: Grad-CAM++ removes what the model uses faster).
    """
    _require(lesions, ["subject", "deletion_gain", "insertion_gain"], "the faithfulness table")
    subjects = lesions["subject"].to_numpy()
    result: dict[str, Any] = {}
    names = ["deletion_gain", "insertion_gain", "deletion_gain_gradcam", "insertion_gain_gradcam"]
    for name in [n for n in names if n in lesions.columns]:
        interval = cluster_bootstrap(lesions[name].to_numpy(float), subjects, seed=seed)
        result[name] = {**interval.to_dict(), "better_than_chance": interval.low > 0}
    if {"deletion_auc", "deletion_auc_gradcam"} <= set(lesions.columns):
        lead = (lesions["deletion_auc"] - lesions["deletion_auc_gradcam"]).to_numpy(float)
        result["deletion_auc_minus_gradcam"] = cluster_bootstrap(
            lead, subjects, seed=seed
        ).to_dict()
    return result


def negative_neighbourhood(
    profiles: pd.DataFrame,
    *,
    channel: str,
    lesion_type: str = "TP",
    band_mm: tuple[float, float] = TROUGH_BAND_MM,
    seed: int = 0,
) -> dict[str, Any]:
    """The paper's negative-neighbourhood finding re-tested by the rule of ``docs/trust.md``.

    ``profiles`` is the tidy profile table of :func:`instasal.trust.radial_profile` with
    ``subject``, ``lesion`` and ``type`` added. Over the shells lying wholly in ``band_mm``, the
    minimum of the cohort's mean ``lesion_type`` profile of ``channel`` is bootstrapped over
    subjects (recomputed in every resample); the finding is **reproduced** when the interval's
    upper end is below 0. Reported with it: the share of lesions whose own ``profile_minimum`` is
    below 0 and a one-sided sign test over subjects of their mean profile's minimum.
    """
    _require(
        profiles,
        ["subject", "lesion", "type", "channel", "shell", "inner_mm", "outer_mm", "mean"],
        "the profile table",
    )
    low, high = band_mm
    rows = profiles[(profiles["type"] == lesion_type) & (profiles["channel"] == channel)]
    band = rows[
        (rows["shell"] > 0) & (rows["inner_mm"] >= low - 1e-9) & (rows["outer_mm"] <= high + 1e-9)
    ]
    wide = band.pivot_table(
        index=["subject", "lesion"], columns="shell", values="mean", aggfunc="first"
    )
    if wide.empty:
        nan = float("nan")
        return {"n_lesions": 0, "n_subjects": 0, "reproduced": False, "minimum": nan}
    per_lesion = [
        profile_minimum(group, channel, band_mm)[0]
        for _, group in rows.groupby(["subject", "lesion"])
    ]
    per_subject = wide.groupby(level="subject").mean().min(axis=1, skipna=True).to_numpy()
    values = wide.to_numpy(dtype=float)

    def deepest(resample: np.ndarray) -> float:
        return float(np.nanmin(np.nanmean(resample, axis=0)))

    interval = cluster_bootstrap(
        values, wide.index.get_level_values("subject").to_numpy(), deepest, seed=seed
    )
    mean_profile = np.nanmean(values, axis=0)
    outer = band.groupby("shell")["outer_mm"].first()
    return {
        "n_lesions": len(wide),
        "n_subjects": interval.n_subjects,
        "minimum": interval.estimate,
        "minimum_outer_mm": float(outer[wide.columns[int(np.nanargmin(mean_profile))]]),
        "interval": [interval.low, interval.high],
        "reproduced": bool(interval.high < 0),
        "share_negative": float(np.mean(np.asarray(per_lesion) < 0)),
        "sign_test": subject_sign_test(per_subject),
    }
