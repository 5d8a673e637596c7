"""Every SPEC §4 analysis of one cohort in one object, with the paper findings decided from it.

:func:`analyse_tables` runs the error-mode, modality, sign-pattern, aggregation-vs-size and
error-detection analyses on a cohort's lesion tables and applies the fixed rules of
:mod:`instasal.analyses.findings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.analyses._table import DOMAIN_TYPES, channel_names, require_columns
from instasal.analyses.detection import (
    ErrorDetection,
    error_detection,
    feature_ranking,
)
from instasal.analyses.error_modes import ErrorModes, error_modes
from instasal.analyses.findings import (
    Finding,
    aggregation_finding,
    error_modes_finding,
    modality_finding,
    sign_finding,
)
from instasal.analyses.pruning import (
    PruningResult,
    RegionPruningComparison,
    compare_pruning_features,
    compare_region_pruning,
    known_region,
    prune_false_positives,
)
from instasal.analyses.reliance import (
    ModalityReliance,
    SignPattern,
    modality_reliance,
    sign_pattern,
)
from instasal.analyses.size import AggregationVsSize, aggregation_vs_size
from instasal.analyses.statistics import ALPHA
from instasal.analyses.subject_level import subject_level
from instasal.analyses.trust_summary import cohort_trust

__all__ = ["PRUNING_BASELINES", "CohortAnalysis", "analyse_tables", "jsonable"]

PRUNING_BASELINES = ("prob_max", "prob_mean", "volume_mm3")
"""Features pruning by peak saliency is compared with: the model's probability, the size."""


def _preferred(names: tuple[str, ...], wanted: str, exclude: str | None = None) -> str | None:
    if wanted in names and wanted != exclude:
        return wanted
    return next((n for n in names if n != exclude), None)


def jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become None, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class CohortAnalysis:
    """Every SPEC §4 analysis of one cohort and the paper findings decided from them.

    ``channels`` is ``(primary, secondary)`` (FLAIR and T1w when present; ``secondary`` is None
    for a one-channel model); ``detected_types`` are the domains of the per-lesion analyses: TP
    with a reference, else every predicted ``lesion``. ``modality`` is None with one channel,
    ``aggregation`` None without a mean-aggregation table.
    """

    channels: tuple[str, str | None]
    detected_types: tuple[str, ...]
    type_counts: dict[str, int]
    subject_counts: pd.DataFrame
    error_modes: ErrorModes
    modality: ModalityReliance | None
    sign: SignPattern
    aggregation: AggregationVsSize | None
    detection: ErrorDetection
    findings: tuple[Finding, ...]
    pruning: PruningResult | None = None
    region_pruning: RegionPruningComparison | None = None
    feature_ranking: pd.DataFrame | None = None
    pruning_features: pd.DataFrame | None = None
    trust: dict[str, Any] | None = None
    subject_level: pd.DataFrame | None = None

    def findings_frame(self) -> pd.DataFrame:
        """One row per paper finding: the paper's claim, the data, the rule and the verdict."""
        return pd.DataFrame([finding.to_dict() for finding in self.findings])

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (NaN as None)."""
        return jsonable(
            {
                "channels": list(self.channels),
                "detected_types": list(self.detected_types),
                "type_counts": self.type_counts,
                "n_subjects": len(self.subject_counts),
                "alpha": ALPHA,
                "findings": [f.to_dict() for f in self.findings],
                "error_modes": self.error_modes.to_dict(),
                "modality_reliance": self.modality.to_dict() if self.modality else None,
                "sign_pattern": self.sign.to_dict(),
                "aggregation_vs_size": self.aggregation.to_dict() if self.aggregation else None,
                "error_detection": self.detection.to_dict(),
                "false_positive_pruning": self.pruning.to_dict() if self.pruning else None,
                "region_pruning": (self.region_pruning.to_dict() if self.region_pruning else None),
                "trust": self.trust,
                "subject_level": _records(self.subject_level),
            }
        )


def analyse_tables(
    table_max: pd.DataFrame,
    table_mean: pd.DataFrame | None = None,
) -> CohortAnalysis:
    """Run every cohort analysis of SPEC §4 on lesion tables (none is modified).

    Parameters
    ----------
    table_max
        The cohort lesion table with max aggregation (the paper's v3; the pipeline default).
    table_mean
        The same cohort with mean aggregation, for the aggregation-vs-size analysis, or None.
        The trust verdicts (``trust``) are computed when ``table_max`` holds the trust columns
        (``cohort --trust``).
    """
    require_columns(table_max, ("type", "volume_mm3"))
    names = channel_names(table_max)
    primary = _preferred(names, "FLAIR") or names[0]
    secondary = _preferred(names, "T1w", exclude=primary)
    kinds = table_max["type"].astype(str)
    detected: tuple[str, ...] = (
        ("lesion",) if not kinds.isin(DOMAIN_TYPES).any() and (kinds == "lesion").any() else ("TP",)
    )
    order = [*DOMAIN_TYPES, "lesion"]
    counts = kinds.value_counts()
    type_counts = {k: int(counts.get(k, 0)) for k in order if counts.get(k, 0)}
    type_counts |= {str(k): int(v) for k, v in counts.items() if k not in order}
    subjects = (
        table_max.assign(type=kinds)
        .groupby(["subject", "type"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=[k for k in order if k in type_counts], fill_value=0)
        .reset_index()
        if "subject" in table_max.columns
        else pd.DataFrame()
    )
    modes = error_modes(table_max, primary)
    modality = modality_reliance(table_max, (primary, secondary), detected) if secondary else None
    sign = sign_pattern(table_max, primary, detected)
    aggregation = (
        aggregation_vs_size(table_max, table_mean, primary, detected)
        if table_mean is not None
        else None
    )
    detection = error_detection(table_max, f"peak_{primary}")
    pruning = _pruning(table_max, f"peak_{primary}")
    region_pruning = _region_pruning(table_max, f"peak_{primary}") if pruning else None
    ranking = feature_ranking(table_max)
    pruning_features = (
        compare_pruning_features(table_max, [f"peak_{primary}", *PRUNING_BASELINES])
        if pruning
        else None
    )
    by_subject = "subject" in table_max.columns and (
        table_mean is None or "subject" in table_mean.columns
    )
    trust = cohort_trust(table_max, types=detected) if by_subject else None
    subjects_level = (
        subject_level(table_max, modes, modality, aggregation, table_mean) if by_subject else None
    )
    findings = [error_modes_finding(modes)]
    if modality is not None:
        findings.append(modality_finding(modality))
    findings += [sign_finding(sign), aggregation_finding(aggregation)]
    return CohortAnalysis(
        (primary, secondary),
        detected,
        type_counts,
        subjects,
        modes,
        modality,
        sign,
        aggregation,
        detection,
        tuple(findings),
        pruning,
        region_pruning,
        ranking,
        pruning_features,
        trust,
        subjects_level,
    )


def _pruning(table: pd.DataFrame, feature: str) -> PruningResult | None:
    """FP pruning on a seeded subject split, when there are subjects to split and TP/FP to prune."""
    if "subject" not in table.columns or table["subject"].nunique() < 2:
        return None
    if not table["type"].isin(["TP", "FP"]).any():
        return None
    return prune_false_positives(table, feature)


def _region_pruning(table: pd.DataFrame, feature: str) -> RegionPruningComparison | None:
    """Regional against global pruning thresholds, when false positives carry regions."""
    if "region" not in table.columns:
        return None
    false_positives = table[table["type"] == "FP"]
    if not known_region(false_positives["region"]).any():
        return None
    return compare_region_pruning(table, feature)


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    if frame is None:
        return None
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]
