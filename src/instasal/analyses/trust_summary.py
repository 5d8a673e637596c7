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
from instasal.trust.ablation import ablated_channels, ablation_agreement
from instasal.trust.profiles import TROUGH_BAND_MM, profile_minimum
from instasal.trust.sanity import COHORT_PASS_SHARE

__all__ = [
    "MAP_ORDERS",
    "cohort_trust",
    "faithfulness_summary",
    "negative_neighbourhood",
    "randomisation_summary",
    "trust_frame",
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


MAP_ORDERS = ("smoothgrad", "smoothgrad_times_delta", "gradcam")
"""The maps' voxel orders of :func:`instasal.trust.deletion_insertion` summarised on a cohort."""


def faithfulness_summary(lesions: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Cluster-bootstrap intervals of the mean logit gains over the best model-free order.

    ``lesions`` has ``subject`` and the numbers of :func:`instasal.trust.deletion_insertion`.
    Per map order of :data:`MAP_ORDERS` and variant (all of ``N``; ``_outside``: ``N`` without
    Ω), the mean ``deletion_gain_<order>[_outside]_logit`` and ``insertion_gain_…`` with their
    intervals; an order is **better than the image** by a quantity when the interval lies above
    0. SmoothGrad and Grad-CAM++, each by its value, are compared by the interval of the mean
    ``deletion_auc_smoothgrad_logit − deletion_auc_gradcam_logit`` (below 0: SmoothGrad's order
    removes what the model uses faster).
    """
    names = [
        f"{kind}_gain_{order}{variant}_logit"
        for order in MAP_ORDERS
        for variant in ("", "_outside")
        for kind in ("deletion", "insertion")
    ]
    present = [name for name in names if name in lesions.columns]
    if not present:
        raise ConfigurationError(f"the faithfulness table lacks every gain column, {names}")
    _require(lesions, ["subject"], "the faithfulness table")
    subjects = lesions["subject"].to_numpy()
    result: dict[str, Any] = {}
    for name in present:
        interval = cluster_bootstrap(lesions[name].to_numpy(float), subjects, seed=seed)
        result[name] = {**interval.to_dict(), "better_than_image": interval.low > 0}
    pair = ["deletion_auc_smoothgrad_logit", "deletion_auc_gradcam_logit"]
    if set(pair) <= set(lesions.columns):
        lead = (lesions[pair[0]] - lesions[pair[1]]).to_numpy(float)
        result["deletion_auc_smoothgrad_minus_gradcam_logit"] = cluster_bootstrap(
            lead, subjects, seed=seed
        ).to_dict()
    return result


def _has_faithfulness(table: pd.DataFrame) -> bool:
    return any(str(c).startswith("deletion_gain_") for c in table.columns)


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


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.lower().isin(["true", "1", "1.0"])


def cohort_trust(
    table: pd.DataFrame,
    profiles: pd.DataFrame | None = None,
    *,
    channel: str,
    types: tuple[str, ...] = ("TP",),
    seed: int = 0,
) -> dict[str, Any] | None:
    """The three cohort verdicts of ``docs/trust.md`` from a cohort run with ``--trust``.

    Parameters
    ----------
    table
        The cohort lesion table (``subject``, ``type`` and the trust columns of ``explain
        --trust``: ``randomisation_passes_<method>``, ``randomisation_crossing_<method>``,
        ``deletion_gain_<order>_logit`` …).
    profiles
        The cohort's gathered profile TSVs (``subject``, ``id``, ``type``, ``channel``, shells),
        or None.
    channel
        The channel of the negative-neighbourhood rule (FLAIR).
    types
        The domain types the verdicts are computed over (TP by default, as in ``docs/trust.md``).
    seed
        Seeds the cluster bootstraps.

    Returns
    -------
    dict or None
        ``types``, ``randomisation`` (:func:`randomisation_summary`), ``ablation``
        (:func:`instasal.trust.ablation_agreement` of saliency reliance and the normal-tissue
        ablation share; None without them), ``faithfulness`` (:func:`faithfulness_summary`) and
        ``negative_neighbourhood``
        (:func:`negative_neighbourhood`, None without profiles); None when the table holds no
        trust column.
    """
    methods = [
        c.removeprefix("randomisation_passes_")
        for c in table.columns
        if c.startswith("randomisation_passes_")
    ]
    if not methods and not _has_faithfulness(table):
        return None
    _require(table, ["subject", "type"], "the cohort lesion table")
    rows = table[table["type"].astype(str).isin(types)]
    verdicts = pd.concat(
        [
            pd.DataFrame(
                {
                    "method": method,
                    "passes": _truthy(rows[f"randomisation_passes_{method}"]),
                    "crossing_step": pd.to_numeric(
                        rows[f"randomisation_crossing_{method}"], errors="coerce"
                    ),
                }
            )
            for method in methods
        ]
        or [pd.DataFrame(columns=["method", "passes", "crossing_step"])]
    )
    neighbourhood = None
    if profiles is not None and len(profiles):
        neighbourhood = negative_neighbourhood(
            profiles.rename(columns={"id": "lesion"}),
            channel=channel,
            lesion_type=types[0],
            seed=seed,
        )
    channels = ablated_channels(rows)
    return {
        "types": list(types),
        "randomisation": randomisation_summary(verdicts),
        "ablation": ablation_agreement(rows, channels) if channels else None,
        "faithfulness": (
            faithfulness_summary(rows, seed=seed) if _has_faithfulness(rows) else None
        ),
        "negative_neighbourhood": neighbourhood,
    }


def trust_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """:func:`cohort_trust`'s verdicts as one row per check and quantity (``trust.tsv``).

    Columns: ``check``, ``quantity``, ``estimate``, ``low``, ``high`` (the 95 % cluster-bootstrap
    interval where there is one), ``n_subjects``, ``n_lesions`` and ``verdict``.
    """
    rows: list[dict[str, Any]] = []
    for method, found in summary["randomisation"].items():
        rows.append(
            {
                "check": "randomisation",
                "quantity": f"share passing, {method}",
                "estimate": found["share_passing"],
                "n_lesions": found["n_lesions"],
                "verdict": "passes" if found["passes"] else "fails",
            }
        )
    for name, found in (summary["faithfulness"] or {}).items():
        verdict = found.get("better_than_image")
        rows.append(
            {
                "check": "faithfulness",
                "quantity": f"mean {name}",
                "estimate": found["estimate"],
                "low": found["low"],
                "high": found["high"],
                "n_subjects": found["n_subjects"],
                "n_lesions": found["n_values"],
                "verdict": (
                    "" if verdict is None else "better than the image" if verdict else "not shown"
                ),
            }
        )
    agreement = summary.get("ablation")
    if agreement is not None:
        rows.append(
            {
                "check": "modality reliance",
                "quantity": "share of lesions whose top saliency channel is the top ablated one",
                "estimate": agreement["same_top_channel"],
                "n_lesions": agreement["n_lesions"],
                "verdict": f"Spearman {agreement['spearman']:.2f} (first channel's shares)",
            }
        )
    found = summary["negative_neighbourhood"]
    if found is not None and found.get("n_lesions"):
        rows.append(
            {
                "check": "negative neighbourhood",
                "quantity": "minimum of the mean profile, 2-8 mm",
                "estimate": found["minimum"],
                "low": found["interval"][0],
                "high": found["interval"][1],
                "n_subjects": found["n_subjects"],
                "n_lesions": found["n_lesions"],
                "verdict": "reproduced" if found["reproduced"] else "not reproduced",
            }
        )
    columns = ["check", "quantity", "estimate", "low", "high", "n_subjects", "n_lesions", "verdict"]
    return pd.DataFrame(rows).reindex(columns=columns)
