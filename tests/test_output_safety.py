"""No run writes over its inputs or leaves an earlier run's files mixed with its own (issue 24).

Each test names a way a run used to lose data: writing its mask over the reference mask it was
given, overwriting a file that only happened to have an output's name, leaving the previous
subject's files beside the next one's after ``--overwrite``, writing outside ``--out`` through a
``--name`` with folders in it, and rewriting a finished run's files on a rerun. The model is the
1×1×1 linear TorchScript network of ``conftest.py`` on its 16³ subjects (a run takes a second).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import PointwiseLinear
from instasal.cli import run_app
from instasal.errors import ConfigurationError, OutputExistsError
from instasal.folders import refuse_writing_over_inputs
from instasal.models import load_model
from instasal.models.cards import ModelCard
from instasal.models.export import export_weights
from instasal.models.segmentation import segment_subject
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.pipeline.cohort import run_cohort
from instasal.saliency import SmoothGradConfig

SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=1, context="full"
)
FLAGS = ["--n-samples", "2", "--n-true-negatives", "1", "--context", "full", "--no-gradcam"]


def _images(dataset: Path, participant: str = "sub-01") -> list[str]:
    anat = dataset / participant / "anat"
    return [str(anat / f"{participant}_FLAIR.nii.gz"), str(anat / f"{participant}_T1w.nii.gz")]


def _reference(dataset: Path, participant: str = "sub-01") -> Path:
    folder = dataset / "derivatives" / "manual" / participant / "anat"
    return folder / f"{participant}_desc-lesion_mask.nii.gz"


def _explain(dataset: Path, model: Path, out: Path | str, *extra: str) -> list[str]:
    return ["explain", *_images(dataset), "--out", str(out), "--model", str(model), *FLAGS, *extra]


def _error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def _stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` with its inode and modification time (ns)."""
    return {
        path: (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_explain_into_the_reference_masks_folder_keeps_the_reference(
    linear_dataset, linear_model_path, capsys, overwrite
):
    reference = _reference(linear_dataset)
    before = reference.read_bytes()
    extra = ["--reference", str(reference), *(["--overwrite"] if overwrite else [])]
    assert run_app(_explain(linear_dataset, linear_model_path, reference.parent, *extra)) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{reference}: is an input of this run" in line and "--out" in line
    assert reference.read_bytes() == before


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_an_output_linked_to_an_input_is_refused_even_with_overwrite(
    tmp_path, linear_dataset, linear_model_path, capsys, link
):
    reference = _reference(linear_dataset)
    out = tmp_path / "out"
    out.mkdir()
    linked = out / "sub-01_desc-lesion_mask.nii.gz"
    if link == "symlink":
        linked.symlink_to(reference)
    else:
        os.link(reference, linked)
    before = reference.read_bytes()
    extra = ["--reference", str(reference), "--overwrite"]
    assert run_app(_explain(linear_dataset, linear_model_path, out, *extra)) == 2
    assert f"{linked}: is an input of this run" in _error_line(capsys.readouterr().err)
    assert reference.read_bytes() == before


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_the_models_own_card_is_never_written_over(
    tmp_path, linear_dataset, linear_model_path, overwrite
):
    """A TorchScript model named ``run.pt`` has its card in ``run.json``, an explain output."""
    out = tmp_path / "out"
    out.mkdir()
    model = out / "run.pt"
    shutil.copy(linear_model_path, model)
    shutil.copy(linear_model_path.with_suffix(".json"), out / "run.json")
    card = (out / "run.json").read_bytes()
    with pytest.raises(ConfigurationError, match=r"run\.json: is an input of this run"):
        explain_subject(_images(linear_dataset), model, out, settings=SETTINGS, overwrite=overwrite)
    assert (out / "run.json").read_bytes() == card


def test_a_folder_holding_a_file_the_run_would_write_is_refused_without_overwrite(
    tmp_path, linear_dataset, linear_model_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "sub-01_desc-lesion_mask.nii.gz"
    mine.write_bytes(b"someone else's mask")
    assert run_app(_explain(linear_dataset, linear_model_path, out)) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{mine}: exists already" in line and "--overwrite" in line
    assert mine.read_bytes() == b"someone else's mask"
    assert run_app(_explain(linear_dataset, linear_model_path, out, "--overwrite")) == 0
    assert mine.read_bytes() != b"someone else's mask"


def test_overwrite_with_another_subject_leaves_none_of_the_first_subjects_files(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "out"
    assert run_app(_explain(linear_dataset, linear_model_path, out)) == 0
    notes = out / "sub-01_notes.txt"  # the user's, not the run's
    notes.write_text("keep me")
    second = ["explain", *_images(linear_dataset, "sub-02"), "--out", str(out)]
    second += ["--model", str(linear_model_path), *FLAGS, "--overwrite"]
    assert run_app(second) == 0
    left = sorted(p.name for p in out.rglob("sub-01*"))
    assert left == ["sub-01_notes.txt"]
    assert (out / "sub-02_lesions.tsv").exists() and notes.read_text() == "keep me"


def test_a_finished_explain_run_is_left_untouched_by_a_rerun(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "out"
    first = explain_subject(_images(linear_dataset), linear_model_path, out, settings=SETTINGS)
    stamps = _stamps(out)
    again = explain_subject(_images(linear_dataset), linear_model_path, out, settings=SETTINGS)
    assert _stamps(out) == stamps
    assert list(again.table["id"]) == list(first.table["id"])
    assert again.reused_lesions == len(first.table)


def test_a_finished_cohort_is_left_untouched_by_a_rerun(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    model = str(linear_model_path)
    first = run_cohort(linear_dataset, model, out, settings=SETTINGS)
    stamps = _stamps(out)
    assert {out / "lesions.tsv", out / "cohort.json", out / "failures.json"} <= set(stamps)
    again = run_cohort(linear_dataset, model, out, settings=SETTINGS)
    retried = out / "status" / "sub-03.json"  # a failed subject is tried again on every run
    assert first.failed == again.failed == {"sub-03": first.failed["sub-03"]}
    assert {p: s for p, s in _stamps(out).items() if p != retried} == {
        p: s for p, s in stamps.items() if p != retried
    }
    assert again.done == first.done


def test_cohort_overwrite_with_other_subjects_removes_the_earlier_subjects_results(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    model = str(linear_model_path)
    settings = ExplainSettings(
        smoothgrad=SETTINGS.smoothgrad, gradcam=None, n_true_negatives=1, context="full"
    )
    run_cohort(linear_dataset, model, out, settings=settings, subjects=["sub-01"], with_mean=True)
    (out / "sub-01" / "my_notes.txt").write_text("keep me")
    result = run_cohort(
        linear_dataset, model, out, settings=settings, subjects=["sub-02"], overwrite=True
    )
    assert result.done == ["sub-02"]
    assert not (out / "status" / "sub-01.json").exists()
    assert not (out / "lesions_mean.tsv").exists()  # this run has no mean maps
    assert sorted(p.name for p in (out / "sub-01").rglob("*")) == ["my_notes.txt"]


def test_a_cohort_never_writes_over_its_models_card(tmp_path, linear_dataset, linear_model_path):
    """A model named ``cohort.pt`` has its card in ``cohort.json``, the cohort's manifest."""
    out = tmp_path / "cohort"
    out.mkdir()
    model = out / "cohort.pt"
    shutil.copy(linear_model_path, model)
    shutil.copy(linear_model_path.with_suffix(".json"), out / "cohort.json")
    card = (out / "cohort.json").read_bytes()
    with pytest.raises(ConfigurationError, match=r"cohort\.json: is an input of this run"):
        run_cohort(linear_dataset, str(model), out, settings=SETTINGS, overwrite=True)
    assert (out / "cohort.json").read_bytes() == card


def test_a_cohort_folder_holding_a_file_it_would_write_is_refused_without_overwrite(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    out.mkdir()
    mine = out / "lesions.tsv"
    mine.write_text("my own table\n")
    model = str(linear_model_path)
    with pytest.raises(OutputExistsError, match=r"lesions\.tsv: exists already.*--overwrite"):
        run_cohort(linear_dataset, model, out, settings=SETTINGS, subjects=["sub-01"])
    assert mine.read_text() == "my own table\n"
    assert sorted(p.name for p in out.iterdir()) == ["lesions.tsv"]


@pytest.mark.parametrize("name", ["../x", "{tmp}/x", "a/b", "..", ""])
def test_segment_refuses_a_name_that_is_not_a_plain_file_name(
    tmp_path, linear_dataset, linear_model_path, capsys, name
):
    name = name.format(tmp=tmp_path)  # absolute
    out = tmp_path / "seg"
    arguments = ["segment", *_images(linear_dataset), "--out", str(out)]
    arguments += ["--model", str(linear_model_path), "--name", name]
    assert run_app(arguments) == 2
    assert "--name" in _error_line(capsys.readouterr().err)
    assert sorted(tmp_path.glob("*x_*")) == [] and not out.exists()


def test_segment_never_writes_over_an_image(tmp_path, linear_dataset, linear_model_path):
    flair, t1w = (Path(p) for p in _images(linear_dataset))
    image = tmp_path / "a_mask.nii.gz"
    shutil.copy(flair, image)
    before = image.read_bytes()
    arguments = ["segment", str(image), str(t1w), "--out", str(tmp_path), "--name", "a"]
    arguments += ["--model", str(linear_model_path), "--overwrite", "--ignore-channel-names"]
    assert run_app(arguments) == 2
    assert image.read_bytes() == before


def test_same_file_through_any_link_is_refused_and_other_files_pass(tmp_path):
    given = tmp_path / "input.nii.gz"
    given.write_bytes(b"x")
    other = tmp_path / "other.nii.gz"
    other.write_bytes(b"y")
    hard = tmp_path / "hard.nii.gz"
    os.link(given, hard)
    refuse_writing_over_inputs([other, tmp_path / "new.nii.gz"], [given])
    for output in (given, hard, tmp_path / "." / "input.nii.gz"):
        with pytest.raises(ConfigurationError, match=r"is an input of this run \("):
            refuse_writing_over_inputs([output], [given])


@pytest.mark.parametrize("name", ["../x", "{tmp}/x", "."])
def test_an_exported_model_stays_in_its_folder(tmp_path, name):
    network = PointwiseLinear()
    card = ModelCard(name="linear", architecture="module", patch_size=(8, 8, 8))
    with pytest.raises(ConfigurationError, match="--name must be a plain file name"):
        export_weights(network, card, tmp_path / "weights", name=name.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("function", ["explain_subject", "run_cohort", "segment_subject"])
def test_the_library_refuses_an_empty_output_path(
    tmp_path, linear_dataset, linear_model_path, monkeypatch, function
):
    monkeypatch.chdir(tmp_path / "dataset" / "sub-01")  # where an empty path would write
    before = sorted(Path().rglob("*"))
    with pytest.raises(ConfigurationError, match=r"output folder \(--out\) is an empty path"):
        if function == "explain_subject":
            explain_subject(_images(linear_dataset), linear_model_path, "", settings=SETTINGS)
        elif function == "run_cohort":
            run_cohort(linear_dataset, str(linear_model_path), "", settings=SETTINGS)
        else:
            segment_subject(_images(linear_dataset), load_model(str(linear_model_path)), "")
    assert sorted(Path().rglob("*")) == before
