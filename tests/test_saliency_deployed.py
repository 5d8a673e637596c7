"""The deployed context against the slow, obvious truth: autograd through MONAI's own
``sliding_window_inference`` on an input that requires grad, row by row."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from instasal.errors import ConfigurationError
from instasal.prepare import ResampledNetwork, resample
from instasal.saliency import (
    ExplainedPass,
    SmoothGradConfig,
    explained_logits,
    instance_smoothgrad_many,
)
from instasal.saliency.deployed import (
    SLIDING_WINDOW_OVERLAP,
    SLIDING_WINDOW_SIGMA_SCALE,
    sliding_tiling,
)
from instasal.saliency.noise import noisy_inputs
from instasal.saliency.windows import context_windows
from instasal.typing import Aggregation, EngineName

# float32 sums of a few hundred products of O(1) terms: ~1e-6 of the largest entry
ROUND_OFF = 1e-5
PATCH = (8, 8, 8)
DEPLOYED = ExplainedPass(context="deployed")


class _Net(nn.Module):
    """Non-linear, so every window's Jacobian differs (a linear net would hide blending errors)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv3d(2, 4, 3, padding=1)
        self.second = nn.Conv3d(4, 2, 3, padding=1)
        self.card: dict[str, object] = {"patch_size": list(PATCH)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def _monai_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return sliding_window_inference(
        x[None],
        roi_size=PATCH,
        sw_batch_size=2,
        predictor=net,
        overlap=SLIDING_WINDOW_OVERLAP,
        mode="gaussian",
        sigma_scale=SLIDING_WINDOW_SIGMA_SCALE,
        padding_mode="constant",
        cval=0.0,
    )[0]


def _oracle(
    net: nn.Module, x: torch.Tensor, domain: torch.Tensor, target: int, aggregation: str
) -> torch.Tensor:
    """A_Ω of the deployed logit, one autograd row per voxel through MONAI's stitching."""
    leaf = x.clone().requires_grad_(True)
    logits = _monai_logits(net, leaf)[target]
    if aggregation == "mean":
        return torch.autograd.grad(logits[domain].mean(), leaf)[0]
    best: torch.Tensor | None = None
    for voxel in domain.nonzero().tolist():
        row = torch.autograd.grad(logits[tuple(voxel)], leaf, retain_graph=True)[0]
        best = row if best is None else torch.where(row.abs() > best.abs(), row, best)
    assert best is not None
    return best


def _domains(shape: tuple[int, int, int]) -> dict[int, torch.Tensor]:
    first = torch.zeros(shape, dtype=torch.bool)
    first[5:7, 3:5, 3:5] = True  # held by several windows along every axis
    second = torch.zeros(shape, dtype=torch.bool)
    second[shape[0] - 2 :, 0:2, shape[2] - 1 :] = True  # a corner
    return {1: first, 2: second}


@pytest.mark.parametrize("shape", [(20, 14, 10), (13, 6, 9)])  # the second is padded on axis 1
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_deployed_maps_are_the_rows_of_monais_sliding_window_logit(
    shape: tuple[int, int, int], aggregation: Aggregation
) -> None:
    net = _Net().eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    domains = _domains(shape)
    config = SmoothGradConfig(noise_level=0.0, aggregation=aggregation, engine="naive")
    maps = instance_smoothgrad_many(net, x, domains, config, DEPLOYED)
    for domain_id, domain in domains.items():
        expected = _oracle(net, x, domain, 1, aggregation)
        peak = float(expected.abs().max())
        assert peak > 0
        torch.testing.assert_close(maps[domain_id], expected, rtol=0, atol=ROUND_OFF * peak)


def test_deployed_smoothgrad_averages_the_oracle_over_the_same_noise_draws() -> None:
    net = _Net().eval()
    shape = (20, 14, 10)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    domain = _domains(shape)[1]
    config = SmoothGradConfig(n_samples=2, noise_level=0.1, seed=7)
    got = instance_smoothgrad_many(net, x, {1: domain}, config, DEPLOYED)[1]
    draws = noisy_inputs(x, n_samples=2, noise_level=0.1, noise_range="per_channel", seed=7)
    expected = torch.stack([_oracle(net, d, domain, 1, "max") for d in draws]).mean(0)
    peak = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=ROUND_OFF * peak)


def test_deployed_differs_from_patch_and_full_where_windows_blend() -> None:
    """Not a silent fallback: the patch and full contexts give other maps on this network."""
    net = _Net().eval()
    shape = (20, 14, 10)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    domain = {1: _domains(shape)[1]}
    maps = {
        context: instance_smoothgrad_many(
            net, x, domain, SmoothGradConfig(noise_level=0.0), ExplainedPass(context=context)
        )[1]
        for context in ("deployed", "patch", "full")
    }
    peak = float(maps["deployed"].abs().max())
    for other in ("patch", "full"):
        assert float((maps["deployed"] - maps[other]).abs().max()) > 0.01 * peak


@pytest.mark.parametrize("shape", [(20, 14, 10), (13, 6, 9), (8, 8, 8), (31, 17, 8)])
def test_blended_logits_with_every_window_equal_monais_prediction(
    shape: tuple[int, int, int],
) -> None:
    net = _Net().eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(4))
    tiling = sliding_tiling(shape, PATCH)
    with torch.no_grad():
        ours = tiling.blended_logits(net, x[None], range(len(tiling.boxes)))[0]
        theirs = _monai_logits(net, x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ROUND_OFF * float(theirs.abs().max()))


def test_covering_names_exactly_the_windows_holding_a_voxel() -> None:
    tiling = sliding_tiling((20, 8, 8), PATCH)  # windows start at 0, 4, 8, 12 along axis 0
    domain = torch.zeros(20, 8, 8, dtype=torch.bool)
    domain[9, 3, 3] = True
    assert [tiling.boxes[i][0].start for i in tiling.covering(domain)] == [4, 8]


def test_deployed_without_a_patch_size_is_refused_not_replaced() -> None:
    net = _Net().eval()
    del net.card
    x = torch.randn(2, 12, 12, 12)
    domain = {1: _domains((12, 12, 12))[1]}
    with pytest.raises(ConfigurationError, match="patch_size"):
        instance_smoothgrad_many(net, x, domain, SmoothGradConfig(), DEPLOYED)
    with pytest.raises(ConfigurationError, match="deployed"):
        context_windows(net, list(domain.values()), DEPLOYED)


def test_a_resampled_network_is_explained_through_the_predictions_resampling() -> None:
    """At 1 mm with a 2 mm network: resample in, slide the windows on the 2 mm grid, resample the
    stitched logits back (nearest), exactly as the prediction; oracle through MONAI's stitching."""
    net = _Net().eval()
    net.card = {"patch_size": list(PATCH), "spacing_mm": [2.0, 2.0, 2.0]}
    model = ResampledNetwork(net, [1.0, 1.0, 1.0]).eval()
    shape = (26, 20, 18)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    domain = torch.zeros(shape, dtype=torch.bool)
    domain[12:14, 9:11, 8:9] = True
    config = SmoothGradConfig(noise_level=0.0, engine="naive")
    got = instance_smoothgrad_many(model, x, {1: domain}, config, DEPLOYED)[1]
    leaf = x.clone().requires_grad_(True)
    inner = resample(leaf[None], model.model_grid_shape(shape))[0]
    logits = resample(_monai_logits(net, inner)[None], shape, grow="nearest")[0, 1]
    best: torch.Tensor | None = None
    for voxel in domain.nonzero().tolist():
        row = torch.autograd.grad(logits[tuple(voxel)], leaf, retain_graph=True)[0]
        best = row if best is None else torch.where(row.abs() > best.abs(), row, best)
    assert best is not None
    peak = float(best.abs().max())
    torch.testing.assert_close(got, best, rtol=0, atol=ROUND_OFF * peak)
    explained = explained_logits(model, x, {1: domain}, DEPLOYED)[1]
    torch.testing.assert_close(explained[1], logits.detach()[domain], rtol=0, atol=ROUND_OFF)


@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_windows_whose_graphs_overflow_the_budget_are_checkpointed_to_the_same_map(
    engine: EngineName,
) -> None:
    """A budget below one unit's graph (here: 1 byte) rebuilds each window's graph in the
    backward pass instead of keeping all of them: more forward passes, the oracle's map."""
    net = _Net().eval()
    shape = (20, 14, 10)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(6))
    domain = _domains(shape)[1]
    calls: list[int] = []
    handle = net.first.register_forward_hook(lambda *_: calls.append(1))
    maps: dict[int | None, torch.Tensor] = {}
    forwards: dict[int | None, int] = {}
    try:
        for budget in (None, 1):
            calls.clear()
            config = SmoothGradConfig(
                noise_level=0.0, engine=engine, memory_budget_bytes=budget, rows_per_call=2
            )
            maps[budget] = instance_smoothgrad_many(net, x, {1: domain}, config, DEPLOYED)[1]
            forwards[budget] = len(calls)
    finally:
        handle.remove()
    assert forwards[1] > forwards[None]  # the windows ran again in the backward passes
    expected = _oracle(net, x, domain, 1, "max")
    peak = float(expected.abs().max())
    for budget in (None, 1):
        torch.testing.assert_close(maps[budget], expected, rtol=0, atol=ROUND_OFF * peak)
