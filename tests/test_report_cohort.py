"""The cohort page is rendered in ``report/`` from a computed analysis (issue 26 item 3)."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import numpy as np

from instasal.analyses import CohortReport, build_cohort_report
from instasal.analyses.cohort_figures import LOG_SPAN, error_modes_log_scale
from instasal.analyses.statistics import ALPHA
from instasal.report import cohort
from test_analyses_report import cohort_table


def test_the_report_module_imports_first_without_a_circle() -> None:
    """``report.cohort`` names the analyses' types only for type checking, so importing it
    before ``instasal.analyses`` (which imports it to render) works in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", "import instasal.report.cohort, instasal.analyses"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_cohort_template_ships_with_the_report() -> None:
    assert resources.files("instasal.report").joinpath("templates/cohort.html").is_file()
    assert not resources.files("instasal.analyses").joinpath("templates").is_dir()


def test_build_renders_through_the_one_page_function() -> None:
    table = cohort_table(np.random.default_rng(3))
    built = build_cohort_report(table, title="cohort", provenance={"settings": {"n": 2}})
    assert CohortReport is cohort.CohortReport and isinstance(built, cohort.CohortReport)
    rendered = cohort.render_cohort_report(
        built.analysis,
        built.figures,
        title="cohort",
        provenance={"settings": {"n": 2}},
        trust_table=None,
        alpha=ALPHA,
        log_scale=error_modes_log_scale(table, built.analysis.error_modes),
        log_span=LOG_SPAN,
    )
    assert rendered.html == built.html
    assert "<td>{&#34;n&#34;: 2}</td>" in rendered.html  # nested provenance shown as JSON
