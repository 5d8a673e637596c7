"""Which forward pass is differentiated: the whole volume or one patch around Ω (SPEC §2, Context).

A patch has the model's training patch size, is centred on Ω's bounding box, shifted to stay inside
the volume, and enlarged to a multiple of the network's size divisibility when Ω does not fit with a
margin. Where the volume is smaller than the patch along an axis, the patch spans that axis. A
network with a size divisibility gets its input zero-padded at the end of each axis up to a
multiple of it (as whole-volume inference does), the output cropped back.

A network run on another grid than its input's (:class:`ModelGrid`: a 2 mm model explaining a 1 mm
subject) gets its patch placed on its own grid, as the prediction places its windows: around the
network-grid voxels Ω's logits come from, at the network's patch size, then carried to the input
grid as the input voxels whose centres lie in it. The network's in-graph resampling of that crop
then averages the voxel groups the prediction's resampling averages (exactly so where the voxel
sizes are in an integer ratio and the grid holds a whole number of network voxels); a patch placed
on the input grid instead could start between two network voxels and average other groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import ExplainedPass
from instasal.typing import Context

__all__ = [
    "DEFAULT_PATCH_MARGIN",
    "DEFAULT_SIZE_DIVISIBILITY",
    "ModelGrid",
    "Window",
    "context_windows",
    "end_padding",
    "model_grid_footprint",
    "padded_forward",
    "resolve_patch_size",
    "resolve_size_divisibility",
    "shared_windows",
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


@runtime_checkable
class ModelGrid(Protocol):
    """A network run on another grid than its input's (``instasal.prepare.ResampledNetwork``):
    the prediction resamples the input to the network's grid, slides its windows there and
    resamples the stitched logits back."""

    network: nn.Module

    def model_grid_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The network's grid for an input grid of ``shape``."""
        ...

    def to_model_grid(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S]`` resampled to the network's grid (differentiable)."""
        ...

    def from_model_grid(self, logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Logits ``[B, K, *model grid]`` resampled back to ``shape`` (differentiable, linear)."""
        ...


def model_grid_footprint(grid: ModelGrid, domain: torch.Tensor) -> torch.Tensor:
    """The network-grid voxels whose logits ``domain``'s (a mask on the input grid) are
    resampled from (boolean, on ``grid.model_grid_shape(domain.shape)``).

    The resampling back is linear with non-negative weights: those voxels are where its adjoint
    applied to the domain is positive.
    """
    shape = tuple(int(n) for n in domain.shape)
    with torch.enable_grad():
        probe = torch.zeros((1, 1, *grid.model_grid_shape(shape)), requires_grad=True)
        back = grid.from_model_grid(probe, shape)[0, 0]
        (feeding,) = torch.autograd.grad(back[domain.to(back.device)].sum(), probe)
    return feeding[0, 0] > 0


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


def resolve_size_divisibility(
    model: nn.Module, size_divisibility: int | Sequence[int] | None, ndim: int
) -> tuple[int, ...] | None:
    """Per-axis size divisibility: the argument, else ``model.card["size_divisibility"]``.

    ``None`` when neither gives one (a network accepting any size is assumed).

    Raises
    ------
    ConfigurationError
        If the value is not a positive integer or one per spatial axis.
    """
    value = size_divisibility
    if value is None:
        value = _card(model).get("size_divisibility")
        if value is None:
            return None
    factors = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(factors) != ndim or not all(isinstance(f, int) and f >= 1 for f in factors):
        raise ConfigurationError(
            f"size_divisibility must be a positive integer or {ndim} positive integers, "
            f"got {value!r}"
        )
    return factors


def end_padding(size: Sequence[int], divisibility: Sequence[int] | None) -> tuple[int, ...]:
    """Voxels to add at the end of each axis to reach a multiple of ``divisibility``."""
    if divisibility is None:
        return (0,) * len(size)
    return tuple((-n) % f for n, f in zip(size, divisibility, strict=True))


def padded_forward(model: nn.Module, batch: torch.Tensor, extra: Sequence[int]) -> torch.Tensor:
    """``model``'s output ``[B, K, *S]`` on ``batch`` ``[B, C, *S]`` zero-padded by ``extra``
    voxels at the end of each axis (see :func:`end_padding`) and cropped back to ``S``."""
    if not any(extra):
        return model(batch)
    pairs = [amount for more in reversed(extra) for amount in (0, more)]
    spatial = tuple(slice(0, n) for n in batch.shape[2:])
    return model(F.pad(batch, pairs))[(slice(None), slice(None), *spatial)]


def _bounding_box(domain: torch.Tensor) -> list[tuple[int, int]]:
    where = torch.nonzero(domain)
    return [(int(lo), int(hi) + 1) for lo, hi in zip(where.amin(0), where.amax(0), strict=True)]


def window_for(
    domain: torch.Tensor,
    context: Context,
    *,
    patch_size: Sequence[int] | None = None,
    size_divisibility: Sequence[int] | None = None,
    margin: int = DEFAULT_PATCH_MARGIN,
) -> Window:
    """The box whose forward pass is differentiated for ``domain`` (SPEC §2, Context).

    ``"full"`` is the whole grid. ``"patch"``: per axis, the size is the patch size, or, when Ω's
    extent plus ``margin`` voxels on both sides exceeds it, that extent rounded up to a multiple of
    ``size_divisibility`` (of 16 where the network's is unknown); never more than the volume. The
    box is centred on Ω's bounding box and shifted to lie inside the volume.
    """
    shape = tuple(domain.shape)
    if context == "full":
        return Window(start=(0,) * len(shape), size=shape)
    if patch_size is None:
        raise ConfigurationError('context="patch" needs a patch_size')
    multiples = size_divisibility or (DEFAULT_SIZE_DIVISIBILITY,) * len(shape)
    starts, sizes = [], []
    for (lo, hi), base, extent, multiple in zip(
        _bounding_box(domain), patch_size, shape, multiples, strict=True
    ):
        needed = hi - lo + 2 * margin
        size = base if needed <= base else -(-needed // multiple) * multiple
        size = min(size, extent)
        start = (lo + hi) // 2 - size // 2
        starts.append(min(max(start, 0), extent - size))
        sizes.append(size)
    return Window(start=tuple(starts), size=tuple(sizes))


def context_windows(
    model: nn.Module, domains: Sequence[torch.Tensor], explained: ExplainedPass
) -> tuple[list[Window], tuple[int, ...] | None]:
    """The window of every domain in ``explained``'s context (SPEC §2 Context) and the network's
    size divisibility; for a :class:`ModelGrid`, patches placed on the network's grid (see the
    module docstring)."""
    context, patch_size = explained.context, explained.patch_size
    if context == "deployed":
        raise ConfigurationError(
            'context="deployed" blends the prediction\'s windows (instasal.saliency.deployed); '
            "it has no single window per domain"
        )
    ndim = domains[0].ndim
    divisibility = resolve_size_divisibility(model, explained.size_divisibility, ndim)
    if context == "full":
        return [window_for(d, "full") for d in domains], divisibility
    if isinstance(model, ModelGrid):
        return [_on_model_grid(model, d, patch_size) for d in domains], divisibility
    sizes = resolve_patch_size(model, patch_size, ndim)
    windows = [
        window_for(d, "patch", patch_size=sizes, size_divisibility=divisibility) for d in domains
    ]
    return windows, divisibility


def _on_model_grid(
    grid: ModelGrid, domain: torch.Tensor, patch_size: int | Sequence[int] | None
) -> Window:
    """The patch of ``domain`` placed on the network's grid (its card's patch, or
    ``patch_size`` input voxels restated there) and carried to the input grid: the input voxels
    whose centres lie in it (``nearest-exact``'s correspondence, which the resampling back uses).
    """
    shape = tuple(int(n) for n in domain.shape)
    inner = tuple(int(n) for n in grid.model_grid_shape(shape))
    if patch_size is None:
        sizes = resolve_patch_size(grid.network, None, len(shape))
    else:
        sizes = grid.model_grid_shape(resolve_patch_size(grid.network, patch_size, len(shape)))
    divisibility = resolve_size_divisibility(grid.network, None, len(shape))
    on_grid = window_for(
        model_grid_footprint(grid, domain),
        "patch",
        patch_size=sizes,
        size_divisibility=divisibility,
    )
    starts, sizes_in = [], []
    for start, size, n, n_inner in zip(on_grid.start, on_grid.size, shape, inner, strict=True):
        # input voxel u lies in network voxel floor((u + ½) n_inner / n): the first u at or
        # after a boundary b is ceil(b n / n_inner − ½)
        first = -((n_inner - 2 * start * n) // (2 * n_inner))
        stop = -((n_inner - 2 * (start + size) * n) // (2 * n_inner))
        starts.append(min(max(first, 0), n))
        sizes_in.append(min(max(stop, 0), n) - starts[-1])
    return Window(start=tuple(starts), size=tuple(sizes_in))


def shared_windows(windows: Sequence[Window]) -> dict[Window, list[int]]:
    """Each distinct window and the indices of the domains that have it, in first-seen order:
    one forward pass serves all domains of a window.

    >>> a, b = Window((0, 0, 0), (4, 4, 4)), Window((2, 0, 0), (4, 4, 4))
    >>> shared_windows([a, b, a]) == {a: [0, 2], b: [1]}
    True
    """
    groups: dict[Window, list[int]] = {}
    for index, window in enumerate(windows):
        groups.setdefault(window, []).append(index)
    return groups
