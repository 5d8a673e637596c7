"""Lesion-table saliency columns against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from instasal.errors import ConfigurationError
from instasal.saliency.summaries import lesion_summary, ring_mask


def test_ring_is_the_shell_between_one_and_three_mm():
    domain = np.zeros((15, 15, 15), bool)
    domain[7, 7, 7] = True
    ring = ring_mask(domain, (1.0, 1.0, 1.0))
    offsets = np.argwhere(ring) - 7
    distances = np.sqrt((offsets**2).sum(axis=1))
    assert distances.min() >= 1.0
    assert distances.max() <= 3.0
    # every voxel within 3 mm except the centre: count lattice points with 1 <= |d| <= 3
    grid = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij")).reshape(3, -1)
    norms = np.sqrt((grid**2).sum(axis=0))
    assert ring.sum() == int(((norms >= 1) & (norms <= 3)).sum())


def test_ring_respects_anisotropic_spacing():
    domain = np.zeros((9, 9, 9), bool)
    domain[4, 4, 4] = True
    ring = ring_mask(domain, (1.0, 1.0, 2.5))
    assert ring[4, 4, 5]  # 2.5 mm away in z
    assert not ring[4, 4, 6]  # 5 mm
    assert ring[4, 7, 4]  # 3 mm in y
    assert not ring[4, 8, 4]  # 4 mm
    assert not ring[4, 4, 4]  # Ω itself is never ring


def test_summary_values_by_hand():
    names = ("FLAIR", "T1w")
    saliency = np.zeros((2, 10, 10, 10), np.float32)
    domain = np.zeros((10, 10, 10), bool)
    domain[4:6, 4:6, 4:6] = True  # 8 voxels
    saliency[0][domain] = 2.0
    saliency[0, 4, 4, 4] = 5.0  # FLAIR peak inside
    saliency[0, 4, 4, 7] = -1.5  # FLAIR trough 2 mm from Ω: in the ring
    saliency[1, 1, 2, 3] = -4.0  # T1w trough far away
    saliency[1, 5, 5, 5] = 1.0  # T1w peak
    row = lesion_summary(saliency, domain, (1.0, 1.0, 1.0), names)
    assert row["peak_FLAIR"] == 5.0
    assert row["peak_FLAIR_voxel"] == "4,4,4"
    assert row["trough_FLAIR"] == -1.5
    assert row["trough_FLAIR_voxel"] == "4,4,7"
    assert row["inside_mean_FLAIR"] == pytest.approx((7 * 2.0 + 5.0) / 8)
    ring = ring_mask(domain, (1.0, 1.0, 1.0))
    assert row["ring_mean_FLAIR"] == pytest.approx(-1.5 / ring.sum())
    assert row["trough_T1w"] == -4.0
    assert row["trough_T1w_voxel"] == "1,2,3"
    assert row["inside_mean_T1w"] == pytest.approx(1.0 / 8)
    assert row["reliance_FLAIR"] == pytest.approx(5.0 / 6.0)
    assert row["reliance_T1w"] == pytest.approx(1.0 / 6.0)


def test_reliance_keeps_the_sign_and_is_nan_without_signal():
    saliency = np.zeros((2, 6, 6, 6), np.float32)
    saliency[0] = -1.0  # every FLAIR value negative: its peak (max) is -1
    saliency[1, 0, 0, 0] = 3.0
    domain = np.zeros((6, 6, 6), bool)
    domain[2, 2, 2] = True
    row = lesion_summary(saliency, domain, (1, 1, 1), ("FLAIR", "T1w"))
    assert row["reliance_FLAIR"] == pytest.approx(-1.0 / 4.0)
    flat = lesion_summary(np.zeros_like(saliency), domain, (1, 1, 1), ("FLAIR", "T1w"))
    assert np.isnan(flat["reliance_FLAIR"])


def test_summary_rejects_mismatched_inputs():
    with pytest.raises(ConfigurationError, match="domain is empty"):
        lesion_summary(np.zeros((1, 4, 4, 4)), np.zeros((4, 4, 4), bool), (1, 1, 1), ("FLAIR",))
    with pytest.raises(ConfigurationError, match="saliency must be"):
        lesion_summary(np.zeros((1, 4, 4, 5)), np.ones((4, 4, 4), bool), (1, 1, 1), ("FLAIR",))
