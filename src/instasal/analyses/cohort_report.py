"""The cohort report (SPEC §4): its analysis, figures and the files of ``instasal analyse``.

:func:`build_cohort_report` computes a :class:`~instasal.analyses.combined.CohortAnalysis` and its
figures (PNG) and hands them to :func:`instasal.report.cohort.render_cohort_report`, the one place
that renders the page; :func:`analyse_cohort` does it for a cohort run folder and writes
``analysis/`` atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from instasal.analyses._table import LesionTableError, read_lesion_table
from instasal.analyses.cohort_figures import (
    LOG_SPAN,
    aggregation_figure,
    error_modes_figure,
    error_modes_log_scale,
    modality_figure,
    roc_figure,
    sign_pattern_figure,
)
from instasal.analyses.combined import CohortAnalysis, analyse_tables, jsonable
from instasal.analyses.regions import assign_regions
from instasal.analyses.statistics import ALPHA
from instasal.analyses.tn_sensitivity import tn_sensitivity
from instasal.analyses.trust_summary import trust_frame
from instasal.errors import OutputExistsError
from instasal.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from instasal.pipeline.outputs import COHORT_TRUST_TABLES
from instasal.provenance import software_versions
from instasal.report.cohort import CohortReport, render_cohort_report
from instasal.report.subject_figures import figure_png
from instasal.report.trust_figures import deletion_figure, profile_figure, randomisation_figure

__all__ = ["CohortReport", "analyse_cohort", "build_cohort_report"]

_FIGURE_FILES = {
    "error_modes": "error_modes.png",
    "modality_reliance": "modality_reliance.png",
    "sign_pattern": "sign_pattern.png",
    "aggregation_vs_size": "aggregation_vs_size.png",
    "error_detection": "error_detection_roc.png",
    "trust_randomisation": "trust_randomisation.png",
    "trust_curves": "trust_deletion_insertion.png",
    "profiles": "trust_profiles.png",
}


def _figures(
    table_max: pd.DataFrame, table_mean: pd.DataFrame | None, analysis: CohortAnalysis
) -> dict[str, bytes]:
    figures = {
        "error_modes": figure_png(error_modes_figure(table_max, analysis.error_modes), dpi=90)
    }
    if analysis.modality is not None:
        figures["modality_reliance"] = figure_png(
            modality_figure(table_max, analysis.modality), dpi=90
        )
    figures["sign_pattern"] = figure_png(sign_pattern_figure(table_max, analysis.sign), dpi=90)
    if analysis.aggregation is not None and table_mean is not None:
        figures["aggregation_vs_size"] = figure_png(
            aggregation_figure(table_max, table_mean, analysis.aggregation), dpi=90
        )
    figures["error_detection"] = figure_png(roc_figure(analysis.detection), dpi=90)
    return figures


def _trust_figures(
    trust_tables: Mapping[str, pd.DataFrame], analysis: CohortAnalysis
) -> dict[str, bytes]:
    """The subject report's trust figures over the cohort's domains of the detected types."""
    drawers = {
        "trust_randomisation": randomisation_figure,
        "trust_curves": deletion_figure,
        "profiles": lambda frame: profile_figure(frame, [analysis.channels[0]]),
    }
    figures = {}
    for name, draw in drawers.items():
        frame = trust_tables.get(name)
        if frame is None or frame.empty or not {"subject", "id", "type"} <= set(frame.columns):
            continue
        if name != "profiles":
            frame = frame[frame["type"].astype(str).isin(analysis.detected_types)]
        domains = frame.assign(id=frame["subject"].astype(str) + ":" + frame["id"].astype(str))
        if len(domains):
            figures[name] = figure_png(draw(domains), dpi=90)
    return figures


def build_cohort_report(
    table_max: pd.DataFrame,
    table_mean: pd.DataFrame | None = None,
    *,
    title: str,
    provenance: Mapping[str, Any],
    trust_tables: Mapping[str, pd.DataFrame] | None = None,
    tn_pools: pd.DataFrame | None = None,
) -> CohortReport:
    """Analyse a cohort and render its self-contained HTML report (SPEC §4).

    Parameters
    ----------
    table_max, table_mean
        Cohort lesion tables with max and (optionally) mean aggregation; not modified.
    trust_tables
        The gathered trust TSVs of ``cohort --trust`` by name (``profiles``,
        ``trust_randomisation``, ``trust_curves``), each with ``subject``; None or empty without.
    tn_pools
        The TN sensitivity table (:func:`instasal.analyses.tn_sensitivity.tn_sensitivity`), or
        None.
    title
        The report's heading (escaped like every other text).
    provenance
        Key/value facts shown in the report (model, dataset, command, versions…); nested values are
        shown as JSON.

    Returns
    -------
    CohortReport
        ``html`` embeds every figure as a base64 PNG, so the file opens offline; the same PNG bytes
        are in ``figures``.
    """
    trust_tables = trust_tables or {}
    analysis = analyse_tables(table_max, table_mean)
    figures = _figures(table_max, table_mean, analysis)
    if analysis.trust is not None:
        figures |= _trust_figures(trust_tables, analysis)
    return render_cohort_report(
        analysis,
        figures,
        title=title,
        provenance={
            key: jsonable(value) if isinstance(value, Mapping | list | tuple) else value
            for key, value in provenance.items()
        },
        trust_table=None if analysis.trust is None else trust_frame(analysis.trust),
        alpha=ALPHA,
        log_scale=error_modes_log_scale(table_max, analysis.error_modes),
        log_span=LOG_SPAN,
        tn_pools=tn_pools,
    )


def _file_facts(path: Path, table: pd.DataFrame) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(table),
    }


def _read_trust_table(path: Path) -> pd.DataFrame:
    """A gathered trust TSV (``n/a`` missing); empty when the cohort checked no domain."""
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise LesionTableError(f"{path}: cannot read as a TSV table ({error})") from None


def _cohort_provenance(cohort_out: Path) -> dict[str, Any]:
    """What the cohort runner recorded (``cohort.json``, ``failures.json``), where present."""
    facts: dict[str, Any] = {}
    for name in ("cohort.json", "failures.json"):
        path = cohort_out / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise LesionTableError(f"{path}: unreadable JSON ({error})") from None
        if name == "cohort.json" and isinstance(record, dict):
            facts |= {
                f"cohort {k}": v
                for k, v in record.items()
                if k
                in (
                    "dataset",
                    "model",
                    "settings",
                    "with_mean",
                    "tn_from",
                    "executor",
                    "cohort_key",
                )
            }
            facts["cohort subjects"] = len(record.get("subjects", []))
        elif isinstance(record, dict):
            facts["failed subjects"] = record.get("failed", {})
    return facts


def _tables(analysis: CohortAnalysis) -> dict[str, pd.DataFrame]:
    tables = {
        "findings.tsv": analysis.findings_frame(),
        "error_modes_groups.tsv": analysis.error_modes.groups_frame(),
        "error_modes_tests.tsv": analysis.error_modes.tests_frame(),
        "sign_pattern.tsv": analysis.sign.to_frame(),
        "error_detection_roc.tsv": analysis.detection.to_frame(),
    }
    if analysis.modality is not None:
        tables["modality_reliance.tsv"] = analysis.modality.to_frame()
    if analysis.aggregation is not None:
        tables["aggregation_vs_size.tsv"] = analysis.aggregation.to_frame()
    if analysis.region_pruning is not None:
        tables["region_pruning_splits.tsv"] = analysis.region_pruning.splits
    if analysis.feature_ranking is not None:
        tables["error_detection_features.tsv"] = analysis.feature_ranking
    if analysis.pruning_features is not None:
        tables["pruning_features.tsv"] = analysis.pruning_features
    if analysis.trust is not None:
        tables["trust.tsv"] = trust_frame(analysis.trust)
    if analysis.subject_level is not None:
        tables["subject_level.tsv"] = analysis.subject_level
    return tables


_OWNED = (
    "report.html",
    "statistics.json",
    "findings.tsv",
    "error_modes_groups.tsv",
    "error_modes_tests.tsv",
    "sign_pattern.tsv",
    "error_detection_roc.tsv",
    "modality_reliance.tsv",
    "aggregation_vs_size.tsv",
    "region_pruning_splits.tsv",
    "error_detection_features.tsv",
    "pruning_features.tsv",
    "trust.tsv",
    "subject_level.tsv",
    "tn_sensitivity.tsv",
    *(f"figures/{name}" for name in _FIGURE_FILES.values()),
)


def analyse_cohort(
    cohort_out: Path | str,
    *,
    overwrite: bool = False,
    title: str | None = None,
    regions_from: Path | str | None = None,
    tn_pools: Mapping[str, Path | str] | None = None,
) -> CohortReport:
    """Analyse a cohort run folder and write ``analysis/`` (SPEC §4; ``instasal analyse``).

    Parameters
    ----------
    cohort_out
        A cohort output folder holding ``lesions.tsv`` (max aggregation) and optionally
        ``lesions_mean.tsv`` (mean aggregation), ``cohort.json`` and ``failures.json``.
    overwrite
        Replace an earlier analysis; without it an existing ``analysis/`` file stops the run before
        anything is written.
    title
        Report heading; default "Cohort analysis — <folder name>".
    regions_from
        The dataset the cohort ran on, to read every domain's region from its whole-brain region
        atlas (:func:`instasal.analyses.regions.assign_regions`); enables region-wise pruning for
        runs whose false positives have no region.
    tn_pools
        ``{pool: cohort output folder}`` of runs of the same data and model with other
        ``--tn-from`` pools, for the TN sensitivity analysis (``tn_sensitivity.tsv``); this
        cohort's own pool (its ``cohort.json`` ``tn_from``, ``wm`` when absent) is added.

    Returns
    -------
    CohortReport
        Also written: ``analysis/report.html`` (last, so its presence means a complete analysis),
        ``statistics.json`` (every number, the findings and the provenance), one TSV per table,
        ``figures/*.png``. Every file is written atomically.
    """
    cohort_out = Path(cohort_out)
    destination = cohort_out / "analysis"
    existing = [destination / name for name in _OWNED if (destination / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]}: exists already (pass overwrite=True / --overwrite to replace "
            f"the analysis in {destination})"
        )
    max_path, mean_path = cohort_out / "lesions.tsv", cohort_out / "lesions_mean.tsv"
    table_max = read_lesion_table(max_path)
    table_mean = read_lesion_table(mean_path) if mean_path.exists() else None
    provenance: dict[str, Any] = {"cohort folder": str(cohort_out)}
    if regions_from is not None:
        table_max = assign_regions(table_max, cohort_out, regions_from)
        provenance["regions"] = f"assigned from the region atlas of {regions_from}"
    provenance["lesions.tsv"] = _file_facts(max_path, table_max)
    if table_mean is not None:
        provenance["lesions_mean.tsv"] = _file_facts(mean_path, table_mean)
    provenance |= _cohort_provenance(cohort_out)
    trust_tables = {
        name: _read_trust_table(cohort_out / f"{name}.tsv")
        for name in COHORT_TRUST_TABLES
        if (cohort_out / f"{name}.tsv").exists()
    }
    for name, frame in trust_tables.items():
        provenance[f"{name}.tsv"] = _file_facts(cohort_out / f"{name}.tsv", frame)
    sensitivity = None
    if tn_pools:
        own = str(provenance.get("cohort tn_from", "wm"))
        pool_tables = {own: table_max}
        for pool, folder in tn_pools.items():
            pool_path = Path(folder) / "lesions.tsv"
            pool_tables[pool] = read_lesion_table(pool_path)
            provenance[f"TN pool {pool}"] = _file_facts(pool_path, pool_tables[pool])
        sensitivity = tn_sensitivity(table_max, pool_tables)
    provenance["versions"] = software_versions(("numpy", "scipy", "pandas", "matplotlib"))
    provenance["generated"] = datetime.now(UTC).isoformat(timespec="seconds")
    report = build_cohort_report(
        table_max,
        table_mean,
        title=title or f"Cohort analysis — {cohort_out.resolve().name}",
        provenance=provenance,
        trust_tables=trust_tables,
        tn_pools=sensitivity,
    )
    written = set()
    for key, png in report.figures.items():
        name = f"figures/{_FIGURE_FILES[key]}"
        atomic_write_bytes(destination / name, png, overwrite=True)
        written.add(name)
    for name, frame in _tables(report.analysis).items():
        text = frame.to_csv(sep="\t", index=False, na_rep="n/a")
        atomic_write_text(destination / name, text, overwrite=True)
        written.add(name)
    if sensitivity is not None:
        atomic_write_text(
            destination / "tn_sensitivity.tsv",
            sensitivity.to_csv(sep="\t", index=False, na_rep="n/a"),
            overwrite=True,
        )
        written.add("tn_sensitivity.tsv")
    statistics = report.analysis.to_dict() | {"provenance": jsonable(provenance)}
    if sensitivity is not None:
        statistics["tn_sensitivity"] = jsonable(sensitivity.to_dict(orient="records"))
    atomic_write_json(destination / "statistics.json", statistics, overwrite=True)
    written.add("statistics.json")
    for stale in set(_OWNED) - written - {"report.html"}:
        (destination / stale).unlink(missing_ok=True)
    report.save_as_html(destination / "report.html", overwrite=True)
    return report
