"""Figures and self-contained HTML reports built from explain outputs."""

from instasal.report.html import SubjectReport, build_subject_report, write_subject_report

__all__ = ["SubjectReport", "build_subject_report", "write_subject_report"]
