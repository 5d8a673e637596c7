"""The built-in network architectures: the paper's three networks as MONAI modules.

Every built-in maps ``[B, 2, X, Y, Z]`` (FLAIR, T1w) to ``[B, 2, X, Y, Z]`` logits (background,
lesion). A network is described by its architecture name and a JSON-friendly dictionary of
hyper-parameters (what a model card stores), so :func:`build_network` rebuilds exactly the module
that was trained.

- ``"unet"``: MONAI ``UNet`` as the paper's 3D U-Net (strided convolutions down, transposed
  convolutions up, batch norm, no residual units, so its layer names match the authors' — their
  Grad-CAM layer ``model.1.submodule.2.conv`` exists here with the same meaning).
- ``"nnunet"``: MONAI ``DynUNet`` with nnU-Net's topology rules (:func:`nnunet_topology`: pool
  every axis within a factor 2 of the finest spacing until the feature map would fall under 4
  voxels;
  3³ kernels; instance norm, leaky ReLU; filters doubling per stage up to a cap; deep supervision
  during training), as the authors ran nnU-Net.
- ``"swinunetr"``: MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast, get_args

import torch
from monai.networks.nets import DynUNet, SwinUNETR, UNet
from torch import nn

from instasal.errors import ModelError
from instasal.typing import ArchitectureName

__all__ = [
    "ARCHITECTURES",
    "ArchitectureName",
    "build_network",
    "default_gradcam_layer",
    "default_hyperparameters",
    "nnunet_topology",
    "size_divisibility",
]

ARCHITECTURES: tuple[str, ...] = get_args(ArchitectureName)


def nnunet_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    min_feature_map_size: int = 4,
    max_pools_per_axis: int = 999,
) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides per stage by nnU-Net's rules (``get_pool_and_conv_props``).

    An axis is pooled while its feature map stays at least ``2 * min_feature_map_size`` voxels and
    its current spacing is within a factor 2 of the finest one; a lone pooling axis needs
    ``3 * min_feature_map_size`` voxels. An axis gets a 3-voxel kernel once its spacing is within a
    factor 2 of the finest (1 before, for strongly anisotropic data). The first stage has stride 1.

    Returns
    -------
    kernel_sizes, strides
        One ``[kx, ky, kz]`` and one ``[sx, sy, sz]`` per stage, as ``DynUNet`` takes them.

    Examples
    --------
    >>> nnunet_topology((48, 48, 48), (2.0, 2.0, 2.0))[1]
    [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    """
    if len(patch_size) != len(spacing):
        raise ModelError(
            f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} differ in length"
        )
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [int(s) for s in patch_size]
    pools_per_axis = [0] * dim
    kernel = [1] * dim
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest_valid = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest_valid < 2]
        valid = [i for i in valid if pools_per_axis[i] < max_pools_per_axis]
        if not valid or (len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map_size):
            break
        finest = min(current_spacing)
        kernel = [
            3 if k == 3 or current_spacing[d] / finest < 2 else 1 for d, k in enumerate(kernel)
        ]
        stride = [1] * dim
        for axis in valid:
            stride[axis] = 2
            pools_per_axis[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    return kernels, strides


def default_hyperparameters(
    architecture: str,
    *,
    patch_size: Sequence[int] = (48, 48, 48),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    in_channels: int = 2,
    out_channels: int = 2,
) -> dict[str, Any]:
    """The hyper-parameters of the shipped built-ins (small enough to train on 2 CPU cores).

    ``"nnunet"`` derives its kernels and strides from ``patch_size`` and ``spacing`` with
    :func:`nnunet_topology`; the others ignore them.
    """
    name = _check_architecture(architecture)
    common: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels}
    if name == "unet":
        return common | {
            "channels": [16, 32, 64, 128, 256],
            "strides": [2, 2, 2, 2],
            "num_res_units": 0,
            "norm": "batch",
            "dropout": 0.0,
        }
    if name == "nnunet":
        kernels, strides = nnunet_topology(patch_size, spacing)
        base, cap = 8, 256
        return common | {
            "kernel_size": kernels,
            "strides": strides,
            "upsample_kernel_size": strides[1:],
            "filters": [min(base * 2**i, cap) for i in range(len(strides))],
            "norm_name": "instance",
            "deep_supervision": True,
            "deep_supr_num": max(1, min(2, len(strides) - 2)),
        }
    return common | {
        "feature_size": 12,
        "depths": [1, 1, 1, 1],
        "num_heads": [3, 6, 12, 24],
        "window_size": 4,
        "norm_name": "instance",
    }


def build_network(architecture: str, hyperparameters: Mapping[str, Any]) -> nn.Module:
    """Build the built-in ``architecture`` with ``hyperparameters`` (randomly initialised).

    The initialisation uses torch's global generator; callers that need a seeded network wrap the
    call in ``torch.random.fork_rng()`` and seed inside it (as training does), so the global stream
    is left untouched.

    Raises
    ------
    ModelError
        On an unknown architecture or hyper-parameters the MONAI constructor rejects.
    """

    name = _check_architecture(architecture)
    params = dict(hyperparameters)
    try:
        if name == "unet":
            return UNet(spatial_dims=3, **params)
        if name == "nnunet":
            return DynUNet(
                spatial_dims=3,
                act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                **params,
            )
        return SwinUNETR(spatial_dims=3, **params)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelError(
            f"cannot build {name!r} with hyper-parameters {params}: {' '.join(str(error).split())}"
        ) from error


def size_divisibility(architecture: str, hyperparameters: Mapping[str, Any]) -> list[int]:
    """The multiple every input side must be for one whole-volume forward pass, per axis."""
    name = _check_architecture(architecture)
    if name == "unet":
        factor = math.prod(int(s) for s in hyperparameters["strides"])
        return [factor] * 3
    if name == "nnunet":
        strides = torch.tensor(hyperparameters["strides"]).prod(dim=0)
        return [int(s) for s in strides.tolist()]
    return [32] * 3


def default_gradcam_layer(architecture: str, hyperparameters: Mapping[str, Any]) -> str:
    """The documented default Grad-CAM++ layer: the decoder output at half the input resolution.

    - ``unet``: ``model.1.submodule.2.conv`` — the transposed convolution of the second decoder
      level, the layer the authors used (SPEC §3); ``model.2.conv`` for a one-level U-Net.
    - ``nnunet``: ``upsamples.<n-2>`` — the second-to-last ``DynUNet`` up-block (half resolution).
    - ``swinunetr``: ``decoder2`` — the ``SwinUNETR`` decoder block at half resolution.
    """
    name = _check_architecture(architecture)
    if name == "unet":
        level = "model.1.submodule.2" if len(hyperparameters["strides"]) >= 2 else "model.2"
        residual = int(hyperparameters.get("num_res_units", 0)) > 0
        return f"{level}.0.conv" if residual else f"{level}.conv"
    if name == "nnunet":
        return f"upsamples.{len(hyperparameters['strides']) - 3}"
    return "decoder2"


def _check_architecture(architecture: str) -> ArchitectureName:
    if architecture not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {architecture!r}; "
            f"built-in architectures are {', '.join(ARCHITECTURES)}"
        )
    return cast(ArchitectureName, architecture)
