"""Lesion-wise metrics against values computed by hand on hand-built masks."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import FlairThreshold
from instasal.errors import ConfigurationError
from instasal.models.cards import ModelCard, attach_card
from instasal.models.metrics import (
    LesionMetrics,
    detection_by_volume,
    evaluate_cohort,
    lesion_metrics,
    normalised_dice,
    summarise_metrics,
)

AFFINE_1MM = np.eye(4)


def test_normalised_dice_by_hand() -> None:
    reference = np.zeros(1000, bool)
    reference[:10] = True
    prediction = np.zeros(1000, bool)
    prediction[2:10] = True  # 8 TP, 2 FN
    prediction[500:504] = True  # 4 FP
    k = (1 - 0.001) * 10 / (0.001 * 990)
    expected = 2 * 8 / (2 * 8 + k * 4 + 2)
    assert normalised_dice(reference, prediction) == pytest.approx(expected, rel=1e-12)
    # with the lesion load equal to r, k = 1 and nDSC is plain Dice
    load = 10 / 1000
    assert normalised_dice(reference, prediction, r=load) == pytest.approx(
        2 * 8 / (2 * 8 + 4 + 2), rel=1e-12
    )


def test_normalised_dice_edge_cases() -> None:
    empty = np.zeros((4, 4, 4), bool)
    some = empty.copy()
    some[0, 0, 0] = True
    assert normalised_dice(empty, empty) == 1.0
    assert normalised_dice(empty, some) == 0.0  # k = 1: only false positives
    assert normalised_dice(some, empty) == 0.0
    with pytest.raises(ConfigurationError, match="r must be in"):
        normalised_dice(some, some, r=0.0)
    with pytest.raises(ConfigurationError, match="differs from prediction"):
        normalised_dice(some, some[:2])


def _cube(mask: np.ndarray, corner: tuple[int, int, int], side: int) -> None:
    x, y, z = corner
    mask[x : x + side, y : y + side, z : z + side] = True


def test_lesion_metrics_counts_and_rates() -> None:
    reference = np.zeros((40, 40, 40), bool)
    _cube(reference, (2, 2, 2), 3)  # lesion A: detected
    _cube(reference, (20, 2, 2), 3)  # lesion B: detected by a prediction covering 1 voxel
    _cube(reference, (2, 20, 20), 3)  # lesion C: missed
    probability = np.zeros(reference.shape, np.float32)
    probability[2:5, 2:5, 2:5] = 0.9  # TP over A
    probability[22:26, 4:8, 4:8] = 0.8  # TP touching B at one corner voxel (22, 4, 4)
    probability[30:33, 30:33, 30:33] = 0.7  # FP, 27 voxels
    probability[35, 35, 35:38] = 0.9  # 3 voxels = 3 mm³ ≤ 5 mm³: dropped
    probability[10:13, 30:33, 2:5] = 0.2  # below the threshold
    metrics = lesion_metrics(reference, probability, AFFINE_1MM, threshold=0.5)
    assert metrics.n_reference == 3
    assert metrics.n_predicted == 3
    assert (metrics.n_true_positive, metrics.n_false_positive) == (2, 1)
    assert (metrics.n_detected, metrics.n_false_negative) == (2, 1)
    assert metrics.tpr == pytest.approx(2 / 3)
    assert metrics.fnr == pytest.approx(1 / 3)
    assert metrics.fdr == pytest.approx(1 / 3)
    predicted_mask = probability >= 0.5
    predicted_mask[35, 35, 35:38] = False
    tp = 27 + 1
    fp = int(predicted_mask.sum()) - tp
    fn = 81 - tp
    k = (1 - 0.001) * 81 / (0.001 * (40**3 - 81))
    assert metrics.ndsc == pytest.approx(2 * tp / (2 * tp + k * fp + fn), rel=1e-9)
    assert metrics.dice == pytest.approx(2 * tp / (81 + int(predicted_mask.sum())), rel=1e-12)


def test_lesion_metrics_threshold_and_voxel_volume() -> None:
    reference = np.zeros((10, 10, 10), bool)
    reference[1:3, 1:3, 1:3] = True  # 8 voxels
    probability = reference * np.float32(0.35)
    at_03 = lesion_metrics(reference, probability, AFFINE_1MM, threshold=0.3)
    at_04 = lesion_metrics(reference, probability, AFFINE_1MM, threshold=0.4)
    assert (at_03.tpr, at_03.ndsc) == (1.0, 1.0)
    assert at_04.tpr == 0.0 and math.isnan(at_04.fdr)
    # at 0.5 mm voxels the 8-voxel lesion is 1 mm³ ≤ 5 mm³: neither side counts it
    small = np.diag([0.5, 0.5, 0.5, 1.0])
    tiny = lesion_metrics(reference, probability, small, threshold=0.3)
    assert (tiny.n_reference, tiny.n_predicted) == (0, 0)
    assert math.isnan(tiny.tpr)


def test_detection_by_volume_bands() -> None:
    reference = np.zeros((30, 30, 30), bool)
    _cube(reference, (2, 2, 2), 2)  # 8 mm³, detected
    _cube(reference, (10, 2, 2), 2)  # 8 mm³, missed
    _cube(reference, (2, 10, 2), 3)  # 27 mm³, missed
    _cube(reference, (2, 20, 20), 5)  # 125 mm³, detected at one voxel
    probability = np.zeros(reference.shape, np.float32)
    probability[2:4, 2:4, 2:4] = 1.0
    probability[6:9, 24:27, 24:27] = 1.0  # touches the large cube at (6, 24, 24)
    bands = detection_by_volume(
        reference, probability, AFFINE_1MM, threshold=0.5, edges_mm3=(5, 10, 100, 1000)
    )
    assert bands == [(5.0, 10.0, 2, 1), (10.0, 100.0, 1, 0), (100.0, 1000.0, 1, 1)]
    with pytest.raises(ConfigurationError, match="edges_mm3 must increase"):
        detection_by_volume(reference, probability, AFFINE_1MM, threshold=0.5, edges_mm3=(5, 5))


def test_lesion_metrics_rejects_bad_input() -> None:
    reference = np.zeros((4, 4, 4), bool)
    with pytest.raises(ConfigurationError, match="differs from the probability"):
        lesion_metrics(reference, np.zeros((4, 4, 5)), AFFINE_1MM, threshold=0.5)
    with pytest.raises(ConfigurationError, match=r"threshold must be in \[0, 1\], got 1.5"):
        lesion_metrics(reference, np.zeros((4, 4, 4)), AFFINE_1MM, threshold=1.5)


def _metrics(ndsc: float, n_ref: int, n_det: int, n_pred: int, n_fp: int) -> LesionMetrics:
    return LesionMetrics(
        ndsc=ndsc,
        dice=ndsc,
        tpr=n_det / n_ref if n_ref else math.nan,
        fnr=(n_ref - n_det) / n_ref if n_ref else math.nan,
        fdr=n_fp / n_pred if n_pred else math.nan,
        n_reference=n_ref,
        n_predicted=n_pred,
        n_detected=n_det,
        n_true_positive=n_pred - n_fp,
        n_false_positive=n_fp,
        n_false_negative=n_ref - n_det,
    )


def test_summary_means_over_subjects_and_pools_counts() -> None:
    summary = summarise_metrics(
        [_metrics(0.8, 4, 3, 4, 1), _metrics(0.6, 10, 5, 10, 5), _metrics(1.0, 0, 0, 0, 0)]
    )
    assert summary["ndsc"] == pytest.approx(0.8)
    assert summary["tpr"] == pytest.approx((3 / 4 + 5 / 10) / 2)  # the empty subject is skipped
    assert summary["fdr"] == pytest.approx((1 / 4 + 5 / 10) / 2)
    assert summary["tpr_pooled"] == pytest.approx(8 / 14)
    assert summary["fdr_pooled"] == pytest.approx(6 / 14)
    assert summary["n_false_negative"] == 6
    with pytest.raises(ConfigurationError, match="no subjects"):
        summarise_metrics([])


def _write_labelled_cohort(root: Path) -> None:
    rng = np.random.default_rng(0)
    for index, corners in enumerate([[(3, 3, 3), (12, 12, 12)], [(4, 14, 6)]], start=1):
        participant = f"sub-{index:03d}"
        anat = root / participant / "anat"
        derived = root / "derivatives" / "test" / participant / "anat"
        anat.mkdir(parents=True)
        derived.mkdir(parents=True)
        lesion = np.zeros((20, 20, 20), bool)
        for corner in corners:
            _cube(lesion, corner, 3)
        brain = np.zeros_like(lesion)
        brain[1:-1, 1:-1, 1:-1] = True
        flair = brain * (1.0 + 0.05 * rng.standard_normal(lesion.shape)) + 2.0 * lesion
        t1w = brain * (1.0 + 0.05 * rng.standard_normal(lesion.shape))
        for name, data in (("FLAIR", flair), ("T1w", t1w)):
            image = nib.Nifti1Image(data.astype(np.float32), AFFINE_1MM)
            nib.save(image, anat / f"{participant}_{name}.nii.gz")
        mask = nib.Nifti1Image(lesion.astype(np.uint8), AFFINE_1MM)
        nib.save(mask, derived / f"{participant}_desc-lesion_mask.nii.gz")


def test_evaluate_cohort_with_an_exact_model(tmp_path: Path) -> None:
    _write_labelled_cohort(tmp_path / "cohort")
    model = attach_card(
        FlairThreshold(),
        ModelCard(
            name="flair-threshold",
            architecture="module",
            normalisation="none",
            patch_size=(8, 8, 8),
            threshold=0.5,
        ),
    )
    per_subject, summary = evaluate_cohort([model], tmp_path / "cohort", out=tmp_path / "tables")
    assert list(per_subject["subject"]) == ["sub-001", "sub-002"]
    assert list(per_subject["n_reference"]) == [2, 1]
    assert summary.loc[0, "ndsc"] == pytest.approx(1.0)
    assert summary.loc[0, "tpr"] == 1.0 and summary.loc[0, "fdr"] == 0.0
    assert (tmp_path / "tables" / "metrics_summary.tsv").is_file()
    with pytest.raises(FileExistsError, match="exists already"):
        evaluate_cohort([model], tmp_path / "cohort", out=tmp_path / "tables")
    # the 27 mm³ lesions are below a 30 mm³ evaluation minimum: none is counted, none is found
    per_subject, summary = evaluate_cohort([model], tmp_path / "cohort", min_volume_mm3=30.0)
    assert list(per_subject["n_reference"]) == [0, 0]
    assert summary.loc[0, "min_volume_mm3"] == 30.0
