"""SmoothGrad noise is drawn where the network sees it: an exact 1 mm copy of a 2 mm subject, run
by a 2 mm network resampled in the graph, gets the 2 mm subject's maps per mm³ with noise on.

The oracle is the 2 mm subject itself, run by the bare network (no resampling anywhere): each
1 mm map must be that map with every voxel repeated 2×2×2 and divided by 8 (a 1 mm voxel is an
eighth of the 2 mm voxel the network averages it into), so the densities (value / voxel volume)
agree.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instasal.prepare import ResampledNetwork
from instasal.saliency import ExplainedPass, SmoothGradConfig, instance_smoothgrad_many
from instasal.saliency.noise import noise_grid, noisy_inputs
from instasal.saliency.summaries import lesion_summary
from instasal.typing import Context

COARSE = (24, 18, 18)
PATCH = (18, 18, 18)  # holds a domain one voxel wide with its 8-voxel margins
# The 1 mm path averages 8 equal float32 values into each network voxel (sums of 3, 5, 6, 7 equal
# values round): inputs differ from the 2 mm ones by ~1 ulp, which a tanh network carries into
# the rows at ~1e-6 of the largest entry. 1e-5 of the peak leaves a factor 10 and is far below
# the noise's own effect (the maps differ by ~10 % of the peak when noise is drawn per 1 mm voxel).
ROUND_OFF = 1e-5


class _Net(nn.Module):
    """Non-linear (tanh), so the noise changes every Jacobian row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first = nn.Conv3d(2, 6, 3, padding=1)
        self.second = nn.Conv3d(6, 2, 3, padding=1)
        self.card: dict[str, object] = {"patch_size": list(PATCH), "spacing_mm": [2.0, 2.0, 2.0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(2.0 * self.first(x)))


def _finer(volume: torch.Tensor) -> torch.Tensor:
    """The exact 1 mm copy: each 2 mm voxel repeated 2×2×2 (the last three axes)."""
    for axis in range(volume.ndim - 3, volume.ndim):
        volume = volume.repeat_interleave(2, dim=axis)
    return volume


def _domains() -> dict[int, torch.Tensor]:
    first, second = torch.zeros((2, *COARSE), dtype=torch.bool)
    # centred on the 1 mm copy, the patch starts at an odd voxel along x (between two 2 mm
    # voxels) unless windows are placed on the network's grid
    first[10:11, 7:9, 8:9] = True
    second[17:18, 3:4, 12:13] = True
    return {1: first, 2: second}


@pytest.mark.parametrize("context", ["full", "deployed", "patch"])
def test_an_exact_1mm_copy_gets_the_2mm_densities_with_noise_on(context: Context) -> None:
    net = _Net().eval()
    fine_model = ResampledNetwork(net, [1.0, 1.0, 1.0]).eval()
    x = torch.randn(2, *COARSE, generator=torch.Generator().manual_seed(8))
    method = SmoothGradConfig(n_samples=2, noise_level=0.1, seed=5)
    explained = ExplainedPass(context=context)
    coarse = instance_smoothgrad_many(net, x, _domains(), method, explained)
    fine_domains = {i: _finer(d) for i, d in _domains().items()}
    fine = instance_smoothgrad_many(fine_model, _finer(x), fine_domains, method, explained)
    for i, domain in _domains().items():
        expected = _finer(coarse[i]) / 8
        peak = float(expected.abs().max())
        torch.testing.assert_close(fine[i], expected, rtol=0, atol=ROUND_OFF * peak)
        dense = lesion_summary(coarse[i].numpy(), domain.numpy(), (2.0,) * 3, ["FLAIR", "T1w"])
        fine_dense = lesion_summary(
            fine[i].numpy(), fine_domains[i].numpy(), (1.0,) * 3, ["FLAIR", "T1w"]
        )
        for column in ("density_peak_FLAIR", "density_peak_T1w", "density_inside_mean_FLAIR"):
            assert fine_dense[column] == pytest.approx(dense[column], rel=ROUND_OFF, abs=0)


def test_noise_is_drawn_on_the_networks_grid_and_repeated_onto_finer_voxels() -> None:
    net = _Net()
    coarse_x = torch.zeros(2, *COARSE)
    coarse_x[0, 0, 0, 0], coarse_x[1, 0, 0, 0] = 1.0, 3.0
    x = _finer(coarse_x)
    assert noise_grid(net, x.shape[1:]) == (48, 36, 36)
    grid = noise_grid(ResampledNetwork(net, [1.0, 1.0, 1.0]), x.shape[1:])
    assert grid == COARSE
    draws = partial(noisy_inputs, n_samples=2, noise_level=0.1, noise_range="per_channel", seed=4)
    fine = list(draws(x, grid=grid))
    # the draws the 2 mm grid itself gets from the same seed and ranges, repeated 2×2×2
    coarse = list(draws(coarse_x))
    for fine_draw, coarse_draw in zip(fine, coarse, strict=True):
        assert torch.equal(fine_draw, _finer(coarse_draw))
        # the network's area resampling gives it the 2 mm draw back
        torch.testing.assert_close(F.avg_pool3d(fine_draw[None], 2)[0], coarse_draw)
    # still σ per network voxel: 0.1 and 0.3 (the ranges 1 and 3)
    std = (torch.stack(coarse) - coarse_x).transpose(0, 1).reshape(2, -1).std(dim=1)
    torch.testing.assert_close(std, torch.tensor([0.1, 0.3]), rtol=0.05, atol=0)


def test_on_a_coarser_input_grid_each_voxel_gets_its_own_draw() -> None:
    """A 4 mm subject and a 2 mm network: the noise of the 2 mm voxel holding each 4 mm centre."""
    net = _Net()
    x = torch.zeros(2, 30, 30, 30)
    x[:, 0, 0, 0] = 1.0
    model = ResampledNetwork(net, [4.0, 4.0, 4.0])
    grid = noise_grid(model, x.shape[1:])
    assert grid == (60, 60, 60)
    (drawn,) = noisy_inputs(
        x, n_samples=1, noise_level=0.1, noise_range="per_channel", seed=2, grid=grid
    )
    on_grid = 0.1 * torch.randn((2, *grid), generator=torch.Generator().manual_seed(2))
    # nearest-exact: 4 mm voxel i holds the centre of 2 mm voxel 2i + 1
    torch.testing.assert_close(drawn - x, on_grid[:, 1::2, 1::2, 1::2], rtol=0, atol=1e-7)
    std = (drawn - x).reshape(2, -1).std(dim=1)
    torch.testing.assert_close(std, torch.tensor([0.1, 0.1]), rtol=0.05, atol=0)
