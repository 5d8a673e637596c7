"""The two methods as objects: constructed once with the model and the method's settings, called
with the subject, its domains and the forward pass explained (given per call)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import set_card
from instasal import (
    ExplainedPass,
    GradCamConfig,
    InstanceGradCam,
    InstanceSmoothGrad,
    SmoothGradConfig,
    instance_gradcam,
    instance_smoothgrad,
)
from instasal.errors import ConfigurationError

SHAPE = (16, 12, 10)


def _model() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 3, padding=1)
    ).eval()
    set_card(model, {"patch_size": [8, 8, 8], "gradcam_layer": "0"})
    return model


def _domains() -> dict[int, torch.Tensor]:
    first = torch.zeros(SHAPE, dtype=torch.bool)
    second = torch.zeros(SHAPE, dtype=torch.bool)
    first[2:4, 2:4, 2:3] = True
    second[11:13, 8:10, 6:8] = True
    return {5: first, 9: second}


@pytest.mark.parametrize(
    "explained",
    [
        ExplainedPass(),
        ExplainedPass(target=0, context="patch"),
        ExplainedPass(context="patch", patch_size=(10, 8, 8)),
        ExplainedPass(context="deployed"),
    ],
    ids=["full", "patch-target-0", "patch-size", "deployed"],
)
def test_one_smoothgrad_object_serves_every_forward_pass_as_the_keyword_function(
    explained: ExplainedPass,
) -> None:
    model, x = _model(), torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    config = SmoothGradConfig(n_samples=2, noise_level=0.1, seed=4, engine="naive")
    method = InstanceSmoothGrad(model, config)
    maps = method.attribute(x, _domains(), explained)
    assert list(maps) == [5, 9]
    for domain_id, domain in _domains().items():
        expected = instance_smoothgrad(
            model,
            x,
            domain,
            target=explained.target,
            context=explained.context,
            patch_size=explained.patch_size,
            n_samples=2,
            noise_level=0.1,
            seed=4,
            engine="naive",
        )
        assert float(expected.abs().max()) > 0
        # the naive engine runs the same backward calls in the same order: identical maps
        assert torch.equal(maps[domain_id], expected)


def test_the_forward_pass_is_taken_per_call_not_from_the_object() -> None:
    model, x = _model(), torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(2))
    method = InstanceSmoothGrad(model, SmoothGradConfig(noise_level=0.0))
    domain = {5: _domains()[5]}
    full = method.attribute(x, domain)[5]
    other_target = method.attribute(x, domain, ExplainedPass(target=0))[5]
    assert float((full - other_target).abs().max()) > 1e-3 * float(full.abs().max())
    del model.card
    with pytest.raises(ConfigurationError, match="patch_size"):
        method.attribute(x, domain, ExplainedPass(context="patch"))
    # the receptive field (±2 voxels) lies inside the patch and its margin: the same rows
    patch = method.attribute(x, domain, ExplainedPass(context="patch", patch_size=8))[5]
    torch.testing.assert_close(patch, full, rtol=0, atol=1e-6 * float(full.abs().max()))


def test_work_counts_the_rows_attribute_reports() -> None:
    model, x = _model(), torch.randn(2, *SHAPE)
    method = InstanceSmoothGrad(model, SmoothGradConfig(n_samples=3))
    seen: list[float] = []
    method.attribute(x, _domains(), progress=lambda _stage, done, _total: seen.append(done))
    assert seen[-1] == method.work(x, _domains()).rows == 3 * (4 + 8)


def test_gradcam_resolves_its_layer_once_at_construction() -> None:
    model, x = _model(), torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    method = InstanceGradCam(model)  # the card's layer
    assert method.layer == "0"
    explained = ExplainedPass(context="patch")
    maps = method.attribute(x, _domains(), explained)
    for domain_id, domain in _domains().items():
        expected = instance_gradcam(model, x, domain, layer="0", context="patch")
        torch.testing.assert_close(maps[domain_id], expected, rtol=0, atol=0)
    # deployed: the patch window, as documented (a layer's activation is one window's)
    deployed = method.attribute(x, _domains(), ExplainedPass(context="deployed"))
    for domain_id in maps:
        torch.testing.assert_close(deployed[domain_id], maps[domain_id], rtol=0, atol=0)
    del model.card
    with pytest.raises(ConfigurationError, match="no Grad-CAM layer"):
        InstanceGradCam(model)  # refused before any input is seen
    assert InstanceGradCam(model, GradCamConfig(layer="2")).layer == "2"
