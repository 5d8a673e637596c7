"""One meaning of "the mask" and one threshold default, whichever command segments.

``explain`` and ``segment`` both threshold the probability, split it into components and drop
those at or below the minimum volume (SPEC §1); a model handed over with a card that states no
threshold is segmented at :class:`~instasal.models.ModelCard`'s default by both.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from torch import nn

from conftest import FlairThreshold, load_nifti, set_card, write_channels
from instasal.models.cards import ModelCard
from instasal.models.metrics import lesion_metrics
from instasal.models.segmentation import segment_subject
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig

# FlairThreshold's lesion logit is 10·(FLAIR − 1.5): this FLAIR gives probability 0.4, between the
# default of the old explain path (0.3) and the card's default (0.5).
FLAIR_AT_04 = 1.5 + math.log(0.4 / 0.6) / 10.0


def _model_without_threshold() -> nn.Module:
    model = FlairThreshold()
    set_card(
        model,
        {
            "name": "flair-threshold",
            "architecture": "module",
            "normalisation": "none",
            "patch_size": [8, 8, 8],
            "channel_names": ["FLAIR", "T1w"],
        },
    )
    return model


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """1 mm grid: a 64 mm³ lesion (p ≈ 1), a lone bright voxel (1 mm³, below the 5 mm³ rule),
    and a 27 mm³ block at p = 0.4."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    flair = np.ones((18, 16, 14), np.float32)
    flair[2:6, 2:6, 2:6] = 3.0
    flair[12, 12, 12] = 3.0
    flair[10:13, 2:5, 8:11] = FLAIR_AT_04
    t1w = np.full(flair.shape, 0.5, np.float32)
    t1w[0, 0, 0] = 0.6  # not constant
    return write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w}, affine)


def test_explain_and_segment_write_the_same_mask_at_the_card_threshold(
    images: list[Path], tmp_path: Path
) -> None:
    settings = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None)
    explained = explain_subject(
        images, _model_without_threshold(), tmp_path / "explain", settings=settings
    )
    segmented = segment_subject(images, _model_without_threshold(), tmp_path / "segment")

    assert segmented.threshold == ModelCard.__dataclass_fields__["threshold"].default
    explain_mask = np.asarray(load_nifti(explained.layout.mask).dataobj) > 0
    segment_mask = np.asarray(load_nifti(segmented.mask_path).dataobj) > 0
    np.testing.assert_array_equal(explain_mask, segment_mask)
    assert int(segment_mask.sum()) == 64  # the lesion; not the lone voxel, not the p = 0.4 block
    assert len(explained.table) == 1

    # the instance map holds the mask's lesions and nothing else
    instances = np.asarray(load_nifti(explained.layout.instances).dataobj)
    np.testing.assert_array_equal(instances > 0, segment_mask)


def test_metrics_count_the_lesions_the_mask_holds(images: list[Path], tmp_path: Path) -> None:
    segmented = segment_subject(images, _model_without_threshold(), tmp_path / "segment")
    affine = load_nifti(images[0]).affine
    metrics = lesion_metrics(
        segmented.mask, segmented.probability, affine, threshold=segmented.threshold
    )
    assert metrics.n_predicted == 1
    assert metrics.n_reference == 1
    assert metrics.dice == pytest.approx(1.0, abs=1e-12)  # the mask is its own reference


def test_nnunet_channel_numbers_stay_out_of_the_subject_name(tmp_path: Path) -> None:
    """``case_012_0000`` / ``case_012_0001``: every output is named ``case_012_…`` (the channel
    number was kept in file names and the report title)."""
    flair = np.ones((12, 12, 12), np.float32)
    flair[3:6, 3:6, 3:6] = 3.0
    t1w = np.full(flair.shape, 0.5, np.float32)
    t1w[0, 0, 0] = 0.6
    paths = write_channels(tmp_path, {"0000": flair, "0001": t1w}, stem="case_012")
    segmented = segment_subject(paths, _model_without_threshold(), tmp_path / "segment")
    assert segmented.mask_path.name == "case_012_mask.nii.gz"
    settings = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None)
    explained = explain_subject(
        paths, _model_without_threshold(), tmp_path / "explain", settings=settings, report=False
    )
    assert explained.layout.label == "case_012"
    assert sorted(p.name for p in (tmp_path / "explain").glob("*.tsv"))[0].startswith("case_012_")


def test_lesion_volumes_print_as_the_whole_numbers_they_are() -> None:
    """|det diag(2, 2, 2)| computes as 7.999999999999998: the table showed 7.999999999999998 mm³
    for one 2 mm voxel."""
    from instasal import find_instances

    probability = np.zeros((8, 8, 8), np.float32)
    probability[2, 2, 2:4] = 1.0
    lesions = find_instances(probability, np.diag([2.0, 2.0, 2.0, 1.0]), threshold=0.5)
    assert [str(r.volume_mm3) for r in lesions] == ["16.0"]


def test_a_4d_input_says_which_volume_is_which_channel(images: list[Path], tmp_path: Path) -> None:
    from instasal.errors import InstasalWarning

    volumes = [np.asarray(load_nifti(p).dataobj) for p in images]
    four_d = tmp_path / "sub-02.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(volumes, axis=-1), load_nifti(images[0]).affine), four_d)
    with pytest.warns(InstasalWarning, match="volume 0 as FLAIR, volume 1 as T1w"):
        segment_subject(four_d, _model_without_threshold(), tmp_path / "segment")


def test_a_run_below_the_papers_settings_says_so_without_being_told(
    images: list[Path], tmp_path: Path
) -> None:
    """Only the demo's report had the banner: a user's N = 1 run said nothing."""
    import json

    settings = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None)
    result = explain_subject(
        images, _model_without_threshold(), tmp_path / "out", settings=settings
    )
    page = result.layout.report.read_text(encoding="utf-8")
    assert "Reduced settings." in page and "used 1 noise samples" in page
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["settings"]["reduced"] is True
