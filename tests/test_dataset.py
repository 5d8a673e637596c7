"""Discovering subjects in BIDS-like datasets: the phantom cohort's layout and a user's."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from instasal.dataset import REGION_LABELS, SubjectFiles, discover_dataset
from instasal.errors import ImageError
from instasal.io import load_mask, read_subject
from instasal.phantoms import REGION_LABELS as PHANTOM_LABELS
from instasal.phantoms import make_phantom, write_cohort
from instasal.pipeline.per_lesion import region_of


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_round_trip_through_write_cohort(tmp_path: Path) -> None:
    root = tmp_path / "phantoms"
    write_cohort(root, 2, seed=4)
    subjects = discover_dataset(root)
    assert [subject.subject_id for subject in subjects] == ["sub-001", "sub-002"]
    first = subjects[0]
    assert [path.name for path in first.images] == ["sub-001_FLAIR.nii.gz", "sub-001_T1w.nii.gz"]
    assert first.lesion_mask is not None and first.regions is not None
    assert first.brain_mask is not None and first.wm_mask is not None
    assert first.lesion_mask.name == "sub-001_desc-lesion_mask.nii.gz"
    assert first.region_atlas is not None and first.region_map == first.region_atlas
    assert first.region_atlas.name == "sub-001_desc-regions_dseg.nii.gz"
    # What discover finds reads back into exactly the generated subject.
    subject = read_subject(first.images)
    seeds = (root / "participants.tsv").read_text().splitlines()[1].split("\t")[1]
    phantom = make_phantom(int(seeds))
    np.testing.assert_array_equal(subject.data, phantom.image)
    np.testing.assert_array_equal(load_mask(first.lesion_mask, subject), phantom.lesion_mask)


def test_user_layout_with_entities_nii_and_no_derivatives(tmp_path: Path) -> None:
    for participant in ("sub-10", "sub-02"):
        anat = tmp_path / participant / "anat"
        _write(anat / f"{participant}_acq-3D_FLAIR.nii")
        _write(anat / f"{participant}_T1w.nii.gz")
    (tmp_path / "README").write_text("not a subject")
    subjects = discover_dataset(tmp_path)
    assert subjects == [
        SubjectFiles(
            subject_id="sub-02",
            images=(
                tmp_path / "sub-02" / "anat" / "sub-02_acq-3D_FLAIR.nii",
                tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii.gz",
            ),
        ),
        SubjectFiles(
            subject_id="sub-10",
            images=(
                tmp_path / "sub-10" / "anat" / "sub-10_acq-3D_FLAIR.nii",
                tmp_path / "sub-10" / "anat" / "sub-10_T1w.nii.gz",
            ),
        ),
    ]


def test_channel_order_follows_the_request(tmp_path: Path) -> None:
    _write(tmp_path / "sub-1" / "anat" / "sub-1_FLAIR.nii.gz")
    _write(tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz")
    (subject,) = discover_dataset(tmp_path, channels=("T1w", "FLAIR"))
    assert [path.name for path in subject.images] == ["sub-1_T1w.nii.gz", "sub-1_FLAIR.nii.gz"]


def test_derivatives_from_any_pipeline_are_found(tmp_path: Path) -> None:
    _write(tmp_path / "sub-1" / "anat" / "sub-1_FLAIR.nii.gz")
    _write(tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz")
    mask = _write(
        tmp_path / "derivatives" / "manual" / "sub-1" / "anat" / "sub-1_desc-lesion_mask.nii.gz"
    )
    (subject,) = discover_dataset(tmp_path)
    assert subject.lesion_mask == mask
    assert subject.brain_mask is None and subject.wm_mask is None and subject.regions is None
    assert subject.region_map is None


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nowhere: dataset folder not found"):
        discover_dataset(tmp_path / "nowhere")


def test_file_instead_of_folder_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "image.nii.gz")
    with pytest.raises(ImageError, match=r"image\.nii\.gz: is a file, expected a dataset folder"):
        discover_dataset(path)


def test_folder_without_subjects_is_named(tmp_path: Path) -> None:
    (tmp_path / "derivatives").mkdir()
    with pytest.raises(ImageError, match=r"no subject found \(expected sub-\*/anat/sub-\*_FLAIR"):
        discover_dataset(tmp_path)


def test_subject_lacking_a_channel_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "sub-1" / "anat" / "sub-1_FLAIR.nii.gz")
    _write(tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz")
    _write(tmp_path / "sub-2" / "anat" / "sub-2_FLAIR.nii.gz")
    with pytest.raises(ImageError, match=r"sub-2/anat: subject sub-2 has no T1w image"):
        discover_dataset(tmp_path)


def test_ambiguous_channel_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "sub-1" / "anat" / "sub-1_run-1_FLAIR.nii.gz")
    _write(tmp_path / "sub-1" / "anat" / "sub-1_run-2_FLAIR.nii.gz")
    _write(tmp_path / "sub-1" / "anat" / "sub-1_T1w.nii.gz")
    with pytest.raises(ImageError, match=r"subject sub-1 has 2 FLAIR images"):
        discover_dataset(tmp_path)


def test_bad_channels_argument(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="channels must be a non-empty sequence"):
        discover_dataset(tmp_path, channels="FLAIR")


def test_region_labels_have_one_definition_that_phantoms_and_the_lesion_table_share() -> None:
    """A phantom's region label reads back as the name the phantom gave it (``deep`` is 3)."""
    assert PHANTOM_LABELS is REGION_LABELS
    domain = np.ones((2, 2, 2), bool)
    for name, label in REGION_LABELS.items():
        assert region_of(np.full((2, 2, 2), label, np.uint8), domain) == name
    assert region_of(np.full((2, 2, 2), 3, np.uint8), domain) == "deep"
