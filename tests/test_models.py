"""Built-in architectures, cards, shipped models and sliding-window inference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import instasal
from conftest import raw_card
from instasal.errors import ConfigurationError, ModelError
from instasal.models import (
    ARCHITECTURES,
    ModelCard,
    attach_card,
    available_models,
    build_network,
    card_of,
    check_channels,
    default_gradcam_layer,
    default_hyperparameters,
    load_model,
    nnunet_topology,
    predict_logits,
    predict_probability,
    probability_from_logits,
    size_divisibility,
)
from instasal.models.loaders import weights_folder

CARD_FIELDS = {f.name for f in dataclasses.fields(ModelCard)}


def test_nnunet_topology_isotropic_and_anisotropic() -> None:
    kernels, strides = nnunet_topology((48, 48, 48), (2.0, 2.0, 2.0))
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # 48 → 24 → 12 → 6
    assert kernels == [[3, 3, 3]] * 4
    # worked by hand with nnU-Net's rules: the 3 mm axis waits until the others reach 2 mm, and
    # stops pooling when its feature map would fall under 2 × 4 voxels
    kernels, strides = nnunet_topology((64, 64, 16), (1.0, 1.0, 3.0))
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_builtin_architectures_map_two_channels_to_two_logits(architecture: str) -> None:
    side = 64 if architecture == "swinunetr" else 32  # Swin's 1/32 bottleneck needs > 1 voxel
    patch = (side, side, side)
    hyperparameters = default_hyperparameters(architecture, patch_size=patch)
    network = build_network(architecture, hyperparameters).eval()
    divisor = size_divisibility(architecture, hyperparameters)
    assert all(p % d == 0 for p, d in zip(patch, divisor, strict=True))
    with torch.no_grad():
        output = network(torch.zeros(1, 2, *patch))
    assert output.shape == (1, 2, *patch)
    layer = default_gradcam_layer(architecture, hyperparameters)
    modules = dict(network.named_modules())
    assert layer in modules
    # the documented layer sits at half the input resolution
    captured: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            network(torch.zeros(1, 2, *patch))
    finally:
        handle.remove()
    assert tuple(captured[0].shape[2:]) == tuple(p // 2 for p in patch)


def test_unet_default_layer_is_the_authors() -> None:
    assert default_gradcam_layer("unet", default_hyperparameters("unet")) == (
        "model.1.submodule.2.conv"
    )


def test_unknown_architecture() -> None:
    with pytest.raises(ModelError, match="unknown architecture 'resnet'; built-in architectures"):
        build_network("resnet", {})


def test_available_models_and_public_api() -> None:
    assert available_models() == ["unet", "nnunet", "swinunetr"]
    assert instasal.available_models is available_models
    assert instasal.load_model is load_model


@pytest.mark.parametrize("name", ["unet", "nnunet", "swinunetr"])
def test_shipped_model_loads_offline_with_a_full_card(name: str) -> None:
    weights = weights_folder() / f"{name}.pt"
    assert weights.is_file(), f"{name} weights are not shipped"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    model = load_model(name)
    assert not model.training
    assert set(raw_card(model)) == CARD_FIELDS
    card = card_of(model)
    assert card.architecture == name
    assert card.channel_names == ("FLAIR", "T1w")
    assert card.normalisation == "zscore_nonzero"
    assert card.spacing_mm == (2.0, 2.0, 2.0)
    assert card.patch_size is not None
    assert 0.0 < card.threshold < 1.0
    assert card.gradcam_layer in dict(model.named_modules())
    assert card.reproduce_command and card.trained_commit
    assert (
        card.training["training_cohort"]["cohort_seed"]
        != card.training["validation_cohort"]["cohort_seed"]
    )
    assert {"ndsc", "tpr", "fdr", "fnr"} <= set(card.metrics["validation"])
    with torch.no_grad():
        output = model(torch.zeros(1, 2, *card.patch_size))
    assert output.shape == (1, 2, *card.patch_size)


def test_loading_errors_are_one_line_and_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown model 'nope'; built-in models are unet, nnunet"):
        load_model("nope")
    with pytest.raises(ModelError, match=r"missing\.pt: model file or folder not found"):
        load_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match=r"corrupt\.pt: not a TorchScript model"):
        load_model(corrupt)
    with pytest.raises(
        ModelError, match=r"folder is neither a MONAI bundle \(configs/, models/\) nor an nnU-Net"
    ) as caught:
        load_model(tmp_path)
    assert "\n" not in str(caught.value)


class PointwiseNet(nn.Module):
    """1×1×1 convolutions only: every output voxel sees one input voxel (receptive field 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(2, 6, 1), nn.Tanh(), nn.Conv3d(6, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _card(**changes: object) -> ModelCard:
    values: dict[str, object] = {"name": "test", "architecture": "module"}
    return ModelCard(**(values | changes))  # type: ignore[arg-type]


def test_sliding_window_equals_direct_forward_for_a_pointwise_model() -> None:
    torch.manual_seed(0)
    model = attach_card(PointwiseNet(), _card(patch_size=(8, 8, 8)))
    x = torch.randn(2, 21, 17, 13)
    with torch.no_grad():
        direct = model(x[None])[0].numpy()
    stitched = predict_logits(model, x, overlap=0.5)
    np.testing.assert_allclose(stitched, direct, atol=1e-5)
    probability = predict_probability(model, x)
    np.testing.assert_allclose(
        probability, torch.softmax(torch.from_numpy(direct), 0)[1], atol=1e-5
    )


def test_sliding_window_equals_direct_forward_on_a_patch_sized_input() -> None:
    hyperparameters = default_hyperparameters("unet") | {"channels": [4, 8, 16], "strides": [2, 2]}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = build_network("unet", hyperparameters).eval()
    model = attach_card(network, _card(patch_size=(16, 16, 16)))
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        direct = model(x[None])[0].numpy()
    np.testing.assert_allclose(predict_logits(model, x), direct, atol=1e-5)
    assert not model.training


class _CountingNet(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.network(x)


@pytest.mark.parametrize("shape", [(40, 33, 29), (12, 30, 10)])
def test_region_inference_equals_the_whole_volume_inside_the_region(
    shape: tuple[int, int, int],
) -> None:
    hyperparameters = default_hyperparameters("unet") | {"channels": [4, 8, 16], "strides": [2, 2]}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = build_network("unet", hyperparameters).eval()
    model = attach_card(_CountingNet(network), _card(patch_size=(16, 16, 16)))
    x = torch.randn(2, *shape)
    full = predict_logits(model, x, overlap=0.5)
    all_windows = model.windows
    region = np.zeros(shape, dtype=bool)
    region[3:5, 20:23, 4:6] = True
    model.windows = 0
    near = predict_logits(model, x, overlap=0.5, region=region)
    assert 0 < model.windows < all_windows
    np.testing.assert_allclose(near[:, region], full[:, region], atol=1e-6)
    valid = ~np.isnan(near[0])
    assert valid[region].all() and not valid.all()
    np.testing.assert_allclose(near[:, valid], full[:, valid], atol=1e-6)
    probability = predict_probability(model, x, region=region)
    np.testing.assert_allclose(
        probability[region], predict_probability(model, x)[region], atol=1e-6
    )


def test_region_must_be_on_the_grid_and_not_empty() -> None:
    model = attach_card(PointwiseNet(), _card(patch_size=(8, 8, 8)))
    x = torch.randn(2, 10, 10, 10)
    with pytest.raises(ConfigurationError, match="region has shape"):
        predict_logits(model, x, region=np.ones((9, 10, 10), dtype=bool))
    with pytest.raises(ConfigurationError, match="region is empty"):
        predict_logits(model, x, region=np.zeros((10, 10, 10), dtype=bool))
    whole_volume = attach_card(PointwiseNet(), _card())  # no patch: runs once, region still checked
    with pytest.raises(ConfigurationError, match="region has shape"):
        predict_logits(whole_volume, x, region=np.ones((9, 10, 10), dtype=bool))


def test_whole_volume_forward_pads_to_the_size_divisibility() -> None:
    hyperparameters = default_hyperparameters("unet") | {"channels": [4, 8, 16], "strides": [2, 2]}
    network = build_network("unet", hyperparameters).eval()
    model = attach_card(network, _card(size_divisibility=(4, 4, 4)))
    x = torch.randn(2, 10, 12, 9)
    padded = torch.nn.functional.pad(x[None], [0, 3, 0, 0, 0, 2])
    with torch.no_grad():
        expected = model(padded)[0, :, :10, :12, :9].numpy()
    np.testing.assert_allclose(predict_logits(model, x), expected, atol=1e-6)


def test_probability_from_logits_softmax_and_sigmoid() -> None:
    logits = np.array([[[[0.0]]], [[[np.log(3.0)]]]], dtype=np.float32)  # softmax → 0.25, 0.75
    assert probability_from_logits(logits, _card())[0, 0, 0] == pytest.approx(0.75)
    single = _card(out_channels=1, target_class=0, output_activation="sigmoid")
    assert probability_from_logits(logits[1:], single)[0, 0, 0] == pytest.approx(0.75)
    with pytest.raises(ConfigurationError, match=r"target must be in \[0, 2\), got 5"):
        probability_from_logits(logits, _card(), target=5)


def test_channel_checks() -> None:
    model = attach_card(PointwiseNet(), _card(patch_size=(8, 8, 8)))
    check_channels(model, ["flair", "MPRAGE"])  # case and the T1w alias
    check_channels(model, ["ch0", "ch1"])
    with pytest.raises(ModelError, match=r"expects 2 channel\(s\) \(FLAIR, T1w\), got 3"):
        check_channels(model, ["FLAIR", "T1w", "T2w"])
    with pytest.raises(ModelError, match="expects channel 0 to be 'FLAIR', got 'T1w'"):
        check_channels(model, ["T1w", "FLAIR"])
    with pytest.raises(ModelError, match=r"expects 2 channel\(s\) \(FLAIR, T1w\), got 3"):
        predict_logits(model, torch.zeros(3, 8, 8, 8))
    with pytest.raises(ConfigurationError, match=r"overlap must be >= 0 and < 1, got 1\.5"):
        predict_logits(model, torch.zeros(2, 8, 8, 8), overlap=1.5)
    with pytest.raises(ModelError, match="has no model card"):
        card_of(PointwiseNet())


def test_card_validation_and_round_trip() -> None:
    card = _card(patch_size=(8, 8, 8), spacing_mm=(1.0, 1.0, 1.0), threshold=0.3)
    assert ModelCard.from_dict(card.to_dict()) == card
    with pytest.raises(ModelError, match=r"threshold must be in \[0, 1\], got 1.5"):
        _card(threshold=1.5)
    with pytest.raises(ModelError, match=r"target_class must be in \[0, 2\), got 2"):
        _card(target_class=2)
    with pytest.raises(ModelError, match=r"unknown card field\(s\) \['colour'\]"):
        ModelCard.from_dict({"name": "x", "architecture": "unet", "colour": "red"})
    with pytest.raises(ModelError, match=r"missing card field\(s\) \['architecture'\]"):
        ModelCard.from_dict({"name": "x"})


def test_bundled_unet_card_names_the_skip_connection_layer() -> None:
    # docs/method.md: the layer comparison of scripts/gradcam_layers.py chose model.1 for the
    # bundled weights (its 16 + 16 concatenated channels at half resolution)
    network = load_model("unet")
    assert card_of(network).gradcam_layer == "model.1"
    captured: list[torch.Tensor] = []
    layer = dict(network.named_modules())["model.1"]
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            network(torch.zeros(1, 2, 32, 32, 32))
    finally:
        handle.remove()
    assert tuple(captured[0].shape) == (1, 32, 16, 16, 16)
