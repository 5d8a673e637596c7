"""The ``analyse`` command (SPEC §4): argument parsing and a summary line per paper finding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from instasal.cli._app import app, console, output_path, require_files
from instasal.errors import ConfigurationError

__all__ = ["analyse"]

_VERDICT_STYLE = {
    "reproduced": "green",
    "not reproduced": "red",
    "not testable": "dim",
    "not testable at this n": "yellow",
}


@app.command()
def analyse(
    cohort_out: Annotated[
        Path,
        typer.Argument(
            parser=output_path,
            help="Cohort output folder with lesions.tsv (and lesions_mean.tsv).",
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier analysis/ folder (default: refuse to).")
    ] = False,
    regions: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder the cohort ran on: every domain's region is read from its "
            "subject's region atlas (desc-regions_dseg) for region-wise FP pruning (default: "
            "the regions in the lesion table)."
        ),
    ] = None,
    tn_pool: Annotated[
        list[str] | None,
        typer.Option(
            help="POOL=FOLDER: a cohort run of the same data and model with --tn-from POOL; "
            "its TN domains are compared with this cohort's TP/FP/FN (repeatable)."
        ),
    ] = None,
) -> None:
    """Statistics, figures and HTML report of the paper's analyses, into COHORT_OUT/analysis."""
    table = cohort_out / "lesions.tsv"
    if not table.exists():
        raise ConfigurationError(f"{table}: lesion table not found")
    require_files(regions)
    pools: dict[str, Path] = {}
    for item in tn_pool or []:
        name, _, folder = item.partition("=")
        if not name or not folder:
            raise ConfigurationError(f"--tn-pool must be POOL=FOLDER, got {item!r}")
        pools[name] = Path(folder)
    from instasal.analyses import analyse_cohort

    report = analyse_cohort(
        cohort_out, overwrite=overwrite, regions_from=regions, tn_pools=pools or None
    )
    for finding in report.analysis.findings:
        style = _VERDICT_STYLE[finding.verdict]
        title = escape(finding.title)
        console.print(f"[{style}]{finding.verdict:>22}[/]  {title}", highlight=False)
    report_path = escape(str(cohort_out / "analysis" / "report.html"))
    console.print(f"wrote [bold]{report_path}[/]", highlight=False)
