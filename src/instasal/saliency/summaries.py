"""Per-lesion summary numbers derived from instance saliency maps (SPEC §2, lesion-table columns).

Pure functions over arrays: a map ``[C, X, Y, Z]`` in logit units per input-intensity unit, the
domain Ω and the grid spacing give the peak and trough of each channel with their locations, the
means inside Ω and in the 1–3 mm shell around it, and the modality reliance figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.typing import BoolArray, FloatArray

__all__ = ["RING_MM", "lesion_summary", "ring_mask", "saliency_columns"]

RING_MM: tuple[float, float] = (1.0, 3.0)


def ring_mask(
    domain: BoolArray,
    spacing: Sequence[float],
    ring_mm: tuple[float, float] = RING_MM,
) -> BoolArray:
    """Voxels outside ``domain`` whose distance (mm) to it lies in ``[ring_mm[0], ring_mm[1]]``.

    Distances are Euclidean between voxel centres, through the grid ``spacing``; the work is done
    on a crop around the domain so the cost does not grow with the volume.
    """
    inner, outer = ring_mm
    if not 0 <= inner <= outer:
        raise ConfigurationError(f"ring_mm must satisfy 0 <= inner <= outer, got {ring_mm}")
    domain = np.asarray(domain, dtype=bool)
    ring = np.zeros_like(domain)
    boxes = ndimage.find_objects(domain.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return ring
    margin = [int(np.ceil(outer / s)) + 1 for s in spacing]
    crop = tuple(
        slice(max(0, b.start - m), min(n, b.stop + m))
        for b, m, n in zip(boxes[0], margin, domain.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~domain[crop], sampling=tuple(spacing))
    ring[crop] = (distance >= inner) & (distance <= outer) & ~domain[crop]
    return ring


def _location(flat_index: int, shape: tuple[int, ...]) -> str:
    return ",".join(str(int(i)) for i in np.unravel_index(flat_index, shape))


def saliency_columns(channel_names: Sequence[str]) -> list[str]:
    """The saliency column names of the lesion table, in order, for these channels."""
    columns = []
    for name in channel_names:
        columns += [
            f"peak_{name}",
            f"peak_{name}_voxel",
            f"trough_{name}",
            f"trough_{name}_voxel",
            f"inside_mean_{name}",
            f"ring_mean_{name}",
            f"reliance_{name}",
            f"density_peak_{name}",
            f"density_inside_mean_{name}",
        ]
    return columns


def lesion_summary(
    saliency: FloatArray,
    domain: BoolArray,
    spacing: Sequence[float],
    channel_names: Sequence[str],
    *,
    ring_mm: tuple[float, float] = RING_MM,
    voxel_volume_mm3: float | None = None,
) -> dict[str, float | str]:
    """Peak, trough, inside and ring means, and reliance of each channel's map (SPEC §2).

    Parameters
    ----------
    saliency
        Instance SmoothGrad map ``[C, X, Y, Z]`` of one domain (quantitative; not rescaled).
    domain
        Ω as a boolean ``[X, Y, Z]`` array.
    spacing
        Voxel size in mm, for the ring.
    channel_names
        One name per channel; columns are ``peak_<name>`` and so on.
    ring_mm
        Inner and outer distance (mm) of the shell around Ω.
    voxel_volume_mm3
        Volume of one voxel; default: the product of ``spacing``.

    Returns
    -------
    dict
        ``peak_<c>`` (max of the map) and ``peak_<c>_voxel`` ("i,j,k"), ``trough_<c>`` (min) and
        ``trough_<c>_voxel``, ``inside_mean_<c>`` over Ω, ``ring_mean_<c>`` over the shell,
        ``reliance_<c> = peak_<c> / Σ_k |peak_k|`` (the paper's FLAIR-vs-T1w reliance, in
        [-1, 1]; NaN when every peak is 0), and the resolution-independent densities
        ``density_peak_<c>`` and ``density_inside_mean_<c>``: the value divided by the voxel
        volume (logit per intensity unit per mm³). A per-voxel value scales with the voxel's
        volume (a 1 mm voxel carries about 1/8 of a 2 mm voxel's effect on the logit); the density
        does not, so it compares scanners and resolutions.
    """
    saliency = np.asarray(saliency)
    domain = np.asarray(domain, dtype=bool)
    if saliency.ndim != 4 or saliency.shape[1:] != domain.shape:
        raise ConfigurationError(
            f"saliency must be [C, X, Y, Z] on the domain's grid {domain.shape}, "
            f"got {saliency.shape}"
        )
    if len(channel_names) != saliency.shape[0]:
        raise ConfigurationError(
            f"{saliency.shape[0]} saliency channels but channel names {tuple(channel_names)}"
        )
    if not domain.any():
        raise ConfigurationError("domain is empty")
    ring = ring_mask(domain, spacing, ring_mm)
    row: dict[str, float | str] = {}
    peaks = []
    for k, name in enumerate(channel_names):
        channel = saliency[k]
        flat = channel.ravel()
        peak_index = int(np.argmax(flat))
        trough_index = int(np.argmin(flat))
        peaks.append(float(flat[peak_index]))
        row[f"peak_{name}"] = float(flat[peak_index])
        row[f"peak_{name}_voxel"] = _location(peak_index, channel.shape)
        row[f"trough_{name}"] = float(flat[trough_index])
        row[f"trough_{name}_voxel"] = _location(trough_index, channel.shape)
        row[f"inside_mean_{name}"] = float(channel[domain].mean())
        row[f"ring_mean_{name}"] = float(channel[ring].mean()) if ring.any() else float("nan")
    total = float(np.sum(np.abs(peaks)))
    volume = float(np.prod(spacing)) if voxel_volume_mm3 is None else float(voxel_volume_mm3)
    for name, peak in zip(channel_names, peaks, strict=True):
        row[f"reliance_{name}"] = peak / total if total > 0 else float("nan")
        row[f"density_peak_{name}"] = peak / volume
        row[f"density_inside_mean_{name}"] = float(row[f"inside_mean_{name}"]) / volume
    return {column: row[column] for column in saliency_columns(channel_names)}
