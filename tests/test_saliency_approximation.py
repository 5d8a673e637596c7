"""The labelled max-aggregation approximation (``max_stride > 1``): the exact max over a stated
lattice of Ω's voxels, checked against autograd's full Jacobian restricted to that lattice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instasal.errors import ConfigurationError
from instasal.pipeline.settings import ExplainSettings
from instasal.saliency import SmoothGradConfig, instance_smoothgrad
from instasal.saliency.smoothgrad import InstanceSmoothGrad, row_lattice
from instasal.typing import Context
from test_saliency_smoothgrad import _reference_map, _SmallNonlinear

SHAPE = (10, 10, 10)


def _blob() -> torch.Tensor:
    omega = torch.zeros(SHAPE, dtype=torch.bool)
    omega[4:8, 4:8, 4:7] = True
    omega[4, 4, 4] = False  # not a box: the anchor must still be a voxel of Ω
    return omega


@given(
    st.lists(st.tuples(*[st.integers(0, 7)] * 3), min_size=1, max_size=40, unique=True),
    st.integers(1, 4),
)
@settings(max_examples=60, deadline=None)
def test_the_lattice_is_a_non_empty_subset_of_omega_on_one_stride(
    voxels: list[tuple[int, int, int]], stride: int
) -> None:
    omega = torch.zeros(8, 8, 8, dtype=torch.bool)
    omega[tuple(torch.tensor(voxels).T)] = True
    kept = row_lattice(omega, stride)
    assert kept.any() and not (kept & ~omega).any()
    points = kept.nonzero()
    assert ((points - points[0]) % stride == 0).all()
    if stride == 1:
        assert torch.equal(kept, omega)


def test_the_lattice_of_a_box_keeps_one_voxel_in_stride_cubed() -> None:
    omega = torch.zeros(20, 20, 20, dtype=torch.bool)
    omega[2:14, 2:14, 2:14] = True
    assert int(row_lattice(omega, 2).sum()) == 6**3
    assert int(row_lattice(omega, 3).sum()) == 4**3


@pytest.mark.parametrize("context", ["full", "patch"])
def test_approximate_map_is_the_exact_max_over_the_lattice_rows(context: Context) -> None:
    torch.manual_seed(0)
    model = _SmallNonlinear().double()
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    omega = _blob()
    saliency = instance_smoothgrad(  # the keyword front door builds the config
        model, x, omega, n_samples=1, noise_level=0.0, context=context, patch_size=10, max_stride=2
    )
    expected = _reference_map(model, x, row_lattice(omega, 2), 1, "max")
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-10, atol=1e-12)
    exact = _reference_map(model, x, omega, 1, "max")
    assert not np.allclose(expected, exact, atol=1e-6)  # the approximation is a different map


def test_approximation_counts_its_rows_and_is_flagged() -> None:
    model = _SmallNonlinear()
    omega = _blob()
    x = torch.randn(2, *SHAPE)
    exact = InstanceSmoothGrad(model, SmoothGradConfig(n_samples=3)).work(x, {1: omega})
    approximate = InstanceSmoothGrad(model, SmoothGradConfig(n_samples=3, max_stride=2)).work(
        x, {1: omega}
    )
    assert exact.rows == 3 * int(omega.sum())
    assert approximate.rows == 3 * int(row_lattice(omega, 2).sum()) < exact.rows
    mean = SmoothGradConfig(aggregation="mean", max_stride=2)
    assert not mean.approximate  # mean aggregation takes one row per draw: nothing to thin
    settings_ = ExplainSettings(SmoothGradConfig(max_stride=3))
    assert any("approximate max aggregation" in line for line in settings_.reductions)
    assert settings_.as_dict()["max_stride"] == 3
    assert "max_stride" not in ExplainSettings().as_dict()  # exact runs keep their run keys
    with pytest.raises(ConfigurationError, match="max_stride must be >= 1"):
        SmoothGradConfig(max_stride=0)
