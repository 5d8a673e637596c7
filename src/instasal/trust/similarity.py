"""Comparing two saliency maps of one lesion: neighbourhood, rank correlation, SSIM, peak ratio.

Used by the model-randomisation check (``docs/trust.md``): every comparison is made inside the
neighbourhood ``N = Ω ∪ {u : d(u, Ω) ≤ r}`` with distances in mm through the voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

from instasal.errors import ConfigurationError
from instasal.saliency.summaries import ring_mask
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "NEIGHBOURHOOD_MM",
    "SSIM_SIGMA_VOXELS",
    "map_similarity",
    "neighbourhood",
    "peak_ratio",
    "spearman_abs",
    "ssim",
]

NEIGHBOURHOOD_MM = 5.0
"""Radius (mm) of the neighbourhood of Ω in which maps are compared and voxels deleted."""
SSIM_SIGMA_VOXELS = 1.5
"""Standard deviation of SSIM's Gaussian window, in voxels (Wang et al. 2004)."""
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
_SSIM_TRUNCATE = 3.5


def neighbourhood(
    domain: BoolArray, spacing: Sequence[float], radius_mm: float = NEIGHBOURHOOD_MM
) -> BoolArray:
    """``Ω ∪ {u : d(u, Ω) ≤ radius_mm}``, distances between voxel centres in mm.

    Raises
    ------
    ConfigurationError
        If ``radius_mm`` is negative or ``domain`` is empty.
    """
    if not radius_mm >= 0:
        raise ConfigurationError(f"radius_mm must be >= 0, got {radius_mm}")
    domain = np.asarray(domain, dtype=bool)
    if not domain.any():
        raise ConfigurationError("domain is empty: a domain Ω needs at least one voxel")
    return domain | ring_mask(domain, spacing, (0.0, float(radius_mm)))


def _channels(saliency_map: FloatArray) -> FloatArray:
    """A map ``[X, Y, Z]`` or ``[C, X, Y, Z]`` as ``[C, X, Y, Z]`` of magnitudes (float64)."""
    values = np.abs(np.asarray(saliency_map, dtype=np.float64))
    return values[None] if values.ndim == 3 else values


def spearman_abs(first: FloatArray, second: FloatArray, region: BoolArray) -> float:
    """Spearman rank correlation of ``|first|`` and ``|second|`` over ``region`` (all channels).

    Returns NaN when either map is constant there (no ranking to correlate).
    """
    a = _channels(first)[:, region].ravel()
    b = _channels(second)[:, region].ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def _box_around(region: BoolArray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``region`` grown by ``margin`` voxels per side, inside the grid.

    With the margin at least the filter radius, SSIM at the region's voxels is the same as on the
    whole grid (the window never reaches past the box, except where the grid itself ends).
    """
    (box,) = ndimage.find_objects(region.astype(np.uint8))
    return tuple(
        slice(max(0, b.start - margin), min(n, b.stop + margin))
        for b, n in zip(box, region.shape, strict=True)
    )


def _ssim_channel(a: FloatArray, b: FloatArray, sigma: float) -> FloatArray:
    def blur(values: FloatArray) -> FloatArray:
        return np.asarray(
            ndimage.gaussian_filter(values, sigma, mode="reflect", truncate=_SSIM_TRUNCATE)
        )

    mean_a, mean_b = blur(a), blur(b)
    var_a = blur(a * a) - mean_a**2
    var_b = blur(b * b) - mean_b**2
    covariance = blur(a * b) - mean_a * mean_b
    numerator = (2 * mean_a * mean_b + _SSIM_C1) * (2 * covariance + _SSIM_C2)
    denominator = (mean_a**2 + mean_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return np.asarray(numerator / denominator)


def ssim(
    first: FloatArray,
    second: FloatArray,
    region: BoolArray,
    *,
    sigma_voxels: float = SSIM_SIGMA_VOXELS,
) -> float:
    """Structural similarity of ``|first| / max|first|`` and ``|second| / max|second|``.

    SSIM of Wang et al. (2004) with a Gaussian window of ``sigma_voxels``, data range 1,
    ``C1 = 0.01²`` and ``C2 = 0.03²``, computed per channel on the grid and averaged over the voxels
    of ``region`` and then over channels. Each map is scaled by its own largest magnitude (an
    all-zero map stays zero), so the index ignores scale: see :func:`peak_ratio` for that.
    """
    a_all, b_all = _channels(first), _channels(second)
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ConfigurationError("region is empty: SSIM needs at least one voxel to average over")
    if a_all.shape != b_all.shape:
        raise ConfigurationError(
            f"maps to compare must have one shape, got {a_all.shape} and {b_all.shape}"
        )
    crop = _box_around(np.asarray(region, dtype=bool), int(_SSIM_TRUNCATE * sigma_voxels + 0.5))
    scores = []
    for a, b in zip(a_all, b_all, strict=True):
        a_scaled = a / a.max() if a.max() > 0 else a
        b_scaled = b / b.max() if b.max() > 0 else b
        local = _ssim_channel(a_scaled[crop], b_scaled[crop], sigma_voxels)
        scores.append(float(local[region[crop]].mean()))
    return float(np.mean(scores))


def peak_ratio(candidate: FloatArray, reference: FloatArray) -> float:
    """``max |candidate| / max |reference|`` over the whole maps (NaN for an all-zero reference)."""
    top = float(np.abs(np.asarray(reference)).max())
    return float(np.abs(np.asarray(candidate)).max()) / top if top > 0 else float("nan")


def map_similarity(
    candidate: FloatArray, reference: FloatArray, region: BoolArray
) -> dict[str, float]:
    """``spearman``, ``ssim`` (both inside ``region``) and ``peak_ratio`` of two maps."""
    return {
        "spearman": spearman_abs(candidate, reference, region),
        "ssim": ssim(candidate, reference, region),
        "peak_ratio": peak_ratio(candidate, reference),
    }
