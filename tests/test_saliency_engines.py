"""Exact engines agree with SPEC §2's reference loop on real architectures; chunks are invisible."""

from __future__ import annotations

import functools

import pytest
import torch
from monai.networks.nets import DynUNet, SwinUNETR, UNet
from torch import nn

from conftest import SmoothGradOptions
from instasal.errors import ConfigurationError
from instasal.saliency import (
    SmoothGradConfig,
    cached_engine_choices,
    instance_smoothgrad,
    instance_smoothgrad_many,
)
from instasal.saliency.engines import MAX_ROWS_PER_CALL, rows_under_budget
from instasal.typing import Aggregation, EngineName


def _domain(shape: tuple[int, ...], voxels: list[tuple[int, int, int]]) -> torch.Tensor:
    domain = torch.zeros(shape, dtype=torch.bool)
    for voxel in voxels:
        domain[voxel] = True
    return domain


def _batchnorm_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.LeakyReLU(0.1),
        nn.Conv3d(4, 4, 3, padding=2, dilation=2),
        nn.InstanceNorm3d(4, affine=True),
        nn.Softplus(),
        nn.Conv3d(4, 2, 1),
    )


def _monai_unet() -> nn.Module:
    return UNet(3, 2, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance")


def _dynunet() -> nn.Module:
    return DynUNet(
        3,
        2,
        2,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        filters=[4, 8, 16],
        norm_name="instance",
        res_block=True,
    )


def _swin_unetr() -> nn.Module:
    # Batch norm (eval mode) in the UNETR blocks: instance norm refuses the 1³ bottleneck of 32³.
    return SwinUNETR(
        norm_name="batch",
        in_channels=2,
        out_channels=2,
        feature_size=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        spatial_dims=3,
    )


CASES = {
    "batchnorm-instancenorm": (_batchnorm_net, 12),
    "monai-unet": (_monai_unet, 16),
    "dynunet": (_dynunet, 16),
    "swin-unetr": (_swin_unetr, 32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_batched_engine_equals_the_naive_loop(name: str) -> None:
    factory, size = CASES[name]
    torch.manual_seed(0)
    model = factory()
    shape = (size, size, size)
    x = torch.randn(2, *shape)
    middle = size // 2
    domain = _domain(
        shape, [(middle, middle, middle), (middle, middle + 1, middle), (middle + 1, middle, 2)]
    )
    smoothgrad = functools.partial(instance_smoothgrad, model, x, domain, n_samples=2, seed=3)
    naive = smoothgrad(engine="naive")
    batched = smoothgrad(engine="batched")
    scale = naive.abs().max()
    assert scale > 0
    torch.testing.assert_close(batched, naive, rtol=1e-4, atol=1e-5 * float(scale))


def test_chunked_equals_unchunked_for_rows_and_domains() -> None:
    torch.manual_seed(1)
    model = _batchnorm_net()
    shape = (12, 12, 12)
    x = torch.randn(2, *shape)
    domains = {
        1: _domain(shape, [(2, 2, 2), (2, 3, 2), (3, 3, 3), (3, 3, 4), (4, 3, 4)]),
        2: _domain(shape, [(9, 9, 9), (9, 9, 10)]),
    }
    aggregations: tuple[Aggregation, ...] = ("max", "mean")
    for aggregation in aggregations:
        kwargs: SmoothGradOptions = {
            "n_samples": 2,
            "aggregation": aggregation,
            "engine": "batched",
        }
        whole = instance_smoothgrad_many(model, x, domains, SmoothGradConfig(**kwargs))
        for rows_per_call in (1, 2, 3):
            chunked = instance_smoothgrad_many(
                model, x, domains, SmoothGradConfig(rows_per_call=rows_per_call, **kwargs)
            )
            for domain_id in domains:
                torch.testing.assert_close(
                    chunked[domain_id], whole[domain_id], rtol=1e-5, atol=1e-7
                )


def test_tiny_memory_budget_still_gives_the_same_map() -> None:
    torch.manual_seed(2)
    model = _batchnorm_net()
    x = torch.randn(2, 12, 12, 12)
    domain = _domain((12, 12, 12), [(5, 5, 5), (5, 6, 5), (6, 6, 5)])
    naive = instance_smoothgrad(model, x, domain, n_samples=1, engine="naive")
    starved = instance_smoothgrad(
        model, x, domain, n_samples=1, engine="batched", memory_budget_bytes=1
    )
    torch.testing.assert_close(starved, naive, rtol=1e-5, atol=1e-7)


def test_rows_under_budget() -> None:
    assert rows_under_budget(1000, 10_000) == 10
    assert rows_under_budget(1000, 10) == 1
    assert rows_under_budget(1, 10**12) == MAX_ROWS_PER_CALL
    assert rows_under_budget(1000, 10, rows_per_call=5) == 5
    with pytest.raises(ConfigurationError, match="rows_per_call must be >= 1, got 0"):
        SmoothGradConfig(rows_per_call=0)


def test_auto_measures_once_per_model_and_shape_and_stays_exact() -> None:
    torch.manual_seed(3)
    model = _batchnorm_net()
    x = torch.randn(2, 12, 12, 12)
    domain = torch.zeros(12, 12, 12, dtype=torch.bool)
    domain[4:7, 4:7, 4:7] = True  # 27 rows: enough to probe both engines (19 rows)
    naive = instance_smoothgrad(model, x, domain, n_samples=2, engine="naive")
    assert cached_engine_choices(model) == {}
    auto = instance_smoothgrad(model, x, domain, n_samples=2, engine="auto")
    torch.testing.assert_close(auto, naive, rtol=1e-5, atol=1e-7)
    choices = cached_engine_choices(model)
    assert list(choices) == [((1, 2, 12, 12, 12), "cpu", "torch.float32")]
    (choice,) = choices.values()
    # the rule: batched rows only when they measured at least 10 % faster than the loop
    batched_wins = choice.batched_seconds_per_row < 0.9 * choice.naive_seconds_per_row
    assert choice.engine == ("batched" if batched_wins else "naive")
    instance_smoothgrad(model, x, domain, n_samples=1, engine="auto")
    assert cached_engine_choices(model) == choices
    other = _batchnorm_net()
    instance_smoothgrad(other, x, domain, n_samples=1, engine="auto", rows_per_call=1)
    assert cached_engine_choices(other) == {}  # one row per call: the loop, nothing to measure


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_map_equals_cpu_map() -> None:
    torch.manual_seed(4)
    model = _monai_unet()
    x = torch.randn(2, 16, 16, 16)
    domain = _domain((16, 16, 16), [(8, 8, 8), (8, 9, 8)])
    cpu = instance_smoothgrad(model, x, domain, n_samples=2, engine="naive")
    cuda = instance_smoothgrad(model.cuda(), x, domain, n_samples=2, engine="auto")
    assert cuda.device == x.device
    torch.testing.assert_close(cuda, cpu, rtol=1e-3, atol=1e-5 * float(cpu.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("engine", ["naive", "batched"])
def test_cuda_row_loop_never_waits_for_the_device(engine: EngineName) -> None:
    from instasal.saliency.engines import aggregate_rows

    torch.manual_seed(4)
    model = _monai_unet().cuda().eval()
    inputs = torch.randn(2, 2, 16, 16, 16, device="cuda", requires_grad=True)
    logits = model(inputs)[:, 1]
    domains = [torch.tensor([5, 9, 300]), torch.tensor([7, 1000])]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        maps = aggregate_rows(
            model, logits, inputs, domains, aggregation="max", engine=engine, rows_per_call=4
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [m.shape for m in maps] == [inputs.shape, inputs.shape]
