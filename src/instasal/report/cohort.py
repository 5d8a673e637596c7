"""The cohort report's page (SPEC §4): a computed analysis rendered as self-contained HTML.

:func:`render_cohort_report` takes a :class:`~instasal.analyses.combined.CohortAnalysis` and its
figures (PNG bytes) as they are, formats their numbers for reading and fills the package template
``templates/cohort.html`` with autoescaping. What is computed, and the files of ``instasal
analyse``, stay in :mod:`instasal.analyses.cohort_report`, which calls this module: the one path
runs from the analyses to the report, so this module takes everything it shows as arguments and
imports nothing from the analyses but their types.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd

from instasal.report.document import HtmlDocument

if TYPE_CHECKING:  # the analyses import this module to render: their types only, no circle
    from instasal.analyses.combined import CohortAnalysis
    from instasal.analyses.pruning import PruningResult, RegionPruningComparison
    from instasal.analyses.reliance import ModalityReliance, SignPattern
    from instasal.analyses.size import AggregationVsSize

__all__ = ["CohortReport", "render_cohort_report"]


@dataclass(frozen=True)
class CohortReport(HtmlDocument):
    """A rendered cohort report (:class:`~instasal.report.document.HtmlDocument`): the HTML, the
    analysis behind it and its PNG figures by name."""

    analysis: CohortAnalysis
    figures: Mapping[str, bytes]


def render_cohort_report(
    analysis: CohortAnalysis,
    figures: Mapping[str, bytes],
    *,
    title: str,
    provenance: Mapping[str, Any],
    trust_table: pd.DataFrame | None,
    alpha: float,
    log_scale: bool,
    log_span: float,
    tn_pools: pd.DataFrame | None = None,
) -> CohortReport:
    """The cohort report page of a computed analysis (SPEC §4).

    Parameters
    ----------
    analysis
        The cohort's statistics (:func:`instasal.analyses.combined.analyse_tables`).
    figures
        PNG bytes by name, each embedded as base64 so the page opens offline.
    title
        The report's heading (escaped like every other text).
    provenance
        Key/value facts shown in the report; nested values (mappings, lists), plain JSON values
        already (:func:`instasal.analyses.combined.jsonable`), are shown as JSON.
    trust_table
        The trust checks' table of ``analysis.trust``
        (:func:`instasal.analyses.trust_summary.trust_frame`); None without trust checks.
    alpha
        The significance level the analysis used.
    log_scale, log_span
        Whether the error-modes figure drew a log₁₀ axis, and the span of values that makes it
        do so (:func:`instasal.analyses.cohort_figures.error_modes_log_scale`), as the page says.
    tn_pools
        The TN sensitivity table, or None.
    """
    modes = analysis.error_modes
    template_text = (
        resources.files("instasal.report").joinpath("templates/cohort.html").read_text("utf-8")
    )
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(template_text).render(
        title=title,
        primary=analysis.channels[0],
        secondary=analysis.channels[1],
        detected="/".join(analysis.detected_types),
        alpha=f"{alpha:g}",
        log_span=f"{log_span:g}",
        log_scale=log_scale,
        counts_text=", ".join(f"{v} {k}" for k, v in analysis.type_counts.items()) or "no domain",
        n_subjects=len(analysis.subject_counts),
        findings=[f.to_dict() for f in analysis.findings],
        groups=[{k: _number(v) for k, v in group.to_dict().items()} for group in modes.groups],
        tests=[
            {
                "pair": f"{t.first} vs {t.second}",
                "n": f"{t.n_first} / {t.n_second}",
                "u": _number(t.u_statistic, 6),
                "p": _p_value(t.p_value),
                "p_holm": _p_value(t.p_holm),
                "r": _number(t.rank_biserial),
                "reason": t.reason,
            }
            for t in modes.tests
        ],
        median_order=" > ".join(modes.median_order) or "n/a",
        modality=_modality_rows(analysis.modality),
        sign=_sign_rows(analysis.sign),
        aggregation=_aggregation_rows(analysis.aggregation),
        detection=analysis.detection,
        auc=_number(analysis.detection.auc),
        pruning=_pruning_rows(analysis.pruning),
        region_pruning=_region_pruning_text(analysis.region_pruning),
        ranking=_frame_rows(analysis.feature_ranking),
        pruning_features=_frame_rows(analysis.pruning_features),
        subject_columns=list(analysis.subject_counts.columns),
        subject_rows=analysis.subject_counts.astype(str).to_dict(orient="records"),
        provenance=[(str(k), _provenance_value(v)) for k, v in provenance.items()],
        figures={k: base64.b64encode(v).decode("ascii") for k, v in figures.items()},
        trust=_trust_rows(analysis.trust, trust_table),
        subject_level=_subject_level_rows(analysis.subject_level),
        tn_pools=_frame_rows(tn_pools),
    )
    return CohortReport(html, analysis, figures)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def _p_value(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "< 1e-300" if value < 1e-300 else f"{value:.2g}"


def _provenance_value(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _subject_level_rows(frame: pd.DataFrame | None) -> list[dict[str, str]] | None:
    if frame is None or frame.empty:
        return None
    return [
        {
            "analysis": row["analysis"],
            "quantity": row["quantity"],
            "domain": f"{row['domain_test']}: p = {_p_value(row['domain_p'])} "
            f"(n = {row['n_domains']})",
            "subject": f"{_number(row['estimate'])} [{_number(row['low'])}, "
            f"{_number(row['high'])}] ({row['n_subjects']} subjects)",
            "excludes": "yes" if row["excludes_null"] else "no",
        }
        for row in frame.to_dict(orient="records")
    ]


def _trust_rows(
    summary: dict[str, Any] | None, frame: pd.DataFrame | None
) -> dict[str, Any] | None:
    if summary is None or frame is None:
        return None
    rows = [
        {
            str(k): "" if pd.isna(v) else v if isinstance(v, str) else _number(v)
            for k, v in row.items()
        }
        for row in frame.to_dict(orient="records")
    ]
    neighbourhood = summary["negative_neighbourhood"] or {}
    return {
        "types": "/".join(summary["types"]),
        "rows": rows,
        "neighbourhood": neighbourhood.get("verdict", ""),
        "neighbourhood_note": neighbourhood.get("note", ""),
    }


def _frame_rows(frame: pd.DataFrame | None) -> list[dict[str, str]] | None:
    if frame is None or frame.empty:
        return None
    return [
        {str(k): v if isinstance(v, str) else _number(v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _pruning_rows(result: PruningResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    rows = []
    for name, counts in (("before pruning", result.test_before), ("after", result.test_after)):
        rows.append(
            {
                "name": name,
                "tp": counts.true_positive,
                "fp": counts.false_positive,
                "fn": counts.false_negative,
                "precision": _number(counts.precision),
                "recall": _number(counts.recall),
                "f1": _number(counts.f1),
            }
        )
    return {
        "feature": result.feature,
        "threshold": _number(result.threshold),
        "n_validation": len(result.validation_subjects),
        "n_test": len(result.test_subjects),
        "rows": rows,
    }


def _region_pruning_text(result: RegionPruningComparison | None) -> dict[str, str] | None:
    if result is None:
        return None
    medians = result.to_dict()["median_test_f1"]
    return {
        "n_splits": str(len(result.splits)),
        "before": _number(medians["before"]),
        "global": _number(medians["global"]),
        "regional": _number(medians["regional"]),
        "better": f"{result.share_regional_better:.0%}",
        "worse": f"{result.share_regional_worse:.0%}",
        "difference": _number(result.median_f1_difference),
        "low": _number(result.f1_difference_range_90[0]),
        "high": _number(result.f1_difference_range_90[1]),
    }


def _modality_rows(result: ModalityReliance | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "rows": [
            {k: _number(v) for k, v in row.items()}
            for row in result.to_frame().to_dict(orient="records")
        ],
        "fraction": f"{result.fraction_first_dominates:.1%}",
        "statistic": _number(result.test.statistic, 6),
        "p": _p_value(result.test.p_value),
        "reason": result.test.reason,
        "n_missing": result.n_missing,
    }


def _sign_rows(result: SignPattern) -> dict[str, Any]:
    rows = []
    for row in result.to_frame().to_dict(orient="records"):
        shown = {k: _number(v) for k, v in row.items()}
        shown["fraction_expected_sign"] = (
            "n/a"
            if math.isnan(row["fraction_expected_sign"])
            else f"{row['fraction_expected_sign']:.1%}"
        )
        shown["p_value"] = _p_value(row["p_value"])
        rows.append(shown)
    both = "n/a" if math.isnan(result.fraction_both) else f"{result.fraction_both:.1%}"
    return {"rows": rows, "both": both}


def _aggregation_rows(result: AggregationVsSize | None) -> list[dict[str, str]] | None:
    if result is None:
        return None
    return [
        {
            "aggregation": str(row["aggregation"]),
            "n": _number(row["n"]),
            "rho": _number(row["rho"]),
            "p": _p_value(row["p_value"]),
            "reason": str(row["reason"]),
        }
        for row in result.to_frame().to_dict(orient="records")
    ]
