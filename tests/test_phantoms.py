"""The phantom MS cohort: determinism, anatomy rules, contrasts, ground truth, cohort files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import load_nifti
from instasal import __version__
from instasal.errors import ConfigurationError, OutputExistsError
from instasal.phantoms import REGION_LABELS, PhantomSubject, make_phantom, write_cohort
from instasal.phantoms.anatomy import load_template_anatomy
from instasal.phantoms.bids_writer import subject_seeds
from instasal.phantoms.lesion_placement import LESION_PARAMETERS, draw_lesion_count

VOXEL_MM3 = 8.0  # the tests run at 2 mm


@pytest.fixture(scope="module")
def crowded() -> list[PhantomSubject]:
    """Three 2 mm subjects with 40 lesions each, enough of every region to test the rules."""
    return [make_phantom(seed, n_lesions=40) for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def default_subject() -> PhantomSubject:
    return make_phantom(5)


def _normal_white(subject: PhantomSubject) -> np.ndarray:
    return subject.wm_mask & ~subject.lesion_mask & ~subject.mimic_mask


def test_same_seed_gives_identical_subject(default_subject: PhantomSubject) -> None:
    again = make_phantom(5)
    for name in (
        "flair",
        "t1w",
        "lesion_mask",
        "lesion_regions",
        "region_atlas",
        "brain_mask",
        "mimic_mask",
    ):
        np.testing.assert_array_equal(getattr(again, name), getattr(default_subject, name))
    assert again.lesions == default_subject.lesions


def test_different_seeds_give_different_anatomy_and_lesions(
    default_subject: PhantomSubject,
) -> None:
    other = make_phantom(6)
    # Different warps: the brain masks themselves differ, not only the noise.
    assert (other.brain_mask != default_subject.brain_mask).sum() > 1000
    assert not np.array_equal(other.lesion_mask, default_subject.lesion_mask)


def test_image_stacks_flair_then_t1w_as_float32(default_subject: PhantomSubject) -> None:
    image = default_subject.image
    assert image.dtype == np.float32
    assert image.shape == (2, 99, 117, 95)
    np.testing.assert_array_equal(image[0], default_subject.flair)
    np.testing.assert_array_equal(image[1], default_subject.t1w)


def test_grid_is_the_2mm_mni_grid(default_subject: PhantomSubject) -> None:
    np.testing.assert_allclose(np.diag(default_subject.affine), [2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(default_subject.affine[:3, 3], [-98.0, -134.0, -72.0])


def test_images_are_skull_stripped_and_non_negative(default_subject: PhantomSubject) -> None:
    for image in (default_subject.flair, default_subject.t1w):
        assert image.min() >= 0.0
        assert np.all(image[~default_subject.brain_mask] == 0.0)
        assert (image[default_subject.brain_mask] > 0).mean() > 0.99
    brain_ml = default_subject.brain_mask.sum() * VOXEL_MM3 / 1000.0
    assert 1200.0 < brain_ml < 2300.0


def test_tissue_contrasts_are_those_of_flair_and_t1w(default_subject: PhantomSubject) -> None:
    subject = default_subject
    white = np.median(subject.flair[_normal_white(subject)])
    white_t1w = np.median(subject.t1w[_normal_white(subject)])
    dark = subject.brain_mask & ~subject.wm_mask & (subject.t1w < 0.5 * white_t1w)
    # CSF (dark on T1w) is dark on FLAIR too: suppressed fluid.
    assert np.median(subject.flair[dark]) < 0.6 * white
    # T1w: white matter brighter than the rest of the brain; FLAIR: grey matter above white.
    grey_like = subject.brain_mask & ~subject.wm_mask & ~dark & ~subject.mimic_mask
    assert np.median(subject.t1w[grey_like]) < white_t1w
    assert np.median(subject.flair[grey_like]) > white


def test_lesions_lie_in_brain_and_labels_cover_exactly_the_mask(
    crowded: list[PhantomSubject],
) -> None:
    for subject in crowded:
        assert not (subject.lesion_mask & ~subject.brain_mask).any()
        np.testing.assert_array_equal(subject.lesion_regions > 0, subject.lesion_mask)
        assert set(np.unique(subject.lesion_regions)) <= {0, *REGION_LABELS.values()}
        # Lesions are white-matter disease: most lesion voxels are anatomical white matter.
        assert (subject.lesion_mask & subject.wm_mask).sum() > 0.6 * subject.lesion_mask.sum()
        for lesion in subject.lesions:
            assert subject.wm_mask[lesion.centre]
            assert subject.lesion_mask[lesion.centre]


def _world(subject: PhantomSubject, voxel: tuple[int, int, int]) -> np.ndarray:
    return subject.affine[:3, :3] @ np.asarray(voxel, dtype=float) + subject.affine[:3, 3]


def test_regions_follow_the_anatomy(crowded: list[PhantomSubject]) -> None:
    ventricle_distance: dict[str, list[float]] = {"periventricular": [], "deep": []}
    for subject in crowded:
        inner = ndimage.distance_transform_edt(subject.brain_mask, sampling=2.0) >= 12.0
        white_t1w = np.median(subject.t1w[_normal_white(subject)])
        ventricles = inner & ~subject.wm_mask & (subject.t1w < 0.5 * white_t1w)
        distance = ndimage.distance_transform_edt(~ventricles, sampling=2.0)
        for lesion in subject.lesions:
            x, y, z = _world(subject, lesion.centre)
            if lesion.region == "infratentorial":
                assert z < 5.0 and y < 10.0, (lesion, (x, y, z))
            else:
                assert z > -30.0, (lesion, (x, y, z))
            if lesion.region in ventricle_distance:
                ventricle_distance[lesion.region].append(float(distance[lesion.centre]))
    periventricular = np.median(ventricle_distance["periventricular"])
    deep = np.median(ventricle_distance["deep"])
    assert periventricular <= 6.0
    assert deep > periventricular + 4.0
    regions = {lesion.region for subject in crowded for lesion in subject.lesions}
    assert regions == set(REGION_LABELS)


def test_region_atlas_labels_the_brain_by_the_placement_rules(
    crowded: list[PhantomSubject],
) -> None:
    agree = total = 0
    for subject in crowded:
        np.testing.assert_array_equal(subject.region_atlas > 0, subject.brain_mask)
        assert set(np.unique(subject.region_atlas)) == {0, *REGION_LABELS.values()}
        for lesion in subject.lesions:
            total += 1
            agree += int(subject.region_atlas[lesion.centre] == REGION_LABELS[lesion.region])
    # Centres were drawn by the same rules; satellites inherit their parent's region instead.
    assert agree >= 0.9 * total


def _local_contrasts(subject: PhantomSubject, image: np.ndarray) -> list[float]:
    """Per lesion component: mean inside / median of normal white matter 2-4 mm around it, - 1."""
    labels, _ = ndimage.label(subject.lesion_mask)
    normal = _normal_white(subject)
    contrasts = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        padded = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in box)
        inside = labels[padded] == index
        ring = ndimage.binary_dilation(inside, iterations=2) & ~ndimage.binary_dilation(inside)
        ring &= normal[padded]
        if ring.sum() >= 5:
            local = image[padded]
            contrasts.append(float(local[inside].mean() / np.median(local[ring]) - 1.0))
    return contrasts


def test_lesions_are_bright_on_flair_and_not_bright_on_t1w(crowded: list[PhantomSubject]) -> None:
    flair = [c for subject in crowded for c in _local_contrasts(subject, subject.flair)]
    t1w = [c for subject in crowded for c in _local_contrasts(subject, subject.t1w)]
    # Hyperintense on FLAIR against the white matter around them (faint ones only a little) ...
    assert np.median(flair) > 0.15
    assert np.mean(np.asarray(flair) > 0.0) > 0.9
    # ... and iso- to hypo-intense on T1w.
    assert np.median(t1w) < 0.0
    assert np.mean(np.asarray(t1w) < 0.05) > 0.9


def test_faint_lesions_are_fainter_than_the_others(crowded: list[PhantomSubject]) -> None:
    lesions = [lesion for subject in crowded for lesion in subject.lesions]
    faint = [lesion.flair_contrast for lesion in lesions if lesion.faint]
    clear = [lesion.flair_contrast for lesion in lesions if not lesion.faint]
    assert faint and clear
    assert max(faint) <= LESION_PARAMETERS.faint_flair_contrast[1]
    assert min(clear) >= LESION_PARAMETERS.flair_contrast[0]
    assert all(lesion.t1w_contrast <= 0.0 for lesion in lesions)


def test_requested_lesion_count_and_volume_bounds(crowded: list[PhantomSubject]) -> None:
    for subject in crowded:
        assert len(subject.lesions) == 40
        assert [lesion.id for lesion in subject.lesions] == list(range(1, 41))
        volumes = np.array([lesion.volume_mm3 for lesion in subject.lesions])
        assert volumes.min() >= VOXEL_MM3
        assert volumes.max() <= 3.0 * LESION_PARAMETERS.volume_range_mm3[1]
        # Overlapping lesions merge, so the union is at most the sum of the parts.
        assert subject.lesion_volume_mm3 <= volumes.sum() + 1e-6


def test_default_lesion_counts_stay_within_zero_to_forty() -> None:
    rng = np.random.default_rng(0)
    counts = [draw_lesion_count(rng) for _ in range(2000)]
    assert min(counts) >= 0 and max(counts) <= 40
    assert 10.0 < np.mean(counts) < 16.0


def test_mimics_are_bright_and_never_lesions(crowded: list[PhantomSubject]) -> None:
    for subject in crowded:
        assert subject.mimic_mask.any()
        assert not (subject.mimic_mask & subject.lesion_mask).any()
        normal = np.median(subject.flair[_normal_white(subject)])
        assert np.median(subject.flair[subject.mimic_mask]) > 1.05 * normal


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"seed": -1}, "seed must be a whole number from 0 to 2\\*\\*63 - 1 .*, got -1"),
        ({"seed": 0, "resolution": 3}, "resolution must be 1 or 2"),
        ({"seed": 0, "n_lesions": -2}, r"n_lesions must be None or an integer in \[0, 200\]"),
    ],
)
def test_bad_arguments_are_refused(arguments: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_phantom(**arguments)  # type: ignore[arg-type]


def test_subject_seeds_are_stable_when_the_cohort_grows() -> None:
    assert subject_seeds(3, 5)[:2] == subject_seeds(3, 2)
    assert len(set(subject_seeds(3, 50))) == 50
    assert subject_seeds(3, 2) != subject_seeds(4, 2)


@pytest.fixture(scope="module")
def cohort(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Path], list[tuple[str, float, float]]]:
    out = tmp_path_factory.mktemp("cohort") / "phantoms"
    calls: list[tuple[str, float, float]] = []
    folders = write_cohort(out, 2, seed=9, progress=lambda *call: calls.append(call))
    return out, folders, calls


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def test_cohort_files_hold_what_make_phantom_returns(cohort: tuple) -> None:
    out, folders, calls = cohort
    assert folders == [out / "sub-001", out / "sub-002"]
    assert calls == [("phantom of sub-001", 1, 2), ("phantom of sub-002", 2, 2)]
    participants = _read_tsv(out / "participants.tsv")
    assert [row["participant_id"] for row in participants] == ["sub-001", "sub-002"]
    row = participants[1]
    subject = make_phantom(int(row["seed"]))
    assert int(row["n_lesions"]) == len(subject.lesions)
    assert float(row["lesion_volume_mm3"]) == pytest.approx(subject.lesion_volume_mm3, abs=0.1)
    anat = out / "sub-002" / "anat"
    derived = out / "derivatives" / "instasal-phantom" / "sub-002" / "anat"
    flair = load_nifti(anat / "sub-002_FLAIR.nii.gz")
    np.testing.assert_array_equal(np.asarray(flair.dataobj), subject.flair)
    np.testing.assert_allclose(flair.affine, subject.affine)
    t1w = np.asarray(load_nifti(anat / "sub-002_T1w.nii.gz").dataobj)
    np.testing.assert_array_equal(t1w, subject.t1w)
    for suffix, expected in [
        ("desc-lesion_mask", subject.lesion_mask),
        ("desc-brain_mask", subject.brain_mask),
        ("desc-wm_mask", subject.wm_mask),
        ("desc-mimic_mask", subject.mimic_mask),
        ("desc-lesionregion_dseg", subject.lesion_regions),
        ("desc-regions_dseg", subject.region_atlas),
    ]:
        written = np.asarray(load_nifti(derived / f"sub-002_{suffix}.nii.gz").dataobj)
        np.testing.assert_array_equal(written, expected.astype(np.uint8))
    lesions = _read_tsv(derived / "sub-002_lesions.tsv")
    assert len(lesions) == len(subject.lesions)
    assert [row["region"] for row in lesions] == [lesion.region for lesion in subject.lesions]
    assert lesions[0]["centre"] == ",".join(str(c) for c in subject.lesions[0].centre)


def test_cohort_provenance_files(cohort: tuple) -> None:
    out = cohort[0]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    parameters = json.loads((out / "phantom_parameters.json").read_text())
    assert parameters["instasal_version"] == __version__
    assert parameters["cohort_seed"] == 9 and parameters["resolution_mm"] == 2
    assert parameters["generator"]["lesions"]["count_max"] == 40


def test_cohort_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="cohort folder exists and is not empty"):
        write_cohort(out, 1)
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    write_cohort(out, 2, seed=1, overwrite=True)
    write_cohort(out, 1, seed=1, overwrite=True)
    # The stale second subject of the earlier cohort is gone, the user's file stays.
    assert not (out / "sub-002").exists()
    assert not (out / "derivatives" / "instasal-phantom" / "sub-002").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert len(_read_tsv(out / "participants.tsv")) == 1


def test_cohort_rejects_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="n_subjects must be a positive integer, got 0"):
        write_cohort(tmp_path / "empty", 0)


def test_template_ventricles_are_the_ventricles_not_the_fissure() -> None:
    template = load_template_anatomy(2)
    ventricles = template.ventricles > 0.5
    world = template.voxel_to_world(np.argwhere(ventricles))
    # Lateral + third ventricles of the MNI152 2009 brain: about 20 mL, between z = -15 and 35 mm
    # (CSF of the interhemispheric fissure, reaching the vertex, must not be included).
    assert 15.0 < ventricles.sum() * VOXEL_MM3 / 1000.0 < 30.0
    assert world[:, 2].max() < 40.0 and world[:, 2].min() > -25.0
    assert np.abs(world[:, 0]).max() < 40.0
