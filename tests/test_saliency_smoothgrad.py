"""Instance SmoothGrad against oracles (SPEC §2): an analytic linear net, autograd's full Jacobian,
Captum's Saliency, the noise definition, and the patch context."""

from __future__ import annotations

import functools
import itertools
from typing import TypeAlias

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from torch import nn

from conftest import SmoothGradOptions, set_card
from instasal.saliency import (
    ExplainedPass,
    SmoothGradConfig,
    instance_smoothgrad,
    instance_smoothgrad_many,
)
from instasal.saliency.noise import noise_sigmas, noisy_inputs
from instasal.typing import Aggregation, Context, EngineName, NoiseRange

SHAPE = (9, 8, 7)
LinearCase: TypeAlias = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _domain(shape: tuple[int, ...], voxels: list[tuple[int, int, int]]) -> torch.Tensor:
    domain = torch.zeros(shape, dtype=torch.bool)
    for voxel in voxels:
        domain[voxel] = True
    return domain


def _linear_net(weight: torch.Tensor) -> nn.Conv3d:
    net = nn.Conv3d(weight.shape[1], weight.shape[0], 3, padding=1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(weight)
    return net


def _analytic_rows(weight: torch.Tensor, target: int, domain: torch.Tensor) -> list[np.ndarray]:
    """Rows of a zero-padded 3³ cross-correlation, written down: ∂f_c[v]/∂x[k,u] = W[c,k,u−v+1]."""
    kernel = weight[target].numpy()
    shape = tuple(domain.shape)
    rows = []
    for v in map(tuple, np.argwhere(domain.numpy())):  # C order, as SPEC §2's loop
        row = np.zeros((kernel.shape[0], *shape))
        for offset in itertools.product(range(3), repeat=3):
            u = tuple(int(vi) + o - 1 for vi, o in zip(v, offset, strict=True))
            if all(0 <= ui < n for ui, n in zip(u, shape, strict=True)):
                row[np.index_exp[:] + u] = kernel[np.index_exp[:] + offset]
        rows.append(row)
    return rows


def _max_by_magnitude(rows: list[np.ndarray]) -> np.ndarray:
    best = rows[0].copy()
    for row in rows[1:]:
        replace = np.abs(row) > np.abs(best)
        best[replace] = row[replace]
    return best


@pytest.fixture
def linear_case() -> LinearCase:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 2, 3, 3, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(2, *SHAPE, generator=generator, dtype=torch.float64)
    domain = _domain(SHAPE, [(2, 3, 3), (2, 4, 3), (3, 4, 4), (6, 5, 2)])
    return weight, x, domain


@pytest.mark.parametrize("engine", ["naive", "batched", "auto"])
def test_linear_net_max_is_the_analytic_jacobian_max(
    linear_case: LinearCase, engine: EngineName
) -> None:
    weight, x, domain = linear_case
    expected = _max_by_magnitude(_analytic_rows(weight, 1, domain))
    # A linear net's Jacobian does not depend on the input, so noise cannot change the map.
    saliency = instance_smoothgrad(_linear_net(weight), x, domain, n_samples=3, engine=engine)
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_linear_net_mean_is_the_analytic_jacobian_mean(linear_case: LinearCase) -> None:
    weight, x, domain = linear_case
    expected = np.mean(_analytic_rows(weight, 0, domain), axis=0)
    saliency = instance_smoothgrad(
        _linear_net(weight), x, domain, target=0, aggregation="mean", n_samples=2
    )
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_ties_keep_the_earlier_row_with_its_sign(engine: EngineName) -> None:
    # Along the first axis the kernel is +1 at offset 0 and −1 at offset 2: the voxel between two
    # domain voxels two apart gets −1 from the earlier row and +1 from the later one.
    weight = torch.zeros(2, 1, 3, 3, 3, dtype=torch.float64)
    weight[1, 0, 0, 1, 1], weight[1, 0, 2, 1, 1] = 1.0, -1.0
    domain = _domain(SHAPE, [(2, 4, 3), (4, 4, 3)])
    x = torch.zeros(1, *SHAPE, dtype=torch.float64)
    saliency = instance_smoothgrad(
        _linear_net(weight), x, domain, noise_level=0.0, n_samples=1, engine=engine
    )
    assert saliency[0, 3, 4, 3].item() == -1.0
    assert saliency[0, 1, 4, 3].item() == 1.0 and saliency[0, 5, 4, 3].item() == -1.0


class _SmallNonlinear(nn.Module):
    def __init__(self, channels: int = 2, outputs: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, 4, 3, padding=1),
            nn.Tanh(),
            nn.Conv3d(4, outputs, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.body(x).sigmoid()


def _reference_map(
    model: nn.Module, x: torch.Tensor, domain: torch.Tensor, target: int, aggregation: Aggregation
) -> np.ndarray:
    """A_Ω(x) from autograd's full Jacobian (an independent route to the rows)."""
    model.eval()

    def logits_in_domain(inp: torch.Tensor) -> torch.Tensor:
        return model(inp.unsqueeze(0))[0, target][domain]

    jacobian = torch.autograd.functional.jacobian(logits_in_domain, x).numpy()
    if aggregation == "mean":
        return jacobian.mean(axis=0)
    return _max_by_magnitude(list(jacobian))


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_noiseless_map_equals_the_full_jacobian_oracle(aggregation: Aggregation) -> None:
    torch.manual_seed(0)
    model = _SmallNonlinear().double()
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    domain = _domain(SHAPE, [(4, 4, 3), (4, 5, 3), (5, 5, 4)])
    expected = _reference_map(model, x, domain, 1, aggregation)
    saliency = instance_smoothgrad(model, x, domain, noise_level=0.0, aggregation=aggregation)
    np.testing.assert_allclose(saliency.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_noise_level_zero_gives_the_map_of_x_exactly() -> None:
    torch.manual_seed(1)
    model = _SmallNonlinear()
    x = torch.randn(2, *SHAPE)
    domain = _domain(SHAPE, [(4, 4, 3), (5, 5, 4)])
    once = instance_smoothgrad(model, x, domain, noise_level=0.0, n_samples=1, engine="naive")
    many = instance_smoothgrad(model, x, domain, noise_level=0.0, n_samples=7, engine="naive")
    assert torch.equal(once, many)


def test_mean_aggregation_equals_captum_saliency_of_the_masked_mean_logit() -> None:
    torch.manual_seed(2)
    model = _SmallNonlinear().eval()
    x = torch.randn(2, *SHAPE)
    domain = _domain(SHAPE, [(3, 3, 3), (3, 4, 3), (6, 2, 5)])

    def masked_mean_logit(inp: torch.Tensor) -> torch.Tensor:
        return (model(inp)[:, 1] * domain).sum(dim=(1, 2, 3)) / domain.sum()

    captum = Saliency(masked_mean_logit).attribute(x.unsqueeze(0), abs=False)[0]
    ours = instance_smoothgrad(model, x, domain, aggregation="mean", noise_level=0.0)
    torch.testing.assert_close(ours, captum, rtol=1e-5, atol=1e-7)


def test_same_seed_same_map_and_different_seeds_differ() -> None:
    torch.manual_seed(3)
    model = _SmallNonlinear()
    x = torch.randn(2, *SHAPE)
    domain = _domain(SHAPE, [(4, 4, 3), (5, 5, 4)])
    first = instance_smoothgrad(model, x, domain, n_samples=3, seed=7, engine="naive")
    again = instance_smoothgrad(model, x, domain, n_samples=3, seed=7, engine="naive")
    other = instance_smoothgrad(model, x, domain, n_samples=3, seed=8, engine="naive")
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4


def test_global_rng_is_neither_used_nor_advanced() -> None:
    model = _SmallNonlinear()
    x = torch.randn(2, *SHAPE)
    domain = _domain(SHAPE, [(4, 4, 3)])
    state = torch.get_rng_state()
    first = instance_smoothgrad(model, x, domain, n_samples=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    assert torch.equal(instance_smoothgrad(model, x, domain, n_samples=2, seed=1), first)


def test_noise_sigma_per_channel_and_first_channel() -> None:
    x = torch.zeros(2, 4, 4, 4)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 0.0, 2.0
    x[1, 0, 0, 0], x[1, 1, 0, 0] = -5.0, 5.0
    torch.testing.assert_close(noise_sigmas(x, 0.05, "per_channel"), torch.tensor([0.1, 0.5]))
    torch.testing.assert_close(noise_sigmas(x, 0.05, "first_channel"), torch.tensor([0.1, 0.1]))


@pytest.mark.parametrize(
    ("noise_range", "expected"), [("per_channel", (0.2, 1.0)), ("first_channel", (0.2, 0.2))]
)
def test_drawn_noise_has_the_requested_sigma_per_channel(
    noise_range: NoiseRange, expected: tuple[float, float]
) -> None:
    x = torch.zeros(2, 40, 40, 40)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = -1.0, 1.0  # range 2
    x[1, 0, 0, 0], x[1, 1, 0, 0] = 0.0, 10.0  # range 10
    original = x.clone()
    draws = list(noisy_inputs(x, n_samples=2, noise_level=0.1, noise_range=noise_range, seed=0))
    assert not torch.equal(draws[0], draws[1])
    std = (draws[0] - x).reshape(2, -1).std(dim=1)
    np.testing.assert_allclose(std.numpy(), expected, rtol=0.02)
    assert torch.equal(x, original)


def test_k1_model_target_one_and_zero_mean_its_only_channel() -> None:
    torch.manual_seed(4)
    model = _SmallNonlinear(outputs=1)
    x = torch.randn(2, *SHAPE)
    domain = _domain(SHAPE, [(4, 4, 3), (5, 4, 3)])
    lesion = instance_smoothgrad(model, x, domain, target=1, n_samples=2, engine="naive")
    zero = instance_smoothgrad(model, x, domain, target=0, n_samples=2, engine="naive")
    assert torch.equal(lesion, zero)
    np.testing.assert_allclose(
        instance_smoothgrad(model, x, domain, noise_level=0.0).numpy(),
        _reference_map(model, x, domain, 0, "max"),
        rtol=1e-5,
        atol=1e-7,
    )


def test_many_domains_equal_one_call_per_domain_and_report_progress() -> None:
    torch.manual_seed(5)
    model = _SmallNonlinear()
    x = torch.randn(2, *SHAPE)
    domains = {
        3: _domain(SHAPE, [(1, 1, 1), (1, 2, 1)]),
        7: _domain(SHAPE, [(6, 5, 4)]),
        9: _domain(SHAPE, [(4, 4, 3), (4, 5, 3), (5, 5, 3)]),
    }
    calls: list[tuple[str, float, float]] = []
    kwargs: SmoothGradOptions = {"n_samples": 3, "seed": 11, "engine": "naive"}
    maps = instance_smoothgrad_many(
        model,
        x,
        domains,
        SmoothGradConfig(**kwargs),
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert list(maps) == [3, 7, 9]
    for domain_id, domain in domains.items():
        assert torch.equal(maps[domain_id], instance_smoothgrad(model, x, domain, **kwargs))
    # instasal.typing.Progress: (stage, done, total), 6 voxels x 3 draws rows in all
    assert {stage for stage, _, _ in calls} == {"SmoothGrad rows"}
    assert calls[-1] == ("SmoothGrad rows", 18, 18)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    assert instance_smoothgrad_many(model, x, {}) == {}


class _Local(nn.Module):
    """Receptive field 5³, no normalisation: a patch with a margin sees everything a row needs."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv3d(2, 3, 3, padding=1)
        self.second = nn.Conv3d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


class _Dense(_Local):
    """Instance normalisation makes every row touch every input voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(nn.functional.instance_norm(self.first(x))))


def test_patch_context_equals_full_where_the_receptive_field_fits() -> None:
    torch.manual_seed(6)
    model = _Local()
    x = torch.randn(2, 40, 36, 32)
    domain = _domain((40, 36, 32), [(30, 10, 8), (31, 10, 8), (31, 11, 9)])
    smoothgrad = functools.partial(
        instance_smoothgrad, model, x, domain, n_samples=3, seed=2, engine="naive"
    )
    full = smoothgrad(context="full")
    patch = smoothgrad(context="patch", patch_size=(16, 16, 16))
    torch.testing.assert_close(patch, full, rtol=1e-5, atol=1e-7)
    assert full.abs().max() > 0


def test_patch_context_map_is_zero_outside_the_patch_and_nonzero_inside() -> None:
    torch.manual_seed(7)
    model = _Dense()
    set_card(model, {"patch_size": (24, 24, 24), "size_divisibility": 8})
    x = torch.randn(2, 40, 36, 40)
    domain = _domain((40, 36, 40), [(38, 3, 20), (38, 4, 20)])  # near edges: the patch shifts in
    patch = instance_smoothgrad(model, x, domain, context="patch", n_samples=2)
    inside = torch.zeros(40, 36, 40, dtype=torch.bool)
    inside[16:40, 0:24, 8:32] = True  # 24³ centred on the bounding box, shifted inside
    assert patch[:, ~inside].abs().max() == 0
    assert bool((patch[:, inside] != 0).all())
    full = instance_smoothgrad(model, x, domain, context="full", n_samples=2)
    assert bool((full[:, ~inside] != 0).any())


def test_patch_is_enlarged_to_the_size_divisibility_when_the_domain_does_not_fit() -> None:
    model = _Dense()
    x = torch.randn(2, 48, 24, 24)
    domain = torch.zeros(48, 24, 24, dtype=torch.bool)
    domain[10:30, 12, 12] = True  # extent 20 + 2 × 8 margin = 36 > 16 → 40 (multiple of 8)
    patch = instance_smoothgrad(
        model, x, domain, context="patch", patch_size=16, size_divisibility=8, n_samples=1
    )
    nonzero_x = torch.nonzero(patch.abs().sum(dim=(0, 2, 3))).reshape(-1)
    assert (int(nonzero_x.min()), int(nonzero_x.max()) + 1) == (0, 40)


def test_many_domains_with_patches_share_coinciding_patches_and_equal_single_calls() -> None:
    torch.manual_seed(8)
    model = _Dense()
    x = torch.randn(2, 40, 36, 32)
    domains = {
        1: _domain((40, 36, 32), [(1, 1, 1)]),  # corner: patch shifted to the corner
        2: _domain((40, 36, 32), [(2, 2, 2), (2, 3, 2)]),  # same corner patch
        3: _domain((40, 36, 32), [(30, 20, 20)]),
    }
    kwargs: SmoothGradOptions = {"n_samples": 2, "engine": "naive"}
    forwards = []
    handle = model.first.register_forward_hook(lambda *args: forwards.append(1))
    try:
        maps = instance_smoothgrad_many(
            model,
            x,
            domains,
            SmoothGradConfig(**kwargs),
            ExplainedPass(context="patch", patch_size=20),
        )
    finally:
        handle.remove()
    assert len(forwards) == 2 * 2  # two distinct patches per noise draw
    for domain_id, domain in domains.items():
        assert torch.equal(
            maps[domain_id],
            instance_smoothgrad(model, x, domain, context="patch", patch_size=20, **kwargs),
        )


@pytest.mark.parametrize("context", ["full", "patch"])
def test_input_is_padded_to_the_size_divisibility_like_an_explicitly_padded_volume(
    context: Context,
) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(9)
    model = UNet(3, 2, 2, channels=(4, 8, 8), strides=(2, 2), num_res_units=0, norm="batch")
    x = torch.randn(2, 10, 11, 9)
    domain = _domain((10, 11, 9), [(4, 5, 4), (5, 5, 4)])
    with pytest.raises(RuntimeError):  # 11 and 9 are not multiples of 4: the net cannot run
        model(x.unsqueeze(0))
    set_card(model, {"size_divisibility": [4, 4, 4], "patch_size": [8, 8, 8]})
    ours = instance_smoothgrad(model, x, domain, noise_level=0.0, context=context)
    padded_x = torch.nn.functional.pad(x, (0, 3, 0, 1, 0, 2))
    padded_domain = torch.nn.functional.pad(domain, (0, 3, 0, 1, 0, 2))
    del model.card  # the volume is already a multiple of 4; "full" is the only window there is
    expected = instance_smoothgrad(model, padded_x, padded_domain, noise_level=0.0)
    # With "patch", Ω's extent plus the 8-voxel margins exceeds 8: the patch is enlarged to the
    # whole (unpadded) volume, then padded like "full".
    torch.testing.assert_close(ours, expected[:, :10, :11, :9], rtol=1e-5, atol=1e-7)
