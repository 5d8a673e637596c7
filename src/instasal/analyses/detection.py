"""Error detection from saliency: ROC of a lesion-table feature for TP against FP (SPEC §4).

Beyond the paper: if peak saliency separates true from false positives (paper Fig. 11), how well
does it do as a detector? The ROC curve and its area are computed here without a machine-learning
dependency; the area equals the Mann–Whitney U of the positives over ``n_positive n_negative``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses._table import finite_values, require_columns, select_types
from instasal.analyses.statistics import roc_auc, roc_curve

__all__ = ["ErrorDetection", "error_detection", "feature_ranking"]


@dataclass(frozen=True)
class ErrorDetection:
    """ROC curve and AUC of ``feature`` for ``positive`` against ``negative`` domains.

    ``thresholds`` start at ``+inf``; a domain is called positive when its feature is ``>=`` the
    threshold. With an empty class the curve is empty, ``auc`` NaN and ``reason`` says why.
    """

    feature: str
    positive: str
    negative: str
    n_positive: int
    n_negative: int
    auc: float
    thresholds: tuple[float, ...] = field(repr=False)
    false_positive_rate: tuple[float, ...] = field(repr=False)
    true_positive_rate: tuple[float, ...] = field(repr=False)
    reason: str = ""

    @property
    def computable(self) -> bool:
        """Whether the curve was computed."""
        return not self.reason

    def to_frame(self) -> pd.DataFrame:
        """The ROC points: threshold, false and true positive rates."""
        return pd.DataFrame(
            {
                "threshold": self.thresholds,
                "false_positive_rate": self.false_positive_rate,
                "true_positive_rate": self.true_positive_rate,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary (the curve itself is in :meth:`to_frame`)."""
        return {
            "feature": self.feature,
            "positive": self.positive,
            "negative": self.negative,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "auc": self.auc,
            "reason": self.reason,
        }


def error_detection(
    table: pd.DataFrame,
    feature: str = "peak_FLAIR",
    positive: str = "TP",
    negative: str = "FP",
) -> ErrorDetection:
    """ROC curve and AUC of a lesion-table column as a detector of ``positive`` domains.

    Parameters
    ----------
    table
        A cohort lesion table with ``type`` and ``feature``; not modified.
    feature
        The score; higher should mean ``positive`` (peak FLAIR saliency by default).
    positive, negative
        The two domain types separated (default: true against false positives).

    Returns
    -------
    ErrorDetection
        AUC is the probability that a random positive domain scores above a random negative one
        (ties count one half); 0.5 is chance. It is an in-sample description of this cohort, not
        a validated detector.
    """
    require_columns(table, ("type", feature))
    scores = {}
    for kind in (positive, negative):
        scores[kind], _ = finite_values(select_types(table, (kind,)), feature)
    n_positive, n_negative = scores[positive].size, scores[negative].size
    if n_positive == 0 or n_negative == 0:
        empty = [k for k in (positive, negative) if scores[k].size == 0]
        return ErrorDetection(
            feature,
            positive,
            negative,
            n_positive,
            n_negative,
            float("nan"),
            (),
            (),
            (),
            reason=f"no {' and no '.join(empty)} domain with a finite {feature}",
        )
    thresholds, fpr, tpr = roc_curve(scores[positive], scores[negative])
    return ErrorDetection(
        feature,
        positive,
        negative,
        n_positive,
        n_negative,
        roc_auc(fpr, tpr),
        tuple(float(t) for t in thresholds),
        tuple(float(v) for v in fpr),
        tuple(float(v) for v in np.asarray(tpr)),
        "",
    )


DETECTION_FEATURE_PREFIXES = ("peak_", "trough_", "inside_mean_", "ring_mean_", "reliance_")
"""Saliency columns of the lesion table ranked by :func:`feature_ranking` (one per channel)."""
DETECTION_BASELINES = {
    "gradcam_peak": "Grad-CAM++",
    "prob_max": "probability",
    "prob_mean": "probability",
    "volume_mm3": "size",
}
"""Columns ranked beside the SmoothGrad ones, with their kind: what else the table already says."""


def feature_ranking(
    table: pd.DataFrame, positive: str = "TP", negative: str = "FP"
) -> pd.DataFrame:
    """AUC of every numeric saliency column and of the baselines, TP against FP (issue 8).

    Saliency alone is only useful for error detection if it adds to what the model's own
    probability and the lesion's size already say, so those are ranked beside it. An AUC below
    0.5 means lower values point to ``positive``. One row per column present in ``table``:
    ``feature``, ``kind`` (``SmoothGrad``, ``Grad-CAM++``, ``probability`` or ``size``), ``auc``,
    ``n_positive``,
    ``n_negative``; sorted by the distance of the AUC from 0.5, largest first.
    """
    require_columns(table, ("type",))
    features = [
        column
        for column in table.columns
        if column.startswith(DETECTION_FEATURE_PREFIXES)
        and not column.endswith("_voxel")
        and pd.api.types.is_numeric_dtype(table[column])
    ]
    baselines = [c for c in DETECTION_BASELINES if c in table.columns]
    rows = []
    for feature in [*features, *baselines]:
        result = error_detection(table, feature, positive, negative)
        rows.append(
            {
                "feature": feature,
                "kind": DETECTION_BASELINES.get(feature, "SmoothGrad"),
                "auc": result.auc,
                "n_positive": result.n_positive,
                "n_negative": result.n_negative,
            }
        )
    ranking = pd.DataFrame(rows, columns=["feature", "kind", "auc", "n_positive", "n_negative"])
    order = (ranking["auc"] - 0.5).abs().sort_values(ascending=False, na_position="last").index
    return ranking.loc[order].reset_index(drop=True)
