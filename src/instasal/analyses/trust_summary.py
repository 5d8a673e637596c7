"""Cohort verdicts of the trust checks, by the rules fixed in ``docs/trust.md`` before any run.

Inputs are the per-lesion tables :mod:`instasal.trust` produces, with a ``subject`` column added:
randomisation verdicts, faithfulness numbers and radial profiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses.statistics import ALPHA, holm
from instasal.analyses.subjects import cluster_bootstrap, subject_sign_test
from instasal.errors import ConfigurationError
from instasal.trust.ablation import ablated_channels, ablation_agreement
from instasal.trust.profiles import SIGN_PLACES, SIGN_ROUNDOFF
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


SIGN_RESAMPLES = 20000
"""Resamples of the sign-pattern intervals: at the tests' level (99.9 %) each tail holds 10."""


def _sign_test_limit(n_subjects: int, rings: int) -> str:
    """The note when ``rings`` Holm-adjusted sign tests over ``n_subjects`` cannot reach α."""
    smallest = rings * 0.5**n_subjects
    if smallest < ALPHA:
        return ""
    needed = int(np.ceil(np.log2(rings / ALPHA) + 1e-12))
    return (
        f"with {n_subjects} subjects the smallest Holm-adjusted one-sided sign-test p over "
        f"{rings} rings is {smallest:.2g}, not below {ALPHA:g}: it needs {needed} or more subjects"
    )


def negative_neighbourhood(
    lesions: pd.DataFrame,
    *,
    method: str = "smoothgrad",
    types: tuple[str, ...] = ("TP",),
    seed: int = 0,
) -> dict[str, Any]:
    """The paper's negative neighbourhood at fixed rings, against the randomised-network null.

    ``lesions`` holds one row per lesion with ``subject``, ``type`` and the columns of
    :meth:`instasal.trust.RandomisationResult.ring_columns`: ``sign_<ring>_<method>`` (the
    trained map's first-channel mean in the ring over its largest magnitude within 8 mm) and
    ``sign_<ring>_<method>_random`` (the same of the fully randomised copies, median). Per fixed
    ring of :data:`SIGN_PLACES` and subject, the mean over its lesions of the trained value and of
    trained − random. The rule (``docs/trust.md``, fixed before the rerun): a ring is negative
    when one-sided sign tests over subjects find both means below 0 more often than not (the
    ring's p is the larger of the two: both must hold); the finding is ``reproduced`` when a
    ring's Holm-adjusted p (over the rings) is below :data:`~instasal.analyses.statistics.ALPHA`,
    ``not testable at this n`` when too few subjects leave that out of reach whatever the data,
    ``not testable`` without the columns or lesions, else ``not reproduced``. Cluster-bootstrap
    intervals (subjects resampled) at level ``1 − ALPHA`` of both lesion means are reported with
    each ring, not in the rule.
    """
    _require(lesions, ["subject", "type"], "the lesion table")
    columns = [f"sign_{place}_{method}" for place in SIGN_PLACES]
    nulls = [f"{column}_random" for column in columns]
    rows = lesions[lesions["type"].astype(str).isin(types)]
    if not set(columns + nulls) <= set(rows.columns) or rows.empty:
        return {
            "method": method,
            "n_lesions": 0,
            "n_subjects": 0,
            "rings": [],
            "verdict": "not testable",
            "note": "no sign-pattern columns or no lesions",
        }
    subjects = rows["subject"].astype(str).to_numpy()
    found: list[dict[str, Any]] = []
    for place, column, null in zip(SIGN_PLACES, columns, nulls, strict=True):
        trained = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
        difference = trained - pd.to_numeric(rows[null], errors="coerce").to_numpy(float)
        per_subject = {
            name: pd.DataFrame({"subject": subjects, "value": values})
            .groupby("subject")["value"]
            .mean()
            .to_numpy()
            for name, values in (("trained", trained), ("difference", difference))
        }
        tests = {
            name: subject_sign_test(np.where(np.abs(values) <= SIGN_ROUNDOFF, 0.0, values))
            for name, values in per_subject.items()
        }
        intervals = {
            name: cluster_bootstrap(
                values, subjects, n_resamples=SIGN_RESAMPLES, level=1 - ALPHA, seed=seed
            ).to_dict()
            for name, values in (("trained", trained), ("difference", difference))
        }
        p_values = [tests["trained"]["p_value"], tests["difference"]["p_value"]]  # NaN: no sign
        found.append(
            {
                "place": place,
                "trained": intervals["trained"],
                "difference": intervals["difference"],
                "sign_test_trained": tests["trained"],
                "sign_test_difference": tests["difference"],
                "p": float(max(p_values)) if all(np.isfinite(p_values)) else 1.0,
            }
        )
    adjusted = holm([ring["p"] for ring in found])
    for ring, value in zip(found, adjusted, strict=True):
        ring["p_holm"] = float(value)
    n_subjects = len(set(subjects))
    note = _sign_test_limit(n_subjects, len(SIGN_PLACES))
    if any(ring["p_holm"] < ALPHA for ring in found):
        verdict = "reproduced"
    elif note:
        verdict = "not testable at this n"
    else:
        verdict = "not reproduced"
    return {
        "method": method,
        "n_lesions": len(rows),
        "n_subjects": n_subjects,
        "rings": found,
        "verdict": verdict,
        "note": note,
    }


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.lower().isin(["true", "1", "1.0"])


def cohort_trust(
    table: pd.DataFrame,
    *,
    types: tuple[str, ...] = ("TP",),
    seed: int = 0,
) -> dict[str, Any] | None:
    """The three cohort verdicts of ``docs/trust.md`` from a cohort run with ``--trust``.

    Parameters
    ----------
    table
        The cohort lesion table (``subject``, ``type`` and the trust columns of ``explain
        --trust``: ``randomisation_passes_<method>``, ``randomisation_crossing_<method>``,
        ``deletion_gain_<order>_logit``, ``sign_<ring>_<method>`` …).
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
        ``negative_neighbourhood`` (:func:`negative_neighbourhood`); None when the table holds
        no trust column.
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
    channels = ablated_channels(rows)
    return {
        "types": list(types),
        "randomisation": randomisation_summary(verdicts),
        "ablation": ablation_agreement(rows, channels) if channels else None,
        "faithfulness": (
            faithfulness_summary(rows, seed=seed) if _has_faithfulness(rows) else None
        ),
        "negative_neighbourhood": negative_neighbourhood(table, types=types, seed=seed),
    }


def trust_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """:func:`cohort_trust`'s verdicts as one row per check and quantity (``trust.tsv``).

    Columns: ``check``, ``quantity``, ``estimate``, ``low``, ``high`` (the cluster-bootstrap
    interval where there is one: 95 %, 99.9 % for the negative neighbourhood), ``n_subjects``,
    ``n_lesions`` and ``verdict``.
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
    for ring in found["rings"] if found else []:
        for quantity, interval in (
            ("trained", ring["trained"]),
            ("trained − random", ring["difference"]),
        ):
            rows.append(
                {
                    "check": "negative neighbourhood",
                    "quantity": f"mean scaled FLAIR saliency, {ring['place']}, {quantity}",
                    "estimate": interval["estimate"],
                    "low": interval["low"],
                    "high": interval["high"],
                    "n_subjects": interval["n_subjects"],
                    "n_lesions": interval["n_values"],
                    "verdict": f"Holm p {ring['p_holm']:.2g}; finding {found['verdict']}",
                }
            )
    columns = ["check", "quantity", "estimate", "low", "high", "n_subjects", "n_lesions", "verdict"]
    return pd.DataFrame(rows).reindex(columns=columns)
