"""SmoothGrad noise (SPEC §2): seeded Gaussian draws on the whole input grid.

``σ_k = level × (max x_k − min x_k)`` per channel (``"per_channel"``) or from channel 0's range for
every channel (``"first_channel"``, what the authors' scripts did). Draws come from a seeded CPU
``torch.Generator`` (never the global RNG), one full-grid draw after another, so the same seed gives
the same noise on every device, for every context and for every domain of a subject.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from instasal.typing import NoiseRange

__all__ = ["noise_sigmas", "noisy_inputs"]


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
) -> Iterator[torch.Tensor]:
    """Yield the ``n_samples`` noisy copies ``x + ε_n`` on ``x``'s device, ``x`` not modified.

    Noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in the order of the
    samples, then moved to ``x``'s device. With ``noise_level == 0`` every copy is ``x`` itself.
    """
    sigmas = noise_sigmas(x, noise_level, noise_range)
    if not bool((sigmas != 0).any()):
        for _ in range(n_samples):
            yield x.detach().clone()
        return
    generator = torch.Generator().manual_seed(seed)
    scale = sigmas.reshape(-1, *([1] * (x.ndim - 1)))
    for _ in range(n_samples):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        yield x.detach() + noise.to(x.device) * scale
