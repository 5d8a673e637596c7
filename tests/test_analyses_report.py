"""Cohort figures, HTML report, ``analyse_cohort`` files and the ``analyse`` command (SPEC §4)."""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import instasal.cli.analysis_commands  # noqa: F401  (registers the command)
from instasal.analyses import (
    LesionTableError,
    aggregation_vs_size,
    analyse_cohort,
    build_cohort_report,
    error_detection,
    error_modes,
)
from instasal.analyses.cohort_figures import (
    aggregation_figure,
    error_modes_figure,
    roc_figure,
    uses_log_scale,
)
from instasal.cli import run_app
from instasal.errors import ConfigurationError, ImageError, OutputExistsError
from test_report_document import assert_notebook_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MEDIANS = {"TP": 2.0, "FP": 1.6, "FN": 1.2, "TN": 0.5}


def cohort_table(
    rng: np.random.Generator,
    *,
    subjects: tuple[str, ...] = ("sub-01", "sub-02", "sub-03"),
    per_type: int = 6,
    aggregation: str = "max",
    medians: dict[str, float] = MEDIANS,
) -> pd.DataFrame:
    """Every lesion-table column for two channels; mean aggregation divides peaks by volume."""
    rows = []
    for subject in subjects:
        for lesion_id, kind in enumerate(np.repeat(list(medians), per_type), start=1):
            volume = float(rng.lognormal(4.0, 1.0))
            flair = medians[str(kind)] * float(np.exp(rng.normal(0, 0.2)))
            if aggregation == "mean":
                flair *= 20.0 / volume
            t1w = flair * float(rng.uniform(0.2, 0.8))
            row: dict[str, object] = {
                "subject": subject,
                "id": lesion_id,
                "type": kind,
                "region": "n/a",
                "volume_mm3": volume,
                "n_voxels": int(volume),
                "prob_mean": 0.5,
                "prob_max": 0.9,
            }
            for channel, peak in (("FLAIR", flair), ("T1w", t1w)):
                row |= {
                    f"peak_{channel}": peak,
                    f"peak_{channel}_voxel": "1,2,3",
                    f"trough_{channel}": -peak / 3,
                    f"trough_{channel}_voxel": "3,2,1",
                    f"inside_mean_{channel}": peak / 4,
                    f"ring_mean_{channel}": -peak / 10,
                    f"reliance_{channel}": peak / (abs(flair) + abs(t1w)),
                }
            rows.append(row | {"gradcam_peak": 1.0, "gradcam_peak_voxel": "1,2,3"})
    return pd.DataFrame(rows)


def embedded_pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(data)
        for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]


class _TagBalance(HTMLParser):
    """Checks that every non-void element is closed, in order."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def assert_well_formed(html: str) -> None:
    checker = _TagBalance()
    checker.feed(html)
    assert checker.errors == []
    assert checker.stack == []


# --- figures ----------------------------------------------------------------------------------


def test_log_scale_rule():
    assert not uses_log_scale(np.array([1.0, 99.0]))
    assert uses_log_scale(np.array([1.0, 100.0]))
    assert not uses_log_scale(np.array([-1.0, 1000.0]))  # a non-positive value: linear
    assert not uses_log_scale(np.array([]))


def test_error_modes_figure_axis_and_labels(rng):
    table = cohort_table(rng)
    figure = error_modes_figure(table, error_modes(table))
    axis = figure.axes[0]
    assert axis.get_ylabel() == "peak_FLAIR"  # values within a factor 100: linear
    assert [t.get_text() for t in axis.get_xticklabels()] == [
        "TP\nn=18",
        "FP\nn=18",
        "FN\nn=18",
        "TN\nn=18",
    ]
    spread = table.assign(peak_FLAIR=np.where(table["type"] == "TN", 1e-3, table["peak_FLAIR"]))
    log_axis = error_modes_figure(spread, error_modes(spread)).axes[0]
    assert log_axis.get_ylabel() == "log₁₀ peak_FLAIR"
    offsets = [np.asarray(c.get_offsets()) for c in log_axis.collections]
    lowest = min(float(np.min(points[:, 1])) for points in offsets if len(points))
    assert lowest == pytest.approx(-3.0)  # points drawn at log10(1e-3)


def test_error_modes_figure_with_a_single_and_a_missing_type(rng):
    table = cohort_table(rng)
    table = table[(table["type"] != "TN") & ~((table["type"] == "FN") & (table["id"] > 13))]
    labels = [
        t.get_text()
        for t in error_modes_figure(table, error_modes(table)).axes[0].get_xticklabels()
    ]
    assert labels[2:] == ["FN\nn=3", "TN\nn=0"]


def test_aggregation_and_roc_figures_show_the_computed_numbers(rng):
    table_max, table_mean = cohort_table(rng), cohort_table(rng, aggregation="mean")
    result = aggregation_vs_size(table_max, table_mean)
    titles = [a.get_title() for a in aggregation_figure(table_max, table_mean, result).axes]
    assert f"ρ = {result.max.rho:.2f}" in titles[0]
    assert f"ρ = {result.mean.rho:.2f}" in titles[1]
    detection = error_detection(table_max)
    curve = roc_figure(detection).axes[0].get_lines()[1]
    np.testing.assert_array_equal(curve.get_xdata(), detection.false_positive_rate)
    np.testing.assert_array_equal(curve.get_ydata(), detection.true_positive_rate)
    assert curve.get_label() == f"AUC = {detection.auc:.3f}"


# --- the HTML report --------------------------------------------------------------------------


def test_report_embeds_every_figure_and_escapes_text(rng):
    table_max = cohort_table(rng, subjects=("<script>alert(1)</script>", "sub-02"))
    table_mean = cohort_table(rng, aggregation="mean")
    before = table_max.copy()
    report = build_cohort_report(
        table_max,
        table_mean,
        title="<b>cohort</b>",
        provenance={"model": "<img src=x onerror=alert(2)>", "settings": {"n": 50}},
    )
    pd.testing.assert_frame_equal(table_max, before)
    assert set(report.figures) == {
        "error_modes",
        "modality_reliance",
        "sign_pattern",
        "aggregation_vs_size",
        "error_detection",
    }
    embedded = embedded_pngs(report.html)
    assert sorted(embedded) == sorted(report.figures.values())
    assert all(png.startswith(PNG_MAGIC) for png in embedded)
    assert "<script>" not in report.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.html
    assert "<img src=x" not in report.html
    assert "<b>cohort</b>" not in report.html
    assert "&lt;b&gt;cohort&lt;/b&gt;" in report.html
    assert_notebook_frame(report._repr_html_(), report.html)
    assert_well_formed(report.html)
    for finding in report.analysis.findings:
        assert finding.verdict in report.html


def test_report_without_mean_table_or_reference(rng):
    table = cohort_table(rng, medians={"lesion": 1.0})
    report = build_cohort_report(table, title="no reference", provenance={})
    analysis = report.analysis
    assert analysis.detected_types == ("lesion",)
    assert analysis.sign.inside.n == len(table)  # per-lesion analyses use every predicted lesion
    assert {f.key: f.verdict for f in analysis.findings}["error_modes"] == "not testable"
    assert {f.key: f.verdict for f in analysis.findings}["aggregation_vs_size"] == "not testable"
    assert "aggregation_vs_size" not in report.figures
    assert len(embedded_pngs(report.html)) == len(report.figures) == 4
    assert "No mean-aggregation table" in report.html
    assert_well_formed(report.html)
    assert not analysis.detection.computable


def test_report_of_a_table_without_rows(rng):
    empty = cohort_table(rng).iloc[:0]
    report = build_cohort_report(empty, empty, title="empty", provenance={})
    assert {f.verdict for f in report.analysis.findings} == {"not testable"}
    assert len(embedded_pngs(report.html)) == 5  # every figure still drawn, empty
    assert all("nan" not in f.observed for f in report.analysis.findings)


# --- analyse_cohort and the command ------------------------------------------------------------


@pytest.fixture
def cohort_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    cohort_table(rng).to_csv(tmp_path / "lesions.tsv", sep="\t", index=False, na_rep="n/a")
    cohort_table(rng, aggregation="mean").to_csv(
        tmp_path / "lesions_mean.tsv", sep="\t", index=False, na_rep="n/a"
    )
    (tmp_path / "cohort.json").write_text(json.dumps({"model": "unet", "subjects": ["a", "b"]}))
    return tmp_path


@pytest.fixture
def stub_figures(monkeypatch):
    """Skip figure rendering where a test is about files and the command, not figures."""

    def figures(table_max, table_mean, analysis):
        names = ["error_modes", "sign_pattern", "error_detection"]
        names += ["modality_reliance"] if analysis.modality is not None else []
        names += ["aggregation_vs_size"] if analysis.aggregation is not None else []
        return dict.fromkeys(names, PNG_MAGIC)

    monkeypatch.setattr("instasal.analyses.cohort_report._figures", figures)


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def test_analyse_cohort_writes_every_file_by_rename_report_last(cohort_folder, monkeypatch):
    renamed: list[Path] = []
    real_replace = os.replace

    def recording_replace(source, target):
        renamed.append(Path(target))
        real_replace(source, target)

    monkeypatch.setattr("instasal.io.os.replace", recording_replace)
    report = analyse_cohort(cohort_folder)
    out = cohort_folder / "analysis"
    files = {p for p in out.rglob("*") if p.is_file()}
    assert files == set(renamed)  # every file arrived by an atomic rename, none left half-written
    assert renamed[-1] == out / "report.html"
    assert {p.name for p in (out / "figures").iterdir()} == {
        "error_modes.png",
        "modality_reliance.png",
        "sign_pattern.png",
        "aggregation_vs_size.png",
        "error_detection_roc.png",
    }
    statistics = json.loads((out / "statistics.json").read_text(), parse_constant=_no_constant)
    assert statistics["type_counts"] == {"TP": 18, "FP": 18, "FN": 18, "TN": 18}
    assert statistics["provenance"]["cohort model"] == "unet"
    assert statistics["provenance"]["cohort subjects"] == 2
    tests = pd.read_csv(out / "error_modes_tests.tsv", sep="\t")
    assert tests["p_holm"].tolist() == pytest.approx(
        [t.p_holm for t in report.analysis.error_modes.tests]
    )
    assert (out / "report.html").read_text() == report.html


def test_analyse_cohort_refuses_to_overwrite_and_replaces_when_asked(cohort_folder, stub_figures):
    analyse_cohort(cohort_folder)
    out = cohort_folder / "analysis"
    first = (out / "statistics.json").read_bytes()
    with pytest.raises(OutputExistsError, match="exists already"):
        analyse_cohort(cohort_folder)
    assert (out / "statistics.json").read_bytes() == first  # untouched by the refused run
    (cohort_folder / "lesions_mean.tsv").unlink()
    report = analyse_cohort(cohort_folder, overwrite=True)
    assert "aggregation_vs_size" not in report.figures
    assert not (out / "aggregation_vs_size.tsv").exists()  # stale output of the first run removed
    assert not (out / "figures" / "aggregation_vs_size.png").exists()
    assert not list(out.rglob("*.tmp"))


def test_analyse_cohort_crash_leaves_no_report(cohort_folder, monkeypatch, stub_figures):
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target).name == "report.html":
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr("instasal.io.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        analyse_cohort(cohort_folder)
    out = cohort_folder / "analysis"
    assert not (out / "report.html").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".report.html.")]


def test_analyse_cohort_names_the_missing_column_and_file(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "lesions.tsv"
    cohort_table(rng).drop(columns="ring_mean_FLAIR").to_csv(path, sep="\t", index=False)
    with pytest.raises(
        LesionTableError, match=rf"{re.escape(str(path))}: no column 'ring_mean_FLAIR'"
    ):
        analyse_cohort(tmp_path)
    assert not (tmp_path / "analysis").exists()


def test_analyse_command(cohort_folder, capsys, stub_figures):
    assert run_app(["analyse", str(cohort_folder)]) == 0
    printed = capsys.readouterr().err
    assert "reproduced" in printed
    assert "report.html" in printed
    assert run_app(["analyse", str(cohort_folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:")
    assert "exists already" in error
    assert len(error.splitlines()) == 1
    assert run_app(["analyse", str(cohort_folder), "--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert run_app(["analyse", str(cohort_folder / "absent")]) == 2
    assert "lesion table not found" in capsys.readouterr().err


def _write_labels(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def test_regions_from_the_atlas_enable_region_pruning(cohort_folder, tmp_path, stub_figures, rng):
    """Each domain's region is the atlas label under its voxels in the run's instance map."""
    from instasal.analyses.regions import assign_regions

    table = pd.read_csv(cohort_folder / "lesions.tsv", sep="\t")
    dataset = tmp_path / "dataset"
    shape = (30, 4, 4)
    atlas = np.zeros(shape, np.uint8)
    atlas[:15] = 2  # juxtacortical
    atlas[15:] = 3  # deep (white matter)
    for subject, rows in table.groupby("subject"):
        for channel in ("FLAIR", "T1w"):
            image = rng.normal(size=shape).astype(np.float32)
            _write_labels(dataset / subject / "anat" / f"{subject}_{channel}.nii.gz", image)
        derived = dataset / "derivatives" / "truth" / subject / "anat"
        _write_labels(derived / f"{subject}_desc-regions_dseg.nii.gz", atlas)
        labels = np.zeros(shape, np.int16)
        for lesion_id in rows["id"]:
            labels[lesion_id, 0, 0] = lesion_id  # ids 1–24: 1–14 in label 2, 15–24 in label 3
        _write_labels(cohort_folder / subject / f"{subject}_desc-instances_dseg.nii.gz", labels)
    relabelled = assign_regions(table, cohort_folder, dataset)
    expected = np.where(table["id"] < 15, "juxtacortical", "deep")
    assert relabelled["region"].tolist() == expected.tolist()
    assert table["region"].isna().all()  # the input table is not modified

    report = analyse_cohort(cohort_folder, regions_from=dataset)
    assert report.analysis.region_pruning is not None
    statistics = json.loads((cohort_folder / "analysis" / "statistics.json").read_text())
    assert statistics["region_pruning"]["n_splits"] == 100
    assert statistics["provenance"]["regions"].endswith(str(dataset))
    splits = pd.read_csv(cohort_folder / "analysis" / "region_pruning_splits.tsv", sep="\t")
    assert len(splits) == 100
    assert "One threshold per lesion region" in report.html
    assert_well_formed(report.html)

    flipped = dataset / "derivatives" / "truth" / "sub-01" / "anat"
    flipped_path = flipped / "sub-01_desc-regions_dseg.nii.gz"
    import nibabel as nib

    # the same atlas stored left-right flipped: same shape, the labels on the mirrored voxels
    mirror = np.diag([-2.0, 2.0, 2.0, 1.0])
    mirror[0, 3] = 2.0 * (shape[0] - 1)
    nib.save(nib.Nifti1Image(atlas[::-1].copy(), mirror), flipped_path)
    with pytest.raises(ImageError, match="affine differs"):
        assign_regions(table, cohort_folder, dataset)

    (cohort_folder / "sub-01" / "sub-01_desc-instances_dseg.nii.gz").unlink()
    with pytest.raises(ConfigurationError, match="instance label map is missing"):
        assign_regions(table, cohort_folder, dataset)
