"""The preparation stage: exact reorientation, in-graph resampling, normalisation from the card.

Oracles: nibabel's own reorientation (``as_closest_canonical``) and world coordinates; resampling
matrices written down by hand (box averages for integer down-sampling factors, linear weights
between voxel centres for up-sampling) and, through them, the Jacobian of a resampled 1×1×1
convolution; hand-computed normalisations.
"""

from __future__ import annotations

import itertools
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from conftest import set_card
from instasal.errors import InstasalWarning, ModelError
from instasal.instances import classify_instances, find_instances
from instasal.io import Subject
from instasal.models.cards import ModelCard
from instasal.prepare import (
    Reorientation,
    ResampledNetwork,
    normalise,
    obliquity_degrees,
    prepare_subject,
    resample,
)
from instasal.saliency import instance_smoothgrad
from instasal.typing import Growth

SHAPE = (5, 6, 7)


def _orientations() -> list[tuple[str, ...]]:
    """All 48 axis codes: 6 permutations of (R, A, S) × 8 flips."""
    flips = {"R": "L", "A": "P", "S": "I"}
    codes = []
    for permutation in itertools.permutations("RAS"):
        for signs in itertools.product((False, True), repeat=3):
            codes.append(
                tuple(flips[c] if s else c for c, s in zip(permutation, signs, strict=True))
            )
    return codes


def _stored_as(data: np.ndarray, affine: np.ndarray, codes: tuple[str, ...]) -> nib.Nifti1Image:
    """An image holding the same voxels as (data, affine) with its axes stored as ``codes``."""
    image = nib.Nifti1Image(data, affine)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(codes)
    )
    return image.as_reoriented(transform)


@pytest.mark.parametrize("codes", _orientations())
def test_reorientation_is_exact_and_undone_for_every_orientation(codes: tuple[str, ...]) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal(SHAPE).astype(np.float32)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.0]
    stored = _stored_as(data, affine, codes)
    array = np.asarray(stored.dataobj)
    reorientation = Reorientation.to_axcodes(stored.affine, array.shape, "RAS")
    working = reorientation.to_working(array)
    canonical = nib.as_closest_canonical(stored)
    np.testing.assert_array_equal(working, np.asarray(canonical.dataobj))
    np.testing.assert_allclose(
        reorientation.working_affine(stored.affine), canonical.affine, atol=1e-12
    )
    assert reorientation.working_shape == working.shape
    np.testing.assert_array_equal(reorientation.to_stored(working), array)
    stacked = torch.from_numpy(np.stack([array, 2 * array]))  # leading channel axis, torch
    np.testing.assert_array_equal(reorientation.to_working(stacked).numpy()[1], 2 * working)


def test_instances_restated_on_the_stored_grid_keep_world_positions() -> None:
    probability = np.zeros((12, 10, 8), np.float32)
    probability[1:4, 1:3, 1:3] = 0.9
    probability[7:10, 6:9, 4:7] = 0.9
    reference = np.zeros(probability.shape, bool)
    reference[8, 7, 5] = True
    reference[2:5, 7:9, 5:7] = True  # missed
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    stored = _stored_as(probability, affine, ("P", "I", "R"))
    stored_reference = np.asarray(
        _stored_as(reference.astype(np.uint8), affine, ("P", "I", "R")).dataobj
    )
    subject = Subject(np.stack([np.asarray(stored.dataobj)] * 2), stored.affine)
    model = nn.Identity()
    set_card(model, {"orientation": "RAS"})
    prepared = prepare_subject(subject, model)
    working = classify_instances(
        find_instances(
            prepared.working.data[0], prepared.working.affine, threshold=0.5, min_volume_mm3=0
        ),
        prepared.to_working(stored_reference),
        min_volume_mm3=0,
    )
    native, ids = prepared.native_instances(working)
    expected = classify_instances(
        find_instances(np.asarray(stored.dataobj), stored.affine, threshold=0.5, min_volume_mm3=0),
        stored_reference,
        min_volume_mm3=0,
    )
    assert [(r.id, r.kind, r.n_voxels, r.bbox) for r in native] == [
        (r.id, r.kind, r.n_voxels, r.bbox) for r in expected
    ]
    for record in working:
        mapped = native[ids[record.id]]
        np.testing.assert_allclose(mapped.centroid_world, record.centroid_world, atol=1e-9)


def test_area_down_sampling_inverts_voxel_repetition_exactly() -> None:
    coarse = torch.randn(1, 2, 4, 3, 5, dtype=torch.float64)
    fine = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(resample(fine, (4, 3, 5)), coarse, rtol=0, atol=1e-15)
    torch.testing.assert_close(resample(coarse, (4, 3, 5)), coarse, rtol=0, atol=0)


def _linear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation between voxel centres (half-voxel aligned ends, clamped), by hand."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        position = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(np.floor(position)), n_in - 1)
        high = min(low + 1, n_in - 1)
        weight = position - low
        matrix[i, low] += 1 - weight
        matrix[i, high] += weight
    return matrix


def _nearest_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Each output voxel takes the input voxel containing its centre."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        matrix[i, int(np.floor((i + 0.5) * n_in / n_out))] = 1.0
    return matrix


def _box_matrix(n_out: int, factor: int) -> np.ndarray:
    matrix = np.zeros((n_out, n_out * factor))
    for i in range(n_out):
        matrix[i, i * factor : (i + 1) * factor] = 1.0 / factor
    return matrix


def test_resampling_matches_the_hand_written_matrices_per_axis() -> None:
    volume = torch.randn(1, 1, 8, 3, 5, dtype=torch.float64)
    down = _box_matrix(4, 2)
    cases: tuple[tuple[Growth, np.ndarray], ...] = (
        ("linear", _linear_matrix(7, 3)),
        ("nearest", _nearest_matrix(7, 3)),
    )
    for grow, up in cases:
        out = resample(volume, (4, 7, 5), grow=grow).numpy()[0, 0]  # x halves, y grows 7/3
        expected = np.einsum("ai,bj,ijk->abk", down, up, volume.numpy()[0, 0])
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


class Linear(nn.Module):
    """Lesion logit ``a·FLAIR + b·T1w``; background 0."""

    def __init__(self, spacing: list[float]) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 1.5
            self.conv.weight[1, 1] = -0.5
        self.card = {"spacing_mm": spacing, "patch_size": [4, 4, 4], "gradcam_layer": "conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_saliency_through_resampling_is_the_exact_native_jacobian() -> None:
    """∂ logit_native[v] / ∂ x_native[u] = w_k · (B · A)[v, u] with A, B written by hand."""
    shape = (8, 4, 6)  # native 1 × 2 × 1 mm; model 2 × 1 × 2 mm: x, z down ×2, y up ×2
    network = ResampledNetwork(Linear([2.0, 1.0, 2.0]), (1.0, 2.0, 1.0))
    x = torch.randn(2, *shape, dtype=torch.float64)
    domain = torch.zeros(shape, dtype=torch.bool)
    domain[2:5, 1:3, 2:4] = True
    network = network.double()
    saliency = instance_smoothgrad(network, x, domain, noise_level=0.0, n_samples=1)
    ax = _nearest_matrix(8, 4) @ _box_matrix(4, 2)  # in: box averages; back: nearest
    ay = _box_matrix(4, 2) @ _linear_matrix(8, 4)  # in: linear; back: box averages
    az = _nearest_matrix(6, 3) @ _box_matrix(3, 2)
    jacobian = np.einsum("ai,bj,ck->abcijk", ax, ay, az)  # d out[a,b,c] / d in[i,j,k]
    rows = jacobian[domain.numpy()]  # [rows, *shape]
    pick = np.argmax(np.abs(rows), axis=0)
    aggregated = np.take_along_axis(rows, pick[None], axis=0)[0]
    for k, weight in enumerate((1.5, -0.5)):
        np.testing.assert_allclose(saliency[k].numpy(), weight * aggregated, rtol=1e-10, atol=1e-12)
    assert network.card["patch_size"] == [8, 2, 8]
    assert network.card["gradcam_layer"] == "network.conv"


def test_prepare_notes_what_it_assumed_and_did() -> None:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    subject = Subject(np.ones((2, *SHAPE), np.float32), affine)
    model = Linear([2.0, 2.0, 2.0])
    with pytest.warns(InstasalWarning, match="states no orientation") as caught:
        prepared = prepare_subject(subject, model)
    assert any("resampled to the model's 2×2×2 mm" in str(w.message) for w in caught)
    assert prepared.resampled
    tilted = affine.copy()
    angle = np.radians(10.0)
    tilted[:3, :3] = [
        [np.cos(angle), -np.sin(angle), 0],
        [np.sin(angle), np.cos(angle), 0],
        [0, 0, 1],
    ]
    assert obliquity_degrees(tilted) == pytest.approx(10.0, abs=1e-9)
    model.card["orientation"] = "RAS"
    model.card["spacing_mm"] = [1.0, 1.0, 1.0]
    with pytest.warns(InstasalWarning, match=r"oblique \(10\.0°"):
        prepare_subject(Subject(subject.data, tilted), model)


def test_normalisation_follows_the_card() -> None:
    data = np.array([[[[0.0, 2.0, 4.0]]]], dtype=np.float32)
    np.testing.assert_allclose(normalise(data, _card())[0, 0, 0], [0.0, -1.0, 1.0])
    np.testing.assert_allclose(
        normalise(data, _card(normalisation="zscore"))[0, 0, 0],
        [-1.2247449, 0.0, 1.2247449],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(normalise(data, _card(normalisation="none")), data)
    with pytest.raises(ModelError, match="normalisation must be one of"):
        _card(normalisation="minmax")


def _card(**fields: Any) -> ModelCard:
    return ModelCard.from_dict({"name": "m", "architecture": "module", **fields})


def test_nnunet_schemes_per_channel() -> None:
    ct = np.array([-2000.0, 0.0, 50.0, 3000.0], np.float32)
    mri = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    data = np.stack([ct, mri]).reshape(2, 1, 1, 4)
    card = _card(
        normalisation="nnunet",
        preprocessing={
            "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
            "use_mask_for_norm": [False, True],
            "foreground_intensity_properties_per_channel": {
                "0": {
                    "percentile_00_5": -100.0,
                    "percentile_99_5": 200.0,
                    "mean": 50.0,
                    "std": 25.0,
                }
            },
        },
    )
    out = normalise(data, card).reshape(2, 4)
    np.testing.assert_allclose(out[0], [-6.0, -2.0, 0.0, 6.0], rtol=1e-6)
    # every voxel is non-zero in some channel, so the mask is everything: plain z-score
    np.testing.assert_allclose(out[1], (mri - 1.5) / np.std(mri), rtol=1e-6)


def test_nnunet_zscore_masked_to_the_nonzero_region_as_nnunet_does(
    rng: np.random.Generator,
) -> None:
    """A zero background: with ``use_mask_for_norm`` the statistics come from the non-zero region
    (any channel non-zero, as nnU-Net's ``create_nonzero_mask``) and the background stays 0;
    nnU-Net's own ``ZScoreNormalization`` is the oracle."""
    zscore = pytest.importorskip(
        "nnunetv2.preprocessing.normalization.default_normalization_schemes"
    ).ZScoreNormalization
    cropping = pytest.importorskip("nnunetv2.preprocessing.cropping.cropping")
    data = np.zeros((2, 7, 6, 5), np.float32)
    data[:, 1:-1, 1:-1, 1:-1] = rng.uniform(5.0, 9.0, (2, 5, 4, 3))
    data[1, 0, 0, 0] = 3.0  # non-zero in one channel only: inside the mask of both
    use_mask = [True, False]
    card = _card(
        normalisation="nnunet",
        preprocessing={
            "normalization_schemes": ["ZScoreNormalization", "ZScoreNormalization"],
            "use_mask_for_norm": use_mask,
            "foreground_intensity_properties_per_channel": {},
        },
    )
    ours = normalise(data, card)
    seg = np.where(cropping.create_nonzero_mask(data), 0, -1)
    for channel, masked in enumerate(use_mask):
        scheme = zscore(use_mask_for_norm=masked, intensityproperties={})
        theirs = scheme.run(data[channel].copy(), seg)
        np.testing.assert_allclose(ours[channel], theirs, rtol=1e-5, atol=1e-6)
    background = seg == -1
    assert background.sum() > 0 and (ours[0][background] == 0).all()
    # the mask matters: over all voxels the first channel would differ
    unmasked = zscore(use_mask_for_norm=False, intensityproperties={}).run(data[0].copy())
    assert not np.allclose(ours[0], unmasked, atol=1e-3)


def test_ensemble_members_are_resampled_like_the_explained_network() -> None:
    from instasal.experiments.uncertainty_sweep import _on_working_grid

    network = ResampledNetwork(Linear([2.0, 2.0, 2.0]), (1.0, 1.0, 1.0))
    members = _on_working_grid([Linear([2.0, 2.0, 2.0]), Linear([2.0, 2.0, 2.0])], network)
    x = torch.randn(1, 2, 8, 6, 4)
    for member in members:
        assert isinstance(member, ResampledNetwork)
        # same resampling: a member with the same weights gives the network's own output
        torch.testing.assert_close(member(x), network(x), rtol=0, atol=1e-6)
    plain = Linear([1.0, 1.0, 1.0])
    assert _on_working_grid([plain], plain)[0] is plain
