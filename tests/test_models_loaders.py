"""Users' models, each loaded from an artefact written by its own tool's code.

TorchScript files come from ``torch.jit.save``, bundles from ``monai.bundle.init_bundle`` and
``ConfigParser.export_config_file``, state dicts from ``torch.save(model.state_dict())``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, SwinUNETR, UNet

from instasal.errors import ModelError
from instasal.models import card_of, load_model
from instasal.models.divisibility import size_divisibility_of

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

FACTORY_MODULE = """
from monai.networks.nets import UNet


def tiny_unet():
    return UNet(3, 2, 2, channels=(4, 8), strides=(2,), num_res_units=0)


def not_a_module():
    return 42
"""


TINY_UNET: dict[str, Any] = {"spatial_dims": 3, "in_channels": 2, "out_channels": 2}
TINY_UNET |= {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def _tiny_unet(seed: int = 0) -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet(**TINY_UNET).eval()


class _NeedsMultipleOf(torch.nn.Module):
    """A pointwise convolution that fails on input sides not a multiple of ``factor``."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = torch.nn.Conv3d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(side % self.factor for side in x.shape[2:]):
            raise RuntimeError("Sizes of tensors must match except in dimension 1")
        return self.conv(x)


def _same_outputs(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    x = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))


def test_torchscript_file_with_embedded_card(tmp_path: Path) -> None:
    reference = _tiny_unet()
    path = tmp_path / "scripted.pt"
    card = {"channel_names": ["FLAIR", "T1w"], "patch_size": [16, 16, 16], "threshold": 0.35}
    torch.jit.save(
        torch.jit.script(reference),
        str(path),
        _extra_files={"instasal_card.json": json.dumps(card)},
    )
    model = load_model(path)
    _same_outputs(model, reference)
    loaded = card_of(model)
    assert (loaded.architecture, loaded.name) == ("torchscript", "scripted")
    assert loaded.threshold == 0.35 and loaded.patch_size == (16, 16, 16)
    assert loaded.out_channels == 2  # probed by a forward pass


def test_torchscript_file_with_sidecar_card_and_inferred_channels(tmp_path: Path) -> None:
    reference = _tiny_unet()
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(reference, torch.zeros(1, 2, 16, 16, 16)), str(path))
    (tmp_path / "traced.json").write_text(json.dumps({"gradcam_layer": "model.2.conv"}))
    model = load_model(str(path))
    _same_outputs(model, reference)
    card = card_of(model)
    assert card.channel_names == ("ch0", "ch1")  # two input channels, inferred, not named
    assert card.gradcam_layer == "model.2.conv"


def test_monai_bundle_made_by_monai_bundle_tooling(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser, init_bundle

    reference = _tiny_unet(3)
    bundle = tmp_path / "lesion_bundle"
    init_bundle(str(bundle), network=reference)
    inference = bundle / "configs" / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser["network_def"] = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 2,
        "out_channels": 2,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    parser["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]}
    parser["preprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
        ],
    }
    ConfigParser.export_config_file(parser.get(), str(inference))
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = ConfigParser.load_config_file(str(metadata_path))
    metadata["network_data_format"] = {
        "inputs": {
            "image": {
                "num_channels": 2,
                "spatial_shape": [32, 32, 32],
                "channel_def": {"0": "FLAIR", "1": "T1w"},
            }
        },
        "outputs": {"pred": {"num_channels": 2}},
    }
    ConfigParser.export_config_file(metadata, str(metadata_path))
    model = load_model(bundle)
    _same_outputs(model, reference)
    card = card_of(model)
    assert card.architecture == "bundle"
    assert card.channel_names == ("FLAIR", "T1w")
    assert card.patch_size == (16, 16, 16)  # the inferer's roi_size wins over spatial_shape
    assert card.orientation == "LPS" and card.spacing_mm == (1.5, 1.5, 2.0)  # its transforms
    assert card.source.endswith("models/model.pt")


def test_bundle_without_weights(tmp_path: Path) -> None:
    from monai.bundle import init_bundle

    init_bundle(str(tmp_path / "empty"))
    with pytest.raises(
        ModelError, match=r"empty: bundle has no models/model\.pt or models/model\.ts"
    ):
        load_model(tmp_path / "empty")


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "user_models.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_models"
    sys.modules.pop("user_models", None)


def test_module_factory_with_state_dict(tmp_path: Path, factory_module: str) -> None:
    reference = _tiny_unet(5)
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    model = load_model(f"{factory_module}:tiny_unet={weights}")
    _same_outputs(model, reference)
    assert card_of(model).architecture == "module"
    # a training checkpoint that wraps the state dict one level down loads too
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, wrapped)
    _same_outputs(load_model(f"{factory_module}:tiny_unet={wrapped}"), reference)


def test_module_factory_errors(tmp_path: Path, factory_module: str) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(_tiny_unet().state_dict(), weights)
    with pytest.raises(ModelError, match="cannot import module 'no_such_module'"):
        load_model(f"no_such_module:f={weights}")
    with pytest.raises(ModelError, match="has no callable 'missing'"):
        load_model(f"{factory_module}:missing={weights}")
    with pytest.raises(ModelError, match=r"not_a_module\(\) returned int"):
        load_model(f"{factory_module}:not_a_module={weights}")
    with pytest.raises(ModelError, match=r"absent\.pt: checkpoint not found"):
        load_model(f"{factory_module}:tiny_unet={tmp_path / 'absent.pt'}")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"truncated\.pt: corrupt or unreadable checkpoint"):
        load_model(f"{factory_module}:tiny_unet={truncated}")
    other = tmp_path / "other.pt"
    torch.save(UNet(3, 2, 2, channels=(4, 16), strides=(2,)).state_dict(), other)
    with pytest.raises(ModelError, match=r"other\.pt: weights do not fit the network"):
        load_model(f"{factory_module}:tiny_unet={other}")
    pickled = tmp_path / "pickled.pt"
    torch.save(_tiny_unet(), pickled)  # a whole pickled module: refused by weights_only=True
    with pytest.raises(ModelError, match=r"pickled\.pt: corrupt or unreadable checkpoint"):
        load_model(f"{factory_module}:tiny_unet={pickled}")


def test_state_dict_without_factory_is_explained(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(_tiny_unet().state_dict(), weights)
    with pytest.raises(ModelError, match=r"not a TorchScript model .*pass module:factory="):
        load_model(weights)


def test_model_exported_by_instasal_train_loads_from_its_path(tmp_path: Path) -> None:
    from instasal.models import ModelCard, build_network, default_hyperparameters
    from instasal.models.export import export_weights

    hyperparameters = default_hyperparameters("unet") | {"channels": [4, 8, 16], "strides": [2, 2]}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = build_network("unet", hyperparameters).eval()
    card = ModelCard(
        name="mine", architecture="unet", hyperparameters=hyperparameters, patch_size=(16, 16, 16)
    )
    weights, _ = export_weights(network, card, tmp_path, name="unet_small")
    loaded = load_model(weights)
    assert card_of(loaded).name == "unet_small" and card_of(loaded).patch_size == (16, 16, 16)
    assert card_of(loaded).source == str(weights)
    _same_outputs(loaded, network)
    # A card of an architecture instasal does not build is a TorchScript/state-dict question.
    card_path = weights.with_suffix(".json")
    card_path.write_text(json.dumps(json.loads(card_path.read_text()) | {"architecture": "x"}))
    with pytest.raises(ModelError, match="not a TorchScript model"):
        load_model(weights)


def _crafted_bundle(tmp_path: Path, network_def: dict[str, object]) -> Path:
    bundle = tmp_path / "crafted_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text("{}")
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.save({}, bundle / "models" / "model.pt")
    return bundle


_WRITE_MARKER = "$__import__('pathlib').Path('{marker}').write_text('x') and 2"


@pytest.mark.parametrize(
    ("field", "runs_code"),
    [
        ({"in_channels": _WRITE_MARKER}, True),
        ({"_requires_": _WRITE_MARKER}, True),
        ({"in_channels": "@other"}, False),
        ({"_target_": "pathlib.Path"}, False),
    ],
)
def test_bundle_code_is_refused_unless_trusted(
    tmp_path: Path, field: dict[str, str], runs_code: bool
) -> None:
    marker = tmp_path / "pwned"
    network_def = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 3}
    network_def |= {key: value.replace("{marker}", str(marker)) for key, value in field.items()}
    bundle = _crafted_bundle(tmp_path, network_def)
    with pytest.raises(ModelError, match=r"inference\.json: network_def .*trust_code"):
        load_model(bundle)
    assert not marker.exists()
    with pytest.raises(ModelError):  # trusted: built (running the code), then refused otherwise
        load_model(bundle, trust_code=True)
    assert marker.exists() == runs_code


@pytest.mark.parametrize("command", ["segment", "explain"])
def test_cli_refuses_bundle_code_in_one_line_unless_told_to_trust_it(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import nibabel as nib
    import numpy as np

    from instasal.cli import run_app

    marker = tmp_path / "pwned"
    network_def = {
        "_target_": "monai.networks.nets.BasicUNet",
        "spatial_dims": 3,
        "in_channels": _WRITE_MARKER.replace("{marker}", str(marker)),
    }
    bundle = _crafted_bundle(tmp_path, network_def)
    image = tmp_path / "sub-01_FLAIR.nii.gz"
    data = np.random.default_rng(0).normal(10.0, 1.0, (8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), image)
    arguments = [command, str(image), "--out", str(tmp_path / "out"), "--model", str(bundle)]
    assert run_app(arguments) == 2 and not marker.exists()
    refusal = capsys.readouterr().err
    assert "trust-model-code" in refusal and len(refusal.strip().splitlines()) == 1, refusal
    assert run_app([*arguments, "--trust-model-code"]) == 2  # built (running the code), refused
    assert marker.exists()


def _bundle_of(tmp_path: Path, network: torch.nn.Module, network_def: dict[str, object]) -> Path:
    """A bundle of ``network`` (weights saved) whose metadata states no input shape."""
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1"}))
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_bundle_size_divisibility_from_its_unet_strides(tmp_path: Path) -> None:
    arguments: dict[str, Any] = {"spatial_dims": 3, "in_channels": 2, "out_channels": 2}
    arguments |= {"channels": [2, 2, 2, 2, 2], "strides": [2, 2, 2, 2], "num_res_units": 0}
    bundle = _bundle_of(tmp_path, UNet(**arguments), {"_target_": "UNet", **arguments})
    assert card_of(load_model(bundle)).size_divisibility == (16, 16, 16)


def test_bundle_size_divisibility_from_its_metadata(tmp_path: Path) -> None:
    bundle = _bundle_of(tmp_path, _tiny_unet(), {"_target_": "UNet", **TINY_UNET})
    shape = {"num_channels": 2, "spatial_shape": ["32*n", "32*n", "16*n"]}
    metadata = {"network_data_format": {"inputs": {"image": shape}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    assert card_of(load_model(bundle)).size_divisibility == (32, 32, 16)


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        (UNet(3, 2, 2, channels=(2, 2, 2), strides=(2, 2), num_res_units=0), (4, 4, 4)),
        (
            DynUNet(3, 2, 2, [3, 3, 3], [1, 2, (2, 2, 1)], [2, (2, 2, 1)], filters=[2, 2, 2]),
            (4, 4, 2),
        ),
        (SwinUNETR(in_channels=2, out_channels=2, feature_size=12, spatial_dims=3), (32, 32, 32)),
        (BasicUNet(3, 2, 2, features=(2, 2, 2, 2, 2, 2)), (16, 16, 16)),
        (_NeedsMultipleOf(8), (8, 8, 8)),
        (_NeedsMultipleOf(1), (1, 1, 1)),
    ],
    ids=["UNet", "DynUNet", "SwinUNETR", "BasicUNet", "needs 8 (probed)", "pointwise (probed)"],
)
def test_size_divisibility_of_known_networks(
    network: torch.nn.Module, expected: tuple[int, int, int]
) -> None:
    assert size_divisibility_of(network, in_channels=2) == expected
