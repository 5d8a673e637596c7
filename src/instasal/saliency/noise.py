"""SmoothGrad noise (SPEC §2): seeded Gaussian draws where the network sees the input.

``σ_k = level × (max x_k − min x_k)`` per channel (``"per_channel"``) or from channel 0's range for
every channel (``"first_channel"``, what the authors' scripts did). Draws come from a seeded CPU
``torch.Generator`` (never the global RNG), one full-grid draw after another, so the same seed gives
the same noise on every device, for every context and for every domain of a subject.

Each draw is made on the network's grid (:func:`noise_grid`) and carried to the input grid by
nearest neighbour: every input voxel takes the noise of the network voxel holding its centre. Where
the network runs at the input's voxel size the two grids are one; where it runs at a coarser one
(a 1 mm subject, a 2 mm model) the voxels one network voxel averages share one draw, so the network
sees noise of σ per voxel of its own, whatever the user's voxel size. Drawn per input voxel
instead, the averaging would shrink it to σ/√8 at 1 mm and the maps of an exact 1 mm copy of a
2 mm subject would differ from the 2 mm subject's (docs/method.md, "SmoothGrad").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from instasal.saliency.windows import ModelGrid
from instasal.typing import NoiseRange

__all__ = ["noise_grid", "noise_sigmas", "noisy_inputs"]


def noise_grid(model: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    """The grid noise is drawn on for an input grid of ``shape``: the network's own where
    ``model`` runs it on another grid (:class:`instasal.saliency.deployed.ModelGrid`), else
    ``shape``."""
    if isinstance(model, ModelGrid):
        return tuple(int(n) for n in model.model_grid_shape(shape))
    return tuple(int(n) for n in shape)


def noise_sigmas(x: torch.Tensor, noise_level: float, noise_range: NoiseRange) -> torch.Tensor:
    """Per-channel noise standard deviations ``σ_k`` ``[C]`` (SPEC §2).

    Parameters
    ----------
    x
        The input ``[C, X, Y, Z]``; ranges are taken over the whole volume.
    noise_level
        The fraction of the intensity range (paper: 0.05).
    noise_range
        ``"per_channel"``: each channel's own range; ``"first_channel"``: channel 0's range for all.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    ranges = flat.amax(dim=1) - flat.amin(dim=1)
    if noise_range == "first_channel":
        ranges = ranges[:1].expand(x.shape[0])
    return (noise_level * ranges).to(x.dtype)


def noisy_inputs(
    x: torch.Tensor,
    *,
    n_samples: int,
    noise_level: float,
    noise_range: NoiseRange,
    seed: int,
    grid: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the ``n_samples`` noisy copies ``x + ε_n`` on ``x``'s device, ``x`` not modified.

    Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in the order of the
    samples, on ``grid`` (default: ``x``'s own; see :func:`noise_grid`), carried to ``x``'s grid
    by nearest neighbour (``nearest-exact``: the grid voxel holding each voxel centre) and moved
    to ``x``'s device. With ``noise_level == 0`` every copy is ``x`` itself.
    """
    sigmas = noise_sigmas(x, noise_level, noise_range)
    if not bool((sigmas != 0).any()):
        for _ in range(n_samples):
            yield x.detach().clone()
        return
    generator = torch.Generator().manual_seed(seed)
    scale = sigmas.reshape(-1, *([1] * (x.ndim - 1)))
    spatial = tuple(x.shape[1:])
    drawn = spatial if grid is None else tuple(int(n) for n in grid)
    for _ in range(n_samples):
        noise = torch.randn((x.shape[0], *drawn), generator=generator, dtype=x.dtype)
        if drawn != spatial:
            noise = F.interpolate(noise[None], size=spatial, mode="nearest-exact")[0]
        yield x.detach() + noise.to(x.device) * scale
