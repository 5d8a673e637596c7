"""v2 tissue contrasts and acquisition (docs/phantoms.md §v2): tissue levels over their real ranges,
two-scale white-matter texture, dirty-appearing white matter, perivascular spaces, hippocampal
FLAIR brightness, the non-brain tissue of the head arm, a bias field and spatially correlated
Rician noise at a field strength's SNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instasal.phantoms.anatomy import (
    DEEP_GREY_BOX,
    SubjectAnatomy,
    distance_near_brain,
    smooth_field,
    soft_box,
)
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "ACQUISITION_RANGES_V2",
    "HIPPOCAMPUS_BOX",
    "TISSUE_RANGES_V2",
    "AcquisitionV2",
    "add_correlated_rician_noise",
    "draw_acquisition",
    "head_images",
    "noise_on_grid",
    "pooled_noise",
    "synthesise_tissue",
]

# Tissue intensities relative to white matter (uniform draws per subject), docs/phantoms.md §v2.
TISSUE_RANGES_V2: dict[str, tuple[float, float]] = {
    "flair_grey": (1.16, 1.33),
    "flair_csf": (0.08, 0.22),
    "t1w_grey": (0.64, 0.77),
    "t1w_csf": (0.16, 0.32),
    "t1w_deep_grey": (0.8, 0.9),
    "flair_scale": (300.0, 700.0),
    "t1w_scale": (600.0, 1400.0),
}
# Acquisition per field strength: white-matter SNR of a 1 mm voxel, bias amplitude (log scale of a
# unit-sd smooth field: q95/q05 = exp(3.29 a)), and the correlation of neighbouring 1 mm voxels'
# noise.
ACQUISITION_RANGES_V2: dict[str, dict[str, tuple[float, float]]] = {
    "1.5T": {
        "flair_snr": (13.0, 22.0),
        "t1w_snr": (21.0, 32.0),
        "bias": (0.06, 0.1),
        "noise_correlation": (0.23, 0.57),
    },
    "3T": {
        "flair_snr": (20.0, 32.0),
        "t1w_snr": (30.0, 45.0),
        "bias": (0.09, 0.14),
        "noise_correlation": (0.23, 0.57),
    },
}
BIAS_SPACING_MM_V2 = 70.0
DAWM_PROBABILITY = 0.45
# Hippocampi (MNI mm): normally mildly hyperintense on FLAIR (Hirai et al., Radiology 2000).
HIPPOCAMPUS_BOX = ((-36.0, 36.0), (-42.0, -8.0), (-24.0, -4.0))
_HIPPOCAMPUS_MIDLINE_GAP_MM = 18.0


@dataclass(frozen=True)
class AcquisitionV2:
    """One v2 subject's tissue levels and acquisition (intensities relative to white matter)."""

    field_strength: str
    flair_grey: float
    flair_csf: float
    t1w_grey: float
    t1w_csf: float
    t1w_deep_grey: float
    flair_scale: float
    t1w_scale: float
    flair_snr: float
    t1w_snr: float
    flair_bias: float
    t1w_bias: float
    noise_correlation: float
    dawm_flair: float
    hippocampus_flair: float


def draw_acquisition(rng: np.random.Generator) -> AcquisitionV2:
    """Draw field strength (1.5 or 3 T, even odds), tissue levels and acquisition of one subject."""
    field = "3T" if rng.random() < 0.5 else "1.5T"
    tissue = {name: float(rng.uniform(*bounds)) for name, bounds in TISSUE_RANGES_V2.items()}
    ranges = ACQUISITION_RANGES_V2[field]
    dawm = float(rng.uniform(0.05, 0.15)) if rng.random() < DAWM_PROBABILITY else 0.0
    return AcquisitionV2(
        field_strength=field,
        **tissue,
        flair_snr=float(rng.uniform(*ranges["flair_snr"])),
        t1w_snr=float(rng.uniform(*ranges["t1w_snr"])),
        flair_bias=float(rng.uniform(*ranges["bias"])),
        t1w_bias=float(rng.uniform(*ranges["bias"])),
        noise_correlation=float(rng.uniform(*ranges["noise_correlation"])),
        dawm_flair=dawm,
        hippocampus_flair=float(rng.uniform(0.05, 0.15)),
    )


def _texture(rng: np.random.Generator, anatomy: SubjectAnatomy) -> FloatArray:
    """Two-scale white-matter texture (fibre bundles ~6 mm, finer ~3 mm), unit-free."""
    resolution = float(anatomy.template.resolution)
    coarse = smooth_field(rng, anatomy.t1.shape, resolution, 6.0)
    fine = smooth_field(rng, anatomy.t1.shape, resolution, 3.0)
    return np.asarray(0.025 * coarse + 0.015 * fine, dtype=np.float32)


def _hippocampi(anatomy: SubjectAnatomy) -> FloatArray:
    """Weight (0–1) of the hippocampal region: a soft box on each side of the midline (it brightens
    the grey matter there)."""
    template = anatomy.template
    box = soft_box(template.affine, anatomy.t1.shape, HIPPOCAMPUS_BOX, 2.0)
    x_mm = template.affine[0, 0] * np.arange(anatomy.t1.shape[0]) + template.affine[0, 3]
    lateral = (np.abs(x_mm) >= _HIPPOCAMPUS_MIDLINE_GAP_MM).astype(np.float32)[:, None, None]
    return np.asarray(box * lateral, dtype=np.float32)


def _dirty_white_matter(
    rng: np.random.Generator, anatomy: SubjectAnatomy, amplitude: float
) -> FloatArray:
    """Added FLAIR (white-matter units) of dirty-appearing white matter: ill-defined and patchy,
    strongest next to the ventricles (Seewann et al., Arch Neurol 2009); 0 when ``amplitude`` is."""
    if amplitude <= 0:
        return np.zeros(anatomy.t1.shape, dtype=np.float32)
    resolution = float(anatomy.template.resolution)
    distance = distance_near_brain(anatomy.ventricles >= 0.5, anatomy.brain_mask, 0.0, resolution)
    patches = np.clip(1.0 + 0.5 * smooth_field(rng, anatomy.t1.shape, resolution, 10.0), 0.0, None)
    return np.asarray(amplitude * np.exp(-distance / 8.0) * patches, dtype=np.float32)


def _perivascular_spaces(
    rng: np.random.Generator, anatomy: SubjectAnatomy
) -> tuple[FloatArray, int]:
    """Occupancy (0–1) of perivascular spaces: thin tubes, roughly vertical, in the basal ganglia
    and the centrum semiovale (Wardlaw et al., Lancet Neurol 2013), and how many were drawn."""
    template = anatomy.template
    resolution = float(template.resolution)
    shape = anatomy.t1.shape
    world_z = template.affine[2, 2] * np.arange(shape[2]) + template.affine[2, 3]
    deep = soft_box(template.affine, shape, DEEP_GREY_BOX, 1.0) > 0.5
    semiovale = (anatomy.white >= 0.8) & ((world_z >= 18.0) & (world_z <= 45.0))[None, None, :]
    sites = [np.argwhere(deep & anatomy.brain_mask & (anatomy.csf < 0.3)), np.argwhere(semiovale)]
    occupancy = np.zeros(shape, dtype=np.float32)
    count = int(rng.poisson(35.0))
    for _ in range(count):
        candidates = sites[int(rng.random() < 0.5)]
        if len(candidates) == 0:
            continue
        centre = candidates[int(rng.integers(len(candidates)))].astype(np.float32)
        direction = np.array([0.0, 0.0, 1.0]) + 0.35 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        half_length = float(rng.uniform(1.5, 7.5)) / resolution
        radius = float(rng.uniform(0.5, 1.5)) / resolution
        reach = int(np.ceil(half_length + radius + 1))
        lower = np.maximum(centre.astype(int) - reach, 0)
        upper = np.minimum(centre.astype(int) + reach + 1, np.array(shape))
        crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
        points = np.indices(tuple(int(n) for n in upper - lower), dtype=np.float32)
        offsets = points + lower.reshape(3, 1, 1, 1) - centre.reshape(3, 1, 1, 1)
        along = np.clip(np.tensordot(direction, offsets, axes=1), -half_length, half_length)
        distance = np.linalg.norm(offsets - along * direction.reshape(3, 1, 1, 1), axis=0)
        # A tube thinner than a voxel fills at most its cross-section's share of the voxel.
        tube = np.clip(radius - distance + 0.5, 0.0, 1.0) * min(1.0, np.pi * radius**2)
        occupancy[crop] = np.maximum(occupancy[crop], tube)
    return occupancy * anatomy.brain_mask, count


def synthesise_tissue(
    anatomy: SubjectAnatomy, acquisition: AcquisitionV2, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, int]:
    """Noise-free FLAIR and T1w in white-matter units, and the number of perivascular spaces.

    Both are mixed from the partial-volume tissue maps (so the T1w tissue contrast is controlled,
    not the template's), with texture, deep grey nuclei (dimmer on FLAIR, brighter on T1w than
    cortex), hippocampal FLAIR brightness, dirty-appearing white matter around the ventricles
    (FLAIR brighter, T1w slightly darker; not ground truth) and perivascular spaces (CSF).
    """
    texture = _texture(rng, anatomy)
    deep = soft_box(anatomy.template.affine, anatomy.t1.shape, DEEP_GREY_BOX, 4.0)
    flair_grey = acquisition.flair_grey - 0.55 * (acquisition.flair_grey - 1.0) * deep
    flair_grey = flair_grey + acquisition.hippocampus_flair * _hippocampi(anatomy)
    t1w_grey = acquisition.t1w_grey + (acquisition.t1w_deep_grey - acquisition.t1w_grey) * deep
    dawm = _dirty_white_matter(rng, anatomy, acquisition.dawm_flair)
    white_flair = (1.0 + texture + dawm) * anatomy.white
    white_t1w = (1.0 + 0.6 * texture - 0.3 * dawm) * anatomy.white
    flair = white_flair + flair_grey * anatomy.grey + acquisition.flair_csf * anatomy.csf
    t1w = white_t1w + t1w_grey * anatomy.grey + acquisition.t1w_csf * anatomy.csf
    spaces, count = _perivascular_spaces(rng, anatomy)
    flair = flair + spaces * (acquisition.flair_csf - flair)
    t1w = t1w + spaces * (acquisition.t1w_csf - t1w)
    return flair.astype(np.float32), t1w.astype(np.float32), count


def head_images(
    head: FloatArray,
    brain: FloatArray,
    flair: FloatArray,
    t1w: FloatArray,
    acquisition: AcquisitionV2,
) -> tuple[FloatArray, FloatArray]:
    """Put the brain images into the head: non-brain tissue from the Colin27 T1 (WM ≈ 0.5).

    T1w outside the brain is the head's own contrast. FLAIR outside the brain is a monotone map of
    it: air and bone dark, CSF and vitreous suppressed (T1w ≈ 0.2–0.35 × WM → ≈ 0.12), muscle
    intermediate, fat and marrow bright (an approximation: FLAIR of non-brain tissue follows its
    T1 for fat, water and bone, not exactly for muscle).
    """
    relative = head / 0.5
    t1w_outside = relative
    flair_outside = np.interp(relative, [0.0, 0.35, 0.65, 1.0, 1.6], [0.0, 0.12, 0.6, 1.1, 1.35])
    flair_outside = flair_outside * (1.0 + 0.3 * (acquisition.flair_grey - 1.18))
    weight = np.clip(brain, 0.0, 1.0)
    return (
        (weight * flair + (1.0 - weight) * flair_outside).astype(np.float32),
        (weight * t1w + (1.0 - weight) * t1w_outside).astype(np.float32),
    )


def _tap(correlation: float) -> float:
    """Side weight ``a`` of the kernel ``(a, 1, a)`` whose output has this neighbour correlation
    (``2a / (1 + 2a²)``; at most 1/√2)."""
    return float((1.0 - np.sqrt(1.0 - 2.0 * correlation**2)) / (2.0 * correlation))


def _autocorrelation(correlation: float, lag: np.ndarray) -> np.ndarray:
    """Autocorrelation at integer ``lag`` of white noise filtered by ``(a, 1, a)`` along an axis."""
    a = _tap(correlation)
    values = np.array([1.0, correlation, a * a / (1.0 + 2.0 * a * a)])
    lag = np.abs(lag)
    return np.where(lag <= 2, values[np.minimum(lag, 2)], 0.0)


def pooled_noise(correlation_1mm: float) -> tuple[float, float]:
    """sd factor and neighbour correlation of 1 mm noise with neighbour correlation
    ``correlation_1mm`` (per axis, the ``(a, 1, a)`` filter) averaged over 2 mm voxels with
    weights (¼, ½, ¼) per axis (exact for that model: correlated noise averages down less than
    white noise would)."""
    weights = np.array([0.25, 0.5, 0.25])
    offsets = np.arange(-1, 2)

    def covariance(shift: int) -> float:
        lag = shift + offsets[None, :] - offsets[:, None]
        return float(np.sum(np.outer(weights, weights) * _autocorrelation(correlation_1mm, lag)))

    return covariance(0) ** 1.5, covariance(2) / covariance(0)


def noise_on_grid(
    sigma_1mm: float, correlation_1mm: float, resolution: float
) -> tuple[float, float]:
    """Per-voxel sd and neighbour correlation, on a grid of ``resolution`` mm, of the noise of a
    1 mm acquisition (:func:`pooled_noise` at 2 mm)."""
    if resolution == 1:
        return sigma_1mm, correlation_1mm
    factor, correlation = pooled_noise(correlation_1mm)
    return sigma_1mm * factor, correlation


def add_correlated_rician_noise(
    image: FloatArray,
    mask: BoolArray,
    snr: float,
    bias_amplitude: float,
    correlation_1mm: float,
    rng: np.random.Generator,
    resolution: float,
) -> tuple[FloatArray, FloatArray]:
    """Bias field, then the magnitude of complex, spatially correlated Gaussian noise.

    ``snr`` is white matter over the noise sd of a 1 mm voxel; the image is in white-matter units.
    Noise is drawn over the bounding box of ``mask``; both results are 0 outside ``mask``.

    Returns
    -------
    noisy, biased
        The acquired image, and the same before noise (bias applied).
    """
    bias = np.exp(bias_amplitude * smooth_field(rng, image.shape, resolution, BIAS_SPACING_MM_V2))
    sigma, correlation = noise_on_grid(1.0 / snr, correlation_1mm, resolution)
    voxels = np.argwhere(mask)
    lower, upper = voxels.min(axis=0), voxels.max(axis=0) + 1
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    side = _tap(correlation)
    kernel = np.array([side, 1.0, side]) / np.sqrt(1.0 + 2.0 * side * side)
    parts = []
    for _ in range(2):
        noise = rng.standard_normal(tuple(int(n) for n in upper - lower), dtype=np.float32)
        for axis in range(3):
            noise = ndimage.correlate1d(noise, kernel, axis=axis, mode="wrap")
        parts.append(noise * np.float32(sigma))
    signal = (image * bias)[box]
    magnitude = np.sqrt((signal + parts[0]) ** 2 + parts[1] ** 2)
    out = np.zeros(image.shape, dtype=np.float32)
    out[box] = np.where(mask[box], magnitude, 0.0)
    return out, np.where(mask, image * bias, 0.0).astype(np.float32)
