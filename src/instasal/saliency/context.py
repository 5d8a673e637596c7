"""Which forward pass is differentiated: the whole volume or one patch around Ω (SPEC §2, Context).

A patch has the model's training patch size, is centred on Ω's bounding box, shifted to stay inside
the volume, and enlarged to a multiple of the network's size divisibility when Ω does not fit with a
margin. Where the volume is smaller than the patch along an axis, the patch spans that axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.typing import Context

__all__ = [
    "DEFAULT_PATCH_MARGIN",
    "DEFAULT_SIZE_DIVISIBILITY",
    "Window",
    "resolve_patch_size",
    "resolve_size_divisibility",
    "window_for",
]

DEFAULT_SIZE_DIVISIBILITY = 16
DEFAULT_PATCH_MARGIN = 8


@dataclass(frozen=True)
class Window:
    """A box of the input grid: ``start`` and ``size`` per spatial axis."""

    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as slices of the spatial axes."""
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size, strict=True))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """The box of ``x`` ``[C, *S]`` (a view)."""
        return x[(slice(None), *self.slices)]

    def place(self, values: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
        """``values`` ``[..., *size]`` placed in a zero tensor ``[..., *spatial_shape]``."""
        lead = tuple(values.shape[: values.ndim - len(self.size)])
        out = values.new_zeros((*lead, *spatial_shape))
        index: tuple[EllipsisType | slice, ...] = (Ellipsis, *self.slices)
        out[index] = values
        return out


def _card(model: nn.Module) -> dict[str, Any]:
    card = getattr(model, "card", None)
    return card if isinstance(card, dict) else {}


def resolve_patch_size(
    model: nn.Module, patch_size: int | Sequence[int] | None, ndim: int
) -> tuple[int, ...]:
    """The patch size: the argument, else ``model.card["patch_size"]`` (SPEC §5 model card).

    Raises
    ------
    ConfigurationError
        If neither gives a size, or a size is not a positive integer per spatial axis.
    """
    if patch_size is None:
        patch_size = _card(model).get("patch_size")
        if patch_size is None:
            raise ConfigurationError(
                'context="patch" needs patch_size: pass patch_size=(X, Y, Z) or give the model a '
                '.card dict with "patch_size"'
            )
    sizes = (patch_size,) * ndim if isinstance(patch_size, int) else tuple(patch_size)
    if len(sizes) != ndim or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ConfigurationError(
            f"patch_size must be a positive integer or {ndim} positive integers, got {patch_size!r}"
        )
    return sizes


def resolve_size_divisibility(model: nn.Module, size_divisibility: int | None) -> int:
    """The argument, else ``model.card["size_divisibility"]``, else 16."""
    value = size_divisibility
    if value is None:
        value = _card(model).get("size_divisibility", DEFAULT_SIZE_DIVISIBILITY)
    if not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"size_divisibility must be a positive integer, got {value!r}")
    return value


def _bounding_box(domain: torch.Tensor) -> list[tuple[int, int]]:
    where = torch.nonzero(domain)
    return [(int(lo), int(hi) + 1) for lo, hi in zip(where.amin(0), where.amax(0), strict=True)]


def window_for(
    domain: torch.Tensor,
    context: Context,
    *,
    patch_size: Sequence[int] | None = None,
    size_divisibility: int = DEFAULT_SIZE_DIVISIBILITY,
    margin: int = DEFAULT_PATCH_MARGIN,
) -> Window:
    """The box whose forward pass is differentiated for ``domain`` (SPEC §2, Context).

    ``"full"`` is the whole grid. ``"patch"``: per axis, the size is the patch size, or, when Ω's
    extent plus ``margin`` voxels on both sides exceeds it, that extent rounded up to a multiple of
    ``size_divisibility``; never more than the volume. The box is centred on Ω's bounding box and
    shifted to lie inside the volume.
    """
    shape = tuple(domain.shape)
    if context == "full":
        return Window(start=(0,) * len(shape), size=shape)
    if patch_size is None:
        raise ConfigurationError('context="patch" needs a patch_size')
    starts, sizes = [], []
    for (lo, hi), base, extent in zip(_bounding_box(domain), patch_size, shape, strict=True):
        needed = hi - lo + 2 * margin
        size = base if needed <= base else -(-needed // size_divisibility) * size_divisibility
        size = min(size, extent)
        start = (lo + hi) // 2 - size // 2
        starts.append(min(max(start, 0), extent - size))
        sizes.append(size)
    return Window(start=tuple(starts), size=tuple(sizes))
