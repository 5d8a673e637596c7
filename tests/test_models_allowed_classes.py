"""Class names from model files resolve to allowed network classes only (never to code).

Every hostile name below is first shown to resolve, under ``pydoc.locate`` (what nnU-Net and MONAI
call), to something that is not an allowed class; the resolver must refuse each, and accept the
names real plans and bundles use.
"""

from __future__ import annotations

import json
import pydoc
from pathlib import Path

import pytest
import torch

from instasal.errors import ModelError
from instasal.models import load_model
from instasal.models.allowed_classes import allowed_class

TORCH_NN = ("torch.nn",)
MONAI_NETWORKS = ("monai.networks",)
NNUNET_NETWORKS = ("dynamic_network_architectures.architectures",)

HOSTILE = [
    ("torch.nn.functional.torch.serialization.os.system", TORCH_NN),
    ("torch.nn.modules.module.torch.load", TORCH_NN),
    ("torch.nn.init.torch.serialization.pickle.loads", TORCH_NN),
    ("torch.nn.functional.relu", TORCH_NN),
    ("torch.nn.modules.linear.F", TORCH_NN),
    ("torch.nn.modules.module.torch.Tensor", TORCH_NN),
    ("monai.networks.nets.unet.torch.serialization.os.system", MONAI_NETWORKS),
    ("monai.networks.blocks.convolutions.torch.serialization.pickle.loads", MONAI_NETWORKS),
    ("monai.networks.nets.unet.torch.load", MONAI_NETWORKS),
    ("monai.networks.nets.unet.torch.nn.Module", MONAI_NETWORKS),
    (
        "dynamic_network_architectures.architectures.unet.torch.serialization.os.system",
        NNUNET_NETWORKS,
    ),
    ("dynamic_network_architectures.architectures.unet.torch.nn.Conv3d", NNUNET_NETWORKS),
]


@pytest.mark.parametrize(("name", "packages"), HOSTILE)
def test_names_walking_through_re_exports_are_refused(name: str, packages: tuple[str, ...]) -> None:
    located = pydoc.locate(name)
    assert located is not None, f"{name} no longer resolves; the case tests nothing"
    with pytest.raises(ModelError, match=r"^plans\.json: nonlin: "):
        allowed_class(name, packages, where="plans.json: nonlin")


@pytest.mark.parametrize(
    "name",
    ["os.system", "builtins.eval", "torch.nnx.Module", "torch.load", "torch..nn", "", "torch.nn"],
)
def test_names_outside_the_package_or_malformed_are_refused(name: str) -> None:
    with pytest.raises(ModelError):
        allowed_class(name, TORCH_NN, where="x")


@pytest.mark.parametrize("name", [None, 3, ["torch.nn.ReLU"], {"_target_": "torch.nn.ReLU"}])
def test_non_strings_are_refused(name: object) -> None:
    with pytest.raises(ModelError, match="not a dotted class name"):
        allowed_class(name, TORCH_NN, where="x")


@pytest.mark.parametrize(
    ("name", "packages"),
    [
        ("torch.nn.LeakyReLU", TORCH_NN),
        ("torch.nn.modules.conv.Conv3d", TORCH_NN),
        ("torch.nn.InstanceNorm3d", TORCH_NN),
        ("monai.networks.nets.BasicUNet", MONAI_NETWORKS),
        ("monai.networks.nets.unet.UNet", MONAI_NETWORKS),
        ("dynamic_network_architectures.architectures.unet.PlainConvUNet", NNUNET_NETWORKS),
    ],
)
def test_names_real_model_files_use_resolve_to_the_class_pydoc_finds(
    name: str, packages: tuple[str, ...]
) -> None:
    found = allowed_class(name, packages, where="x")
    assert found is pydoc.locate(name)
    assert issubclass(found, torch.nn.Module)


def test_a_module_registered_under_another_name_is_not_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.setitem(__import__("sys").modules, "torch.nn.planted", os)
    with pytest.raises(ModelError, match="does not name a class"):
        allowed_class("torch.nn.planted.system", TORCH_NN, where="x")


@pytest.mark.parametrize(
    "target",
    [name for name, packages in HOSTILE if packages == MONAI_NETWORKS]
    + ["Module", "system", "UNet.__init__"],
)
def test_bundle_targets_reaching_code_are_refused(tmp_path: Path, target: str) -> None:
    marker = tmp_path / "pwned"
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text("{}")
    network_def = {"_target_": target, "command": f"touch {marker}"}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.save({}, bundle / "models" / "model.pt")
    with pytest.raises(ModelError, match=r"inference\.json: network_def holds '_target_"):
        load_model(bundle)
    assert not marker.exists()
