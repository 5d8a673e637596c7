"""Context-versus-full agreement (SPEC §2, Context): known values and the contexts it compares."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import SmoothGradOptions, set_card
from instasal.errors import ConfigurationError
from instasal.saliency import (
    ExplainedPass,
    SmoothGradConfig,
    context_agreement,
    instance_smoothgrad,
    map_agreement,
    patch_full_agreement,
)


def test_map_agreement_known_values() -> None:
    reference = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]], [[[0.5, 0.0], [0.0, -4.0]]]])
    same = map_agreement(reference, reference)
    assert same["correlation"] == pytest.approx(1.0)
    assert same["max_abs_difference"] == 0.0 and same["peak_relative_difference"] == 0.0
    doubled = map_agreement(2 * reference, reference)
    assert doubled["correlation"] == pytest.approx(1.0)
    assert doubled["max_abs_difference"] == 4.0  # at the −4 entry
    assert doubled["relative_max_difference"] == 1.0
    assert doubled["peak_relative_difference"] == 1.0  # peaks 3 → 6 and 0.5 → 1
    assert map_agreement(-reference, reference)["correlation"] == pytest.approx(-1.0)
    with pytest.raises(ConfigurationError, match="maps to compare must have one shape"):
        map_agreement(reference[:1], reference)


class _Net(nn.Module):
    def __init__(self, dense: bool) -> None:
        super().__init__()
        self.dense = dense
        self.first = nn.Conv3d(2, 3, 3, padding=1)
        self.second = nn.Conv3d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        if self.dense:
            hidden = nn.functional.instance_norm(hidden)
        return self.second(torch.tanh(hidden))


@pytest.mark.parametrize("dense", [False, True])
def test_patch_full_agreement_compares_the_two_contexts(dense: bool) -> None:
    torch.manual_seed(0)
    model = _Net(dense)
    x = torch.randn(2, 36, 32, 28)
    domain = torch.zeros(36, 32, 28, dtype=torch.bool)
    domain[10:12, 20, 14] = True
    kwargs: SmoothGradOptions = {"n_samples": 2, "seed": 4, "engine": "naive"}
    report = patch_full_agreement(
        model, x, domain, SmoothGradConfig(**kwargs), ExplainedPass(patch_size=20)
    )
    full = instance_smoothgrad(model, x, domain, context="full", patch_size=20, **kwargs)
    patch = instance_smoothgrad(model, x, domain, context="patch", patch_size=20, **kwargs)
    expected = map_agreement(patch, full)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value)
    if dense:  # instance norm: every input voxel matters, the patch misses some of it
        assert 0 < report["full_mass_outside_patch"] < 1
    else:  # receptive field 5³ fits in the patch: the contexts agree to round-off
        # exact arithmetic gives 0; float32 sums of gradients leave round-off ~1e-7 (seen: 6e-8)
        assert report["full_mass_outside_patch"] == pytest.approx(0.0, abs=1e-6)
        assert report["correlation"] == pytest.approx(1.0, abs=1e-6)
        assert report["relative_max_difference"] < 1e-5
    assert not math.isnan(report["correlation"])


def test_the_given_context_does_not_matter() -> None:
    torch.manual_seed(1)
    model, x = _Net(True), torch.randn(2, 24, 24, 24)
    domain = torch.zeros(24, 24, 24, dtype=torch.bool)
    domain[10:12, 10, 10] = True
    reports = [
        patch_full_agreement(model, x, domain, None, ExplainedPass(context=c, patch_size=12))
        for c in ("full", "patch")
    ]
    # the same computation twice; draws forwarded together or one by one (chosen by timing)
    # agree to float32 round-off of the summed rows (seen: 7e-9 on entries of order 0.1)
    for key, value in reports[0].items():
        assert reports[1][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_context_agreement_compares_the_deployed_context_with_full() -> None:
    torch.manual_seed(2)
    pointwise = nn.Conv3d(2, 2, 1)
    set_card(pointwise, {"patch_size": [8, 8, 8]})
    x, domain = torch.randn(2, 20, 20, 20), torch.zeros(20, 20, 20, dtype=torch.bool)
    domain[4:6, 5, 5] = True
    config, deployed = SmoothGradConfig(n_samples=2), ExplainedPass(context="deployed")
    # a voxel's logit reads that voxel only: every window blends the one row the full pass gives
    same = context_agreement(pointwise, x, domain, config, deployed)
    assert same["correlation"] == pytest.approx(1.0) and same["relative_max_difference"] < 1e-6
    assert same["full_mass_outside_window"] == 0.0
    # instance norm lets every voxel of the volume move Ω's logits: mass outside the windows
    dense = _Net(True)
    set_card(dense, {"patch_size": [8, 8, 8]})
    report = context_agreement(dense, x, domain, config, deployed)
    assert 0 < report["full_mass_outside_window"] < 1 and report["correlation"] < 0.99
    with pytest.raises(ConfigurationError, match="patch or deployed, got 'full'"):
        context_agreement(dense, x, domain, config, ExplainedPass(context="full"))
