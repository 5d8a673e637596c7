"""Cohort analyses of instance saliency: the paper's statistics and their report (SPEC §4).

Functions take cohort lesion tables (pandas DataFrames, the per-subject lesion tables of SPEC §2
concatenated with a ``subject`` column), never modify them, and return frozen dataclasses with
``to_dict`` and table views.
"""

from __future__ import annotations

from instasal.analyses._table import LesionTableError, read_lesion_table
from instasal.analyses.cohort_report import CohortReport, analyse_cohort, build_cohort_report
from instasal.analyses.combined import CohortAnalysis, analyse_tables
from instasal.analyses.detection import ErrorDetection, error_detection
from instasal.analyses.error_modes import ErrorModes, GroupSummary, PairwiseTest, error_modes
from instasal.analyses.findings import Finding
from instasal.analyses.pruning import PruningResult, prune_false_positives
from instasal.analyses.reliance import (
    ModalityReliance,
    SignPattern,
    modality_reliance,
    sign_pattern,
)
from instasal.analyses.size import AggregationVsSize, aggregation_vs_size
from instasal.analyses.statistics import Correlation, Distribution, TestResult, holm, rank_biserial

__all__ = [
    "AggregationVsSize",
    "CohortAnalysis",
    "CohortReport",
    "Correlation",
    "Distribution",
    "ErrorDetection",
    "ErrorModes",
    "Finding",
    "GroupSummary",
    "LesionTableError",
    "ModalityReliance",
    "PairwiseTest",
    "PruningResult",
    "SignPattern",
    "TestResult",
    "aggregation_vs_size",
    "analyse_cohort",
    "analyse_tables",
    "build_cohort_report",
    "error_detection",
    "error_modes",
    "holm",
    "modality_reliance",
    "prune_false_positives",
    "rank_biserial",
    "read_lesion_table",
    "sign_pattern",
]
