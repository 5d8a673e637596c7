"""Native space in, native space out, with the built-in U-Net on a phantom subject.

Acceptance tests of the geometry: the same voxels stored in other orientations give the same
lesion table and the same maps (reoriented back), and an exact 1 mm copy of a 2 mm subject (each
voxel repeated 2×2×2) gives the same lesions with the same saliency per mm³. The oracle for both is
the run on the subject as the model was trained on it (RAS-stored, 2 mm).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import load_nifti
from instasal.phantoms import make_phantom
from instasal.pipeline import ExplainResult, ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig

pytestmark = pytest.mark.slow

SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2, seed=0), max_lesions=2, n_true_negatives=1
)
COLUMNS = ["type", "volume_mm3", "n_voxels", "centroid_x", "centroid_y", "centroid_z"]
VALUES = ["prob_max", "peak_FLAIR", "peak_T1w", "trough_FLAIR", "ring_mean_FLAIR", "gradcam_peak"]


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 40×40×40 crop (2 mm) of a phantom around its lesions, RAS-stored."""
    phantom = make_phantom(3, resolution=2, n_lesions=12)
    centre = np.argwhere(phantom.lesion_mask).mean(axis=0).astype(int)
    box = tuple(slice(max(0, c - 20), max(0, c - 20) + 40) for c in centre)
    affine = phantom.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in box])
    return {
        "FLAIR": phantom.flair[box].astype(np.float32),
        "T1w": phantom.t1w[box].astype(np.float32),
        "mask": phantom.lesion_mask[box].astype(np.uint8),
        "affine": affine,
        "folder": tmp_path_factory.mktemp("native"),
    }


def _stored(image: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(tuple(codes))
    )
    return image.as_reoriented(transform)


EXACT = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=1, noise_level=0.0), gradcam=None, max_lesions=2
)


def _explain(
    crop: dict[str, object],
    name: str,
    codes: str = "RAS",
    repeat: int = 1,
    settings: ExplainSettings = SETTINGS,
) -> ExplainResult:
    folder = Path(str(crop["folder"])) / name
    folder.mkdir()
    affine = np.asarray(crop["affine"]).copy()
    if repeat > 1:  # voxel centres of the copies: ±¼ of a coarse voxel around the coarse centre
        affine[:3, 3] -= affine[:3, :3] @ np.full(3, (repeat - 1) / (2 * repeat))
        affine[:3, :3] /= repeat
    files = {}
    for key in ("FLAIR", "T1w", "mask"):
        data = np.asarray(crop[key])
        for axis in range(3):
            data = data.repeat(repeat, axis=axis)
        image = _stored(nib.Nifti1Image(data, affine), codes)
        files[key] = folder / f"sub-01_{key}.nii.gz"
        nib.save(image, files[key])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain_subject(
            [files["FLAIR"], files["T1w"]],
            "unet",
            folder / "out",
            reference=files["mask"],
            settings=settings,
            report=False,
        )
    return result


def _by_position(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["type", "centroid_x", "centroid_y", "centroid_z"]).reset_index(
        drop=True
    )


@pytest.fixture(scope="module")
def reference_run(crop: dict[str, object]) -> ExplainResult:
    return _explain(crop, "RAS")


@pytest.mark.parametrize("codes", ["LPS", "LAS", "IRP"])
def test_every_orientation_gives_the_lesion_table_and_maps_of_the_ras_run(
    crop: dict[str, object], reference_run: ExplainResult, codes: str
) -> None:
    result = _explain(crop, codes, codes)
    ours, theirs = _by_position(result.table), _by_position(reference_run.table)
    assert len(theirs) >= 4 and set(theirs["type"]) >= {"TP", "FP", "FN", "TN"}
    pd.testing.assert_frame_equal(ours[COLUMNS], theirs[COLUMNS], rtol=1e-9, atol=1e-9)
    # the network sees the same array: equal to float32 round-off of the engines' sums
    np.testing.assert_allclose(ours[VALUES], theirs[VALUES], rtol=1e-5, atol=1e-7)
    stored = load_nifti(result.layout.instances)
    assert "".join(nib.aff2axcodes(stored.affine)) == codes
    centroids = ours[["centroid_i", "centroid_j", "centroid_k"]].to_numpy(float)
    rows = zip(ours["id"].tolist(), theirs["id"].tolist(), ours["n_voxels"], centroids, strict=True)
    for ours_id, theirs_id, n_voxels, centroid in rows:
        for path, reference_path in (
            (
                result.layout.smoothgrad(ours_id, "FLAIR"),
                reference_run.layout.smoothgrad(theirs_id, "FLAIR"),
            ),
            (result.layout.gradcam(ours_id), reference_run.layout.gradcam(theirs_id)),
        ):
            back = nib.as_closest_canonical(load_nifti(path))
            np.testing.assert_allclose(back.affine, load_nifti(reference_path).affine, atol=1e-9)
            np.testing.assert_allclose(
                np.asarray(back.dataobj),
                np.asarray(load_nifti(reference_path).dataobj),
                rtol=1e-5,
                atol=1e-7,
            )
        # ids and centroids refer to the stored grid
        domain = np.argwhere(np.asarray(stored.dataobj) == ours_id)
        assert len(domain) == n_voxels
        np.testing.assert_allclose(domain.mean(axis=0), centroid)


def test_an_exact_1mm_copy_gives_the_same_lesions_and_saliency_per_mm3(
    crop: dict[str, object],
) -> None:
    coarse = _by_position(_explain(crop, "coarse", settings=EXACT).table)
    fine = _by_position(_explain(crop, "fine", repeat=2, settings=EXACT).table)
    assert fine["n_voxels"].tolist() == [8 * n for n in coarse["n_voxels"]]
    np.testing.assert_allclose(fine["volume_mm3"], coarse["volume_mm3"], rtol=1e-9)
    # 1 mm voxels carry 1/8 of a 2 mm voxel's effect on the logit; per mm³ they agree
    tp = fine["type"] == "TP"
    assert tp.any()
    for channel in ("FLAIR", "T1w"):
        np.testing.assert_allclose(
            fine.loc[tp, f"peak_{channel}"], coarse.loc[tp, f"peak_{channel}"] / 8, rtol=1e-4
        )
        np.testing.assert_allclose(
            fine.loc[tp, f"density_peak_{channel}"],
            coarse.loc[tp, f"density_peak_{channel}"],
            rtol=1e-4,
        )
