"""Instance Grad-CAM++ / Grad-CAM against SPEC §3 written out here and against MONAI's CAMs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM, GradCAMpp
from torch import nn

from conftest import set_card
from instasal.errors import ConfigurationError
from instasal.saliency import GradCamConfig, instance_gradcam, instance_gradcam_many, normalise_map
from instasal.typing import CamVariant

SHAPE = (12, 10, 8)


class _EncoderDecoder(nn.Module):
    """Half-resolution middle layer, so the map is upsampled; a 1×1 head on ``mix``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv3d(2, 4, 3, stride=2, padding=1)
        self.middle = nn.Conv3d(4, 4, 3, padding=1)
        self.up = nn.ConvTranspose3d(4, 4, 2, stride=2)
        self.mix = nn.Conv3d(4 + 2, 5, 3, padding=1)
        self.squash = nn.Tanh()
        self.head = nn.Conv3d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.middle(F.leaky_relu(self.down(x), 0.1)))
        joined = torch.cat([F.relu(self.up(hidden)), x], dim=1)
        return self.head(self.squash(self.mix(joined)))


class _InstanceScore(nn.Module):
    """The wrapper MONAI's CAMs see: output ``[1, 1]``, the instance score ``Σ_{v∈Ω} f_c(x)[v]``."""

    def __init__(self, model: nn.Module, domain: torch.Tensor, target: int = 1) -> None:
        super().__init__()
        self.model, self.domain, self.target = model, domain, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target][:, self.domain].sum(dim=1, keepdim=True)


def _spec_cam(activations: np.ndarray, gradients: np.ndarray, variant: str) -> np.ndarray:
    """SPEC §3 literally, per channel k and position i."""
    channels = activations.shape[0]
    a = activations.reshape(channels, -1).astype(np.float64)
    g = gradients.reshape(channels, -1).astype(np.float64)
    weights = np.zeros(channels)
    for k in range(channels):
        if variant == "gradcam":
            weights[k] = g[k].mean()
            continue
        for i in range(a.shape[1]):
            denominator = 2 * g[k, i] ** 2 + a[k].sum() * g[k, i] ** 3
            alpha = 0.0 if denominator == 0 else g[k, i] ** 2 / denominator
            weights[k] += alpha * max(g[k, i], 0.0)
    combined = np.tensordot(weights, a, axes=1).reshape(activations.shape[1:])
    return np.maximum(combined, 0.0)


def _activations_and_gradients(model, x, domain, layer_name, target=1):
    stored: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer_name].register_forward_hook(
        lambda module, inputs, output: stored.append(output)
    )
    try:
        score = model(x.unsqueeze(0))[0, target][domain].sum()
        (gradients,) = torch.autograd.grad(score, stored[0])
    finally:
        handle.remove()
    return stored[0][0].detach().numpy(), gradients[0].numpy()


def _domain() -> torch.Tensor:
    domain = torch.zeros(SHAPE, dtype=torch.bool)
    domain[5:7, 4:6, 3] = True
    domain[6, 5, 4] = True
    return domain


@pytest.mark.parametrize("variant", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("layer", ["middle", "up", "mix"])
def test_map_equals_the_spec_formula_upsampled(variant: CamVariant, layer: str) -> None:
    torch.manual_seed(0)
    model = _EncoderDecoder().eval()
    x = torch.randn(2, *SHAPE)
    domain = _domain()
    activations, gradients = _activations_and_gradients(model, x, domain, layer)
    expected = torch.from_numpy(_spec_cam(activations, gradients, variant)).float()
    if expected.shape != SHAPE:
        expected = F.interpolate(expected[None, None], size=SHAPE, mode="trilinear")[0, 0]
    ours = instance_gradcam(model, x, domain, layer=layer, variant=variant)
    assert ours.shape == SHAPE and float(ours.max()) > 0
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("layer", ["middle", "up"])
def test_gradcam_equals_monai_gradcam_on_the_instance_score(layer: str) -> None:
    torch.manual_seed(1)
    model = _EncoderDecoder()
    x = torch.randn(2, *SHAPE)
    domain = _domain()
    wrapper = _InstanceScore(model, domain)
    monai_map = GradCAM(wrapper, target_layers=f"model.{layer}", postprocessing=lambda m: m)(
        x.unsqueeze(0), class_idx=0
    )[0, 0]
    ours = instance_gradcam(model, x, domain, layer=layer, variant="gradcam")
    torch.testing.assert_close(ours, monai_map, rtol=1e-4, atol=1e-6 * float(ours.max()))


def test_gradcampp_equals_monai_gradcampp_after_normalisation() -> None:
    # Where G is constant per channel (a 1×1 head, Ω the whole grid) MONAI's denominator
    # Σ_j A_k[j]·G_k[j]³ equals SPEC §3's G_k[i]³·Σ_j A_k[j]; MONAI's exp(score) factor and its
    # (1, 0) flip go away under normalisation; its +1e-7 in α's denominator is far below G².
    torch.manual_seed(2)
    model = _EncoderDecoder().eval()
    x = torch.randn(2, *SHAPE)
    bias = model.head.bias
    assert bias is not None
    with torch.no_grad():  # centre the logits so that exp(score) stays finite
        bias[1] -= model(x.unsqueeze(0))[0, 1].mean()
    domain = torch.ones(SHAPE, dtype=torch.bool)
    wrapper = _InstanceScore(model, domain)
    monai_map = GradCAMpp(wrapper, target_layers="model.squash")(x.unsqueeze(0), class_idx=0)
    ours = normalise_map(instance_gradcam(model, x, domain, layer="squash"))
    torch.testing.assert_close(ours, 1 - monai_map[0, 0], rtol=1e-4, atol=1e-5)


def test_normalise_map_is_a_zero_one_copy() -> None:
    raw = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    normalised = normalise_map(raw)
    torch.testing.assert_close(normalised, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))
    assert raw[0, 1, 1] == 10.0
    assert torch.equal(normalise_map(torch.full((2, 2), 3.0)), torch.zeros(2, 2))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


class _FailsAfterLayer(_EncoderDecoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.middle(self.down(x))
        raise RuntimeError("boom after the layer")


def test_no_hook_is_left_after_success_or_an_exception_and_state_is_restored() -> None:
    model = _EncoderDecoder().train()
    model.mix.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *SHAPE)
    original = x.clone()
    instance_gradcam(model, x, _domain(), layer="middle")
    assert _hooks(model) == 0 and model.training and model.middle.training
    assert [p.requires_grad for p in model.mix.parameters()] == [False, True]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(x, original)
    failing = _FailsAfterLayer().train()
    with pytest.raises(RuntimeError, match="boom after the layer"):
        instance_gradcam(failing, x, _domain(), layer="middle")
    assert _hooks(failing) == 0 and failing.training


class _Reused(_EncoderDecoder):
    """Runs ``head`` twice, and ``down`` off the path to the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.down(x)
        hidden = self.head(self.mix(torch.cat([x, x, x], dim=1)))
        return self.head(torch.cat([hidden, hidden, hidden[:, :1]], dim=1))


@pytest.mark.parametrize(
    ("layer", "variant", "message"),
    [
        ("midle", "gradcam++", "layer 'midle' is not a module of the model.*nearby names: middle"),
        ("", "gradcam++", "layer '' is not a module"),
        ("middle", "scorecam", "variant must be one of .*got 'scorecam'"),
    ],
)
def test_bad_layer_or_variant(layer: str, variant: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        instance_gradcam(
            _EncoderDecoder(), torch.randn(2, *SHAPE), _domain(), layer=layer, variant=variant
        )


def test_layer_run_twice_or_off_the_path_is_refused() -> None:
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ConfigurationError, match="layer 'head' ran 2 times in one forward pass"):
        instance_gradcam(_Reused(), x, _domain(), layer="head")
    with pytest.raises(ConfigurationError, match="layer 'down' does not influence"):
        instance_gradcam(_Reused(), x, _domain(), layer="down")


def test_patch_context_is_the_map_of_the_cropped_input_placed() -> None:
    torch.manual_seed(3)
    model = _EncoderDecoder()
    x = torch.randn(2, 32, 28, 24)
    domain = torch.zeros(32, 28, 24, dtype=torch.bool)
    domain[25:27, 5:7, 12] = True
    patch = instance_gradcam(
        model, x, domain, layer="middle", context="patch", patch_size=16, size_divisibility=4
    )
    # extent 2 + 2 × 8 = 18 > 16 → 20 per axis; centred on the box, shifted inside
    box = (slice(12, 32), slice(0, 20), slice(2, 22))
    cropped = instance_gradcam(model, x[(slice(None), *box)], domain[box], layer="middle")
    torch.testing.assert_close(patch[box], cropped)
    outside = torch.ones_like(domain)
    outside[box] = False
    assert patch[outside].abs().max() == 0 and patch[box].max() > 0


def test_many_equals_one_call_per_domain() -> None:
    torch.manual_seed(4)
    model = _EncoderDecoder()
    x = torch.randn(2, *SHAPE)
    second = torch.zeros(SHAPE, dtype=torch.bool)
    second[1:3, 1, 1] = True
    maps = instance_gradcam_many(model, x, {4: _domain(), 2: second}, GradCamConfig("up"))
    assert list(maps) == [4, 2]
    torch.testing.assert_close(maps[4], instance_gradcam(model, x, _domain(), layer="up"))
    torch.testing.assert_close(maps[2], instance_gradcam(model, x, second, layer="up"))
    assert not torch.allclose(maps[4], maps[2])


def test_gradcam_on_a_padded_input_equals_the_explicitly_padded_volume() -> None:
    torch.manual_seed(5)
    model = _EncoderDecoder()
    x = torch.randn(2, 11, 10, 7)  # odd sides: the stride-2 encoder cannot run without padding
    domain = torch.zeros(11, 10, 7, dtype=torch.bool)
    domain[5:7, 4, 3] = True
    set_card(model, {"size_divisibility": 2})
    ours = instance_gradcam(model, x, domain, layer="middle")
    del model.card
    padded = instance_gradcam(
        model,
        F.pad(x, (0, 1, 0, 0, 0, 1)),
        F.pad(domain, (0, 1, 0, 0, 0, 1)),
        layer="middle",
    )
    torch.testing.assert_close(ours, padded[:11, :10, :7])
