"""Lesion instances (SPEC §1) against hand-built volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.instances import (
    classify_instances,
    find_instances,
    label_components,
    sample_true_negatives,
)


def _diagonal_pairs() -> np.ndarray:
    """Three voxel pairs touching by a face, an edge and a corner only."""
    mask = np.zeros((12, 12, 12), bool)
    mask[1, 1, 1] = mask[1, 1, 2] = True  # face neighbours
    mask[5, 5, 5] = mask[5, 6, 6] = True  # edge neighbours
    mask[9, 9, 9] = mask[10, 10, 10] = True  # corner neighbours
    return mask


@pytest.mark.parametrize(("connectivity", "expected"), [(6, 5), (18, 4), (26, 3)])
def test_component_count_per_connectivity(connectivity, expected):
    _, n = label_components(_diagonal_pairs(), connectivity)
    assert n == expected


def test_ids_follow_c_order_raster_position_of_first_voxel():
    mask = np.zeros((6, 6, 6), bool)
    mask[4, 0, 0] = True  # first voxel at raster index 4*36
    mask[0, 5, 5] = True  # first voxel at raster index 35
    mask[0, 5, 4] = mask[1, 0, 0] = False
    mask[2, 2, 0:3] = True  # raster index 2*36 + 2*6
    labels, n = label_components(mask, 6)
    assert n == 3
    assert labels[0, 5, 5] == 1
    assert labels[2, 2, 0] == 2
    assert labels[4, 0, 0] == 3


def test_volume_centroid_and_bbox_under_anisotropic_affine(oblique_affine):
    prob = np.zeros((10, 12, 8))
    prob[2:4, 3:6, 1:2] = 0.9  # 6 voxels, centroid (2.5, 4, 1)
    instances = find_instances(prob, oblique_affine, min_volume_mm3=0.0)
    (record,) = list(instances)
    voxel_volume = 0.9 * 1.1 * 2.5
    assert record.n_voxels == 6
    assert record.volume_mm3 == pytest.approx(6 * voxel_volume)
    assert record.centroid_voxel == pytest.approx((2.5, 4.0, 1.0))
    expected_world = oblique_affine[:3, :3] @ [2.5, 4.0, 1.0] + oblique_affine[:3, 3]
    assert record.centroid_world == pytest.approx(tuple(expected_world))
    assert record.bbox == ((2, 4), (3, 6), (1, 2))
    np.testing.assert_array_equal(instances.mask(1), prob > 0.5)


def test_threshold_is_inclusive_and_small_components_dropped_by_mm3():
    affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm³ voxels
    prob = np.zeros((10, 10, 10))
    prob[1, 1, 1:3] = 0.3  # 2 voxels = 4 mm³ ≤ 5 → dropped
    prob[5, 5, 1:4] = 0.3  # 3 voxels = 6 mm³ > 5 → kept, exactly at threshold
    prob[8, 8, 1:9] = 0.29  # below threshold
    instances = find_instances(prob, affine, threshold=0.3)
    assert [(r.id, r.n_voxels, r.volume_mm3) for r in instances] == [(1, 3, 6.0)]
    assert set(np.unique(instances.labels)) == {0, 1}


def test_bad_arguments_are_named():
    with pytest.raises(ConfigurationError, match="connectivity must be 6, 18 or 26, got 8"):
        find_instances(np.zeros((3, 3, 3)), np.eye(4), connectivity=8)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"threshold must be in \[0, 1\], got 1.5"):
        find_instances(np.zeros((3, 3, 3)), np.eye(4), threshold=1.5)
    with pytest.raises(ConfigurationError, match=r"prob must be a 3D map"):
        find_instances(np.zeros((3, 3)), np.eye(4))


def test_tp_fp_fn_by_nonzero_overlap():
    prob = np.zeros((20, 20, 20))
    reference = np.zeros((20, 20, 20), bool)
    prob[2:5, 2:5, 2:5] = 0.9  # TP: one voxel of overlap is enough
    reference[4:8, 4:8, 4:8] = True
    prob[12:15, 2:5, 2:5] = 0.9  # FP
    reference[2:5, 14:17, 14:17] = True  # FN (27 voxels)
    reference[18, 18, 18] = True  # reference speck of 1 mm³: below the size rule, not an FN
    instances = classify_instances(find_instances(prob, np.eye(4)), reference)
    kinds = {r.id: r.kind for r in instances}
    assert kinds == {1: "TP", 2: "FP", 3: "FN"}
    expected_fn = np.zeros_like(reference)
    expected_fn[2:5, 14:17, 14:17] = True
    np.testing.assert_array_equal(instances.mask(3), expected_fn)
    assert instances[3].volume_mm3 == 27.0


def test_true_negatives_keep_their_distance_volume_and_tissue():
    shape = (40, 40, 40)
    tissue = np.zeros(shape, bool)
    tissue[5:35, 5:35, 5:35] = True
    prob = np.zeros(shape)
    prob[18:22, 18:22, 18:22] = 0.9
    reference = prob > 0.5
    instances = classify_instances(
        find_instances(prob, np.eye(4)), reference, tissue_mask=tissue, n_true_negatives=5, seed=3
    )
    tn = instances.of_kind("TN")
    assert len(tn) == 5
    lesion = instances.labels == 1
    distance = ndimage.distance_transform_edt(~lesion)
    for record in tn:
        domain = instances.mask(record.id)
        assert domain.sum() == 64  # the only TP volume is 64 mm³
        assert tissue[domain].all()
        assert distance[domain].min() >= 3.0
        _, n = label_components(domain, 6)
        assert n == 1
    again = classify_instances(
        find_instances(prob, np.eye(4)), reference, tissue_mask=tissue, n_true_negatives=5, seed=3
    )
    np.testing.assert_array_equal(again.labels, instances.labels)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    spacing=st.tuples(*[st.sampled_from([0.8, 1.0, 1.5, 2.0, 3.0])] * 3),
    n_lesions=st.integers(1, 6),
)
def test_true_negatives_never_within_min_distance(seed, spacing, n_lesions):
    rng = np.random.default_rng(seed)
    shape = (24, 24, 24)
    lesions = np.zeros(shape, bool)
    for _ in range(n_lesions):
        corner = rng.integers(0, 21, size=3)
        lesions[tuple(slice(c, c + rng.integers(1, 4)) for c in corner)] = True
    tissue = rng.random(shape) > 0.2
    affine = np.diag([*spacing, 1.0])
    blobs = sample_true_negatives(
        tissue, lesions, affine, n=4, volumes_mm3=[20.0, 60.0], min_distance_mm=3.0, seed=seed
    )
    distance = ndimage.distance_transform_edt(~lesions, sampling=spacing)
    union = np.zeros(shape, int)
    for blob in blobs:
        assert distance[blob].min() >= 3.0
        assert tissue[blob].all()
        union += blob
    assert union.max() <= 1  # blobs never overlap


def test_true_negatives_fall_back_to_default_volumes_without_tp():
    tissue = np.ones((30, 30, 30), bool)
    blobs = sample_true_negatives(tissue, np.zeros_like(tissue), np.eye(4), n=20, seed=0)
    volumes = [int(b.sum()) for b in blobs]
    assert min(volumes) >= 10
    assert max(volumes) <= 200
