"""How far a network's input sides must divide, found when it is loaded (the card's
``size_divisibility``).

A U-Net that pools four times needs each input side to be a multiple of 16; given another size it
fails deep inside its decoder. Sliding-window inference and saliency pad every input at the end of
each axis up to this multiple (:func:`instasal.saliency.windows.end_padding`), so the card must
state it. Three sources, in this order:

1. a MONAI bundle's metadata: ``spatial_shape`` entries such as ``"16*n"``
   (:func:`bundle_size_divisibility`);
2. the class of a MONAI network: ``UNet`` and ``DynUNet`` the product of their strides per axis,
   ``SwinUNETR`` ``patch_size ** 5``, ``BasicUNet`` 16, ``SegResNet`` ``2 ** (stages − 1)``;
3. any other network (TorchScript, a user's module): forward passes on zeros of sides ``3·d``
   for ``d = 1, 2, 4, 8, 16, 32``; the first ``d`` whose pass keeps the input's spatial shape is
   the divisibility (side ``3·d`` is a multiple of ``d`` but of no larger power of two).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet
from torch import nn

__all__ = ["PROBED_DIVISORS", "bundle_size_divisibility", "size_divisibility_of"]

PROBED_DIVISORS = (1, 2, 4, 8, 16, 32)
"""The multiples a probe tries, smallest first."""

Divisibility = tuple[int, int, int]


def bundle_size_divisibility(spatial_shape: Any) -> Divisibility | None:
    """The multiples a bundle's ``spatial_shape`` states (``["16*n", "16*n", "16*n"]``), or
    ``None`` when it states fixed sizes or nothing."""
    if not isinstance(spatial_shape, Sequence) or len(spatial_shape) != 3:
        return None
    factors = []
    for side in spatial_shape:
        found = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(side))
        if found is None:
            return None
        factors.append(int(found[1]))
    return (factors[0], factors[1], factors[2])


def size_divisibility_of(network: nn.Module, in_channels: int) -> Divisibility | None:
    """The multiple each input side of ``network`` must be: from its MONAI class, else probed.

    ``None`` when no probed size runs (the network needs fixed sizes or fails on zeros).
    """
    known = _monai_divisibility(network)
    if known is not None:
        return known
    return _probed_divisibility(network, in_channels)


def _strides_product(strides: Sequence[Any]) -> Divisibility:
    """Per axis, the product of every stage's stride (a stride is one number or one per axis)."""
    x, y, z = 1, 1, 1
    for stride in strides:
        sx, sy, sz = [int(v) for v in stride] if isinstance(stride, Sequence) else [int(stride)] * 3
        x, y, z = x * sx, y * sy, z * sz
    return (x, y, z)


def _monai_divisibility(network: nn.Module) -> Divisibility | None:
    if isinstance(network, UNet | DynUNet):
        return _strides_product(list(network.strides))
    if isinstance(network, SwinUNETR):
        side = int(network.patch_size) ** 5
        return (side, side, side)
    if isinstance(network, BasicUNet):
        return (16, 16, 16)
    if isinstance(network, SegResNet):
        side = 2 ** (len(network.blocks_down) - 1)
        return (side, side, side)
    return None


def _probed_divisibility(network: nn.Module, in_channels: int) -> Divisibility | None:
    parameter = next(iter(network.parameters()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    for divisor in PROBED_DIVISORS:
        side = 3 * divisor
        probe = torch.zeros(1, in_channels, side, side, side, dtype=dtype, device=device)
        try:
            with torch.no_grad():
                output = network(probe)
        except Exception:  # a failed size is what the probe looks for, whatever the error type
            continue
        if isinstance(output, torch.Tensor) and tuple(output.shape[2:]) == (side, side, side):
            return (divisor, divisor, divisor)
    return None
