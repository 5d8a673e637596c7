"""Context and relocation experiments against predictors whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.experiments import context_curve, find_placement, plateau_distance, relocate
from instasal.instances import find_instances


def test_plateau_rule_by_hand():
    distances = [0, 2, 4, 6, 8]
    assert plateau_distance(distances, [0.1, 0.5, 0.96, 0.97, 1.0]) == 4
    assert plateau_distance(distances, [0.1, 0.99, 0.5, 0.97, 1.0]) == 6  # must *stay* above
    assert plateau_distance(distances, [0.0, 0.0, 0.0, 0.0, 0.0]) is None


def test_context_curve_sees_exactly_the_kept_voxels():
    shape = (20, 20, 20)
    x = torch.ones((2, *shape))
    prob = np.zeros(shape)
    prob[9:11, 9:11, 9:11] = 1.0
    instances = find_instances(prob, np.diag([2.0, 2.0, 2.0, 1.0]))

    def fraction_kept(masked: torch.Tensor, lesion: np.ndarray) -> np.ndarray:
        assert lesion.sum() == 8  # the lesion domain is passed on
        # every voxel's "probability" is the fraction of non-zero input voxels
        return np.full(shape, float((masked[0] != 0).float().mean()))

    result = context_curve(fraction_kept, x, instances, [1], threshold=0.02, max_iterations=3)
    structure = ndimage.generate_binary_structure(3, 2)
    kept = instances.mask(1)
    expected = []
    for d in range(4):
        if d:
            kept = ndimage.binary_dilation(kept, structure=structure)
        expected.append(kept.sum() / kept.size)
    np.testing.assert_allclose(result.records["mean_probability"], expected)
    assert list(result.records["distance_mm"]) == [0.0, 2.0, 4.0, 6.0]
    assert list(result.records["detected"]) == [v >= 0.02 for v in expected]
    assert result.curve["n_lesions"].tolist() == [1, 1, 1, 1]


def test_context_curve_needs_lesions():
    instances = find_instances(np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(ConfigurationError, match="lesion_ids is empty"):
        context_curve(
            lambda m, lesion: np.zeros((4, 4, 4)),
            torch.zeros(1, 4, 4, 4),
            instances,
            [],
            threshold=0.5,
        )


def _brain():
    shape = (40, 40, 40)
    brain = np.zeros(shape, bool)
    brain[5:25, 5:25, 5:25] = True
    wm = np.zeros(shape, bool)
    wm[8:22, 8:22, 8:22] = True
    return brain, wm


def test_relocation_copies_every_channel_to_an_allowed_place():
    brain, wm = _brain()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 40, 40, 40)).astype(np.float32)) * torch.from_numpy(
        brain
    )
    domain = np.zeros_like(brain)
    domain[10:12, 10:12, 10:13] = True
    x[0][torch.from_numpy(domain)] = 5.0

    def bright(moved: torch.Tensor, lesion: np.ndarray) -> np.ndarray:
        return (moved[0] > 4).numpy().astype(float)

    for condition in ("white_matter", "outside", "outside_with_shell"):
        outcome = relocate(
            bright,
            x,
            domain,
            condition,
            brain_mask=brain,
            wm_mask=wm,
            lesion_mask=domain,
            threshold=0.5,
            spacing=(1.0, 1.0, 1.0),
            shell_mm=2.0,
            seed=1,
        )
        assert outcome is not None
        shift = np.asarray(outcome.shift)
        source = np.argwhere(domain)
        target = source + shift
        for k in range(2):
            np.testing.assert_array_equal(
                outcome.input[k].numpy()[tuple(target.T)], x[k].numpy()[tuple(source.T)]
            )
        assert outcome.detected and outcome.mean_probability == 1.0
        if condition == "white_matter":
            assert wm[outcome.domain].all()
            far = ndimage.distance_transform_edt(~domain) >= 2.0
            assert far[outcome.domain].all()
        else:
            assert not brain[outcome.domain].any()


def test_no_placement_when_nothing_fits():
    footprint = np.zeros((6, 6, 6), bool)
    footprint[1:5, 1:5, 1:5] = True
    allowed = np.zeros((6, 6, 6), bool)
    allowed[0, 0, 0] = True
    assert find_placement(footprint, allowed, np.random.default_rng(0), attempts=50) is None
