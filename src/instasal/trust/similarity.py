"""Comparing two saliency maps of one lesion: rank correlations, SSIM, peak ratio, mean in Ω.

Used by the model-randomisation check (``docs/trust.md``): comparisons are made inside a region,
the neighbourhood ``N = Ω ∪ {u : d(u, Ω) ≤ r}`` (distances in mm through the voxel size) or the
whole explained window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats
from skimage.metrics import structural_similarity

from instasal.errors import ConfigurationError
from instasal.saliency.summaries import ring_mask
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "NEIGHBOURHOOD_MM",
    "SIMILARITY_MEASURES",
    "SSIM_SIGMA_VOXELS",
    "map_similarity",
    "neighbourhood",
    "omega_mean",
    "peak_ratio",
    "spearman_abs",
    "spearman_signed",
    "ssim",
]

NEIGHBOURHOOD_MM = 5.0
"""Radius (mm) of the neighbourhood of Ω in which maps are compared and voxels deleted."""
SSIM_SIGMA_VOXELS = 1.5
"""Standard deviation of SSIM's Gaussian window, in voxels (Wang et al. 2004)."""
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
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


def _as_channels(saliency_map: FloatArray) -> FloatArray:
    """A map ``[X, Y, Z]`` or ``[C, X, Y, Z]`` as ``[C, X, Y, Z]`` (float64)."""
    values = np.asarray(saliency_map, dtype=np.float64)
    return values[None] if values.ndim == 3 else values


def _channels(saliency_map: FloatArray) -> FloatArray:
    """A map ``[X, Y, Z]`` or ``[C, X, Y, Z]`` as ``[C, X, Y, Z]`` of magnitudes (float64)."""
    return np.abs(_as_channels(saliency_map))


def spearman_abs(first: FloatArray, second: FloatArray, region: BoolArray) -> float:
    """Spearman rank correlation of ``|first|`` and ``|second|`` over ``region`` (all channels).

    Returns NaN when either map is constant there (no ranking to correlate).
    """
    a = _channels(first)[:, region].ravel()
    b = _channels(second)[:, region].ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def spearman_signed(first: FloatArray, second: FloatArray, region: BoolArray) -> float:
    """Spearman rank correlation of the signed maps over ``region`` (all channels).

    Returns NaN when either map is constant there.
    """
    a = _as_channels(first)[:, region].ravel()
    b = _as_channels(second)[:, region].ravel()
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


def _ssim_local(a: FloatArray, b: FloatArray, sigma: float) -> FloatArray:
    """scikit-image's SSIM map of two 3D arrays with values in [0, 1].

    The arrays are padded by the filter radius with their mirror image first (what
    ``scipy.ndimage``'s ``"reflect"`` mode, which scikit-image's Gaussian filter uses, does at
    the grid's edge) and the padding cut off afterwards: scikit-image refuses arrays smaller than
    its window and crops the window's half-width from the edges of its mean, so without the pad a
    small domain near the grid's edge would have no SSIM.
    """
    radius = int(_SSIM_TRUNCATE * sigma + 0.5)
    padded_a = np.pad(a, radius, mode="symmetric")
    padded_b = np.pad(b, radius, mode="symmetric")
    _, local = structural_similarity(
        padded_a,
        padded_b,
        data_range=1.0,
        gaussian_weights=True,
        sigma=sigma,
        use_sample_covariance=False,
        K1=_SSIM_K1,
        K2=_SSIM_K2,
        full=True,
    )
    inner = tuple(slice(radius, radius + n) for n in a.shape)
    return np.asarray(local[inner])


def ssim(
    first: FloatArray,
    second: FloatArray,
    region: BoolArray,
    *,
    sigma_voxels: float = SSIM_SIGMA_VOXELS,
) -> float:
    """Structural similarity of ``|first| / max|first|`` and ``|second| / max|second|``.

    SSIM of Wang et al. (2004) as scikit-image's ``structural_similarity`` computes it in 3D
    (Gaussian window of ``sigma_voxels``, data range 1, ``K1 = 0.01``, ``K2 = 0.03``, population
    covariances), per channel on the grid, averaged over the voxels of ``region`` and then over
    channels. Each map is scaled by its own largest magnitude (an all-zero map stays zero), so the
    index ignores scale: see :func:`peak_ratio` for that.
    """
    a_all, b_all = _channels(first), _channels(second)
    region = np.asarray(region, dtype=bool)
    if not region.any():
        raise ConfigurationError("region is empty: SSIM needs at least one voxel to average over")
    if a_all.shape != b_all.shape:
        raise ConfigurationError(
            f"maps to compare must have one shape, got {a_all.shape} and {b_all.shape}"
        )
    crop = _box_around(region, int(_SSIM_TRUNCATE * sigma_voxels + 0.5))
    scores = []
    for a, b in zip(a_all, b_all, strict=True):
        a_scaled = a / a.max() if a.max() > 0 else a
        b_scaled = b / b.max() if b.max() > 0 else b
        local = _ssim_local(a_scaled[crop], b_scaled[crop], sigma_voxels)
        scores.append(float(local[region[crop]].mean()))
    return float(np.mean(scores))


def omega_mean(saliency_map: FloatArray, domain: BoolArray) -> float:
    """The mean of the first channel of a map (FLAIR in our models) over Ω, signed."""
    return float(_as_channels(saliency_map)[0][np.asarray(domain, dtype=bool)].mean())


def peak_ratio(candidate: FloatArray, reference: FloatArray) -> float:
    """``max |candidate| / max |reference|`` over the whole maps (NaN for an all-zero reference)."""
    top = float(np.abs(np.asarray(reference)).max())
    return float(np.abs(np.asarray(candidate)).max()) / top if top > 0 else float("nan")


SIMILARITY_MEASURES = ("spearman", "spearman_abs", "ssim")
"""What :func:`map_similarity` returns: signed and absolute rank correlation, SSIM of ``|map|``."""


def map_similarity(
    candidate: FloatArray, reference: FloatArray, region: BoolArray
) -> dict[str, float]:
    """The :data:`SIMILARITY_MEASURES` of two maps inside ``region`` (Adebayo et al. 2018)."""
    return {
        "spearman": spearman_signed(candidate, reference, region),
        "spearman_abs": spearman_abs(candidate, reference, region),
        "ssim": ssim(candidate, reference, region),
    }
