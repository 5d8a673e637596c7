"""Measuring a v2 phantom against the realism specification (docs/phantoms.md §v2, Targets).

Every measure reads the generated images as a model would see them (bias and noise included);
noise, SNR and the bias field are read against the same subject's images before noise
(``generate_v2(..., keep_noise_free=True)``). ``scripts/phantom_stats.py --generator v2`` prints the
realism table from these functions; the tests check them on generated subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instasal.io import zscore_nonzero
from instasal.phantoms.anatomy import DEEP_GREY_BOX, soft_box
from instasal.phantoms.contrast_v2 import pooled_noise
from instasal.phantoms.lesions_v2 import MIN_LESION_MM3
from instasal.phantoms.subject_v2 import SubjectV2
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "CONNECTIVITY_18",
    "REALISM_TARGETS",
    "Target",
    "components",
    "lesion_contrasts",
    "local_contrast",
    "subject_measures",
]

CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class Target:
    """One row of the realism specification: the accepted range of a measure."""

    low: float
    high: float
    description: str


# Subject-level measures and their targets (docs/phantoms.md §v2, Targets; standard arm).
REALISM_TARGETS: dict[str, Target] = {
    "flair_grey_white": Target(1.08, 1.30, "FLAIR cortex / NAWM"),
    "flair_csf_white": Target(0.10, 0.35, "FLAIR ventricular CSF / NAWM"),
    "t1w_grey_white": Target(0.60, 0.82, "T1w cortex / NAWM"),
    "t1w_csf_white": Target(0.15, 0.40, "T1w ventricular CSF / NAWM"),
    "flair_snr_1mm": Target(12.0, 35.0, "FLAIR NAWM SNR of a 1 mm voxel"),
    "t1w_snr_1mm": Target(20.0, 50.0, "T1w NAWM SNR of a 1 mm voxel"),
    "noise_correlation_1mm": Target(0.2, 0.6, "noise neighbour correlation, 1 mm grid"),
    "flair_bias_ratio": Target(1.10, 1.45, "FLAIR smooth NAWM q95/q05"),
    "flair_nawm_z": Target(0.4, 3.0, "FLAIR NAWM median z under zscore_nonzero"),
    "smallest_lesion_mm3": Target(MIN_LESION_MM3, np.inf, "smallest ground-truth component"),
    "ventricles_ml": Target(10.0, 60.0, "ventricle volume"),
    "perivascular_spaces": Target(10.0, 100.0, "perivascular spaces drawn"),
}


def components(
    mask: BoolArray, voxel_mm3: float, min_mm3: float = 0.0
) -> list[tuple[tuple[slice, ...], BoolArray]]:
    """``(slices, component mask within them)`` of each 18-connected component of at least
    ``min_mm3``."""
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY_18)
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == index
        if component.sum() * voxel_mm3 >= min_mm3:
            found.append((box, component))
    return found


def local_contrast(
    image: FloatArray, normal_white: BoolArray, box: tuple, component: BoolArray, shell: int
) -> float | None:
    """Mean over the component / median of normal white matter in a shell around it, minus 1
    (None when fewer than 5 normal white-matter voxels surround it)."""
    padded = tuple(
        slice(max(s.start - shell - 1, 0), min(s.stop + shell + 1, n))
        for s, n in zip(box, image.shape, strict=True)
    )
    inner = np.zeros(image[padded].shape, dtype=bool)
    offset = tuple(s.start - p.start for s, p in zip(box, padded, strict=True))
    inner[tuple(slice(o, o + n) for o, n in zip(offset, component.shape, strict=True))] = component
    ring = ndimage.binary_dilation(inner, CONNECTIVITY_18, iterations=shell + 1)
    ring &= ~ndimage.binary_dilation(inner, CONNECTIVITY_18, iterations=1) & normal_white[padded]
    if ring.sum() < 5:
        return None
    return float(image[padded][inner].mean()) / float(np.median(image[padded][ring])) - 1.0


def _correlation_1mm(correlation: float, resolution: int) -> float:
    """The 1 mm neighbour correlation whose 2 mm pooling (:func:`pooled_noise`) gives the
    measured ``correlation`` (bisection)."""
    if resolution == 1:
        return correlation
    low, high = 1e-4, 0.7
    for _ in range(60):
        middle = 0.5 * (low + high)
        if pooled_noise(middle)[1] < correlation:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _noise_measures(
    image: FloatArray, noise_free: FloatArray, normal: BoolArray, resolution: int
) -> tuple[float, float]:
    """SNR of a 1 mm voxel and the 1 mm neighbour correlation, from the noise in ``normal``."""
    residual = image.astype(np.float64) - noise_free
    inner = ndimage.binary_erosion(normal)
    pairs = inner[:-1] & inner[1:]
    correlation = float(np.corrcoef(residual[:-1][pairs], residual[1:][pairs])[0, 1])
    correlation_1mm = _correlation_1mm(max(correlation, 1e-4), resolution)
    factor = 1.0 if resolution == 1 else pooled_noise(correlation_1mm)[0]
    sigma_1mm = float(residual[inner].std()) / factor
    return float(np.median(noise_free[inner])) / sigma_1mm, correlation_1mm


def _smooth_within(image: FloatArray, mask: BoolArray, sigma_voxels: float) -> FloatArray:
    """Gaussian smoothing of ``image`` restricted to ``mask`` (normalised convolution)."""
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma_voxels)
    total = ndimage.gaussian_filter(np.where(mask, image, 0.0).astype(np.float64), sigma_voxels)
    return np.asarray(total / np.maximum(weight, 1e-6))


def subject_measures(subject: SubjectV2) -> dict[str, float]:
    """The subject-level realism measures of :data:`REALISM_TARGETS`, and lesion counts and load.

    Needs ``subject.noise_free`` (``generate_v2(..., keep_noise_free=True)``).
    """
    if subject.noise_free is None:
        raise ValueError("subject_measures needs generate_v2(..., keep_noise_free=True)")
    anatomy = subject.anatomy
    resolution = int(anatomy.template.resolution)
    voxel_mm3 = float(resolution) ** 3
    lesion = subject.lesions.mask
    normal = (anatomy.white >= 0.9) & ~lesion & ~subject.mimic_mask & anatomy.brain_mask
    deep_grey = soft_box(anatomy.template.affine, lesion.shape, DEEP_GREY_BOX, 1.0) > 0.5
    cortex = (anatomy.grey >= 0.85) & ~deep_grey & anatomy.brain_mask & ~subject.mimic_mask
    ventricles = (anatomy.ventricles >= 0.5) & (anatomy.csf >= 0.9) & ~subject.mimic_mask
    measures: dict[str, float] = {}
    # Tissue ratios are local (each voxel over the normal white matter around it, 10 mm), so that
    # the bias field, which differs between the brain's centre and its surface, does not enter.
    for name, image in (("flair", subject.flair), ("t1w", subject.t1w)):
        white = _smooth_within(image, normal, 10.0 / resolution)
        measures[f"{name}_grey_white"] = float(np.median(image[cortex] / white[cortex]))
        measures[f"{name}_csf_white"] = float(np.median(image[ventricles] / white[ventricles]))
    snr, correlation = _noise_measures(subject.flair, subject.noise_free[0], normal, resolution)
    measures["flair_snr_1mm"] = snr
    measures["noise_correlation_1mm"] = correlation
    measures["t1w_snr_1mm"] = _noise_measures(
        subject.t1w, subject.noise_free[1], normal, resolution
    )[0]
    trend = _smooth_within(subject.noise_free[0], normal, 10.0 / resolution)[normal]
    measures["flair_bias_ratio"] = float(np.quantile(trend, 0.95) / np.quantile(trend, 0.05))
    texture = subject.flair - _smooth_within(subject.flair, normal, 3.0 / resolution)
    measures["flair_texture"] = float(texture[ndimage.binary_erosion(normal)].std()) / float(
        np.median(subject.flair[normal])
    )
    z_flair = zscore_nonzero(subject.flair[None])[0]
    measures["flair_nawm_z"] = float(np.median(z_flair[normal]))
    found = components(lesion, voxel_mm3)
    volumes = [float(c.sum()) * voxel_mm3 for _, c in found]
    measures["lesions"] = float(len(found))
    measures["lesion_load_ml"] = float(lesion.sum()) * voxel_mm3 / 1000.0
    measures["smallest_lesion_mm3"] = min(volumes, default=np.inf)
    measures["ventricles_ml"] = float((anatomy.ventricles >= 0.5).sum()) * voxel_mm3 / 1000.0
    measures["perivascular_spaces"] = float(subject.draws["perivascular_spaces"])
    measures["mimic_components"] = float(len(components(subject.mimic_mask, voxel_mm3)))
    if subject.draws["extracerebral_csf_mm"] == 0.0:
        outside = ~anatomy.brain_mask
        tissue = outside & (subject.noise_free[1] > 0)
        measures["head_tissue_share"] = float(tissue.mean())
        measures["head_bright_t1w"] = float(
            np.quantile(subject.t1w[tissue], 0.99) / np.median(subject.t1w[normal])
        )
    return measures


def lesion_contrasts(subject: SubjectV2) -> tuple[list[float], list[float], list[float]]:
    """Per ground-truth component: FLAIR and T1w local contrast (:func:`local_contrast`) and
    volume in mm³."""
    anatomy = subject.anatomy
    resolution = int(anatomy.template.resolution)
    voxel_mm3 = float(resolution) ** 3
    normal = (anatomy.white >= 0.5) & ~subject.lesions.mask & ~subject.mimic_mask
    shell = 2 if resolution == 2 else 4
    flair, t1w, volumes = [], [], []
    for box, component in components(subject.lesions.mask, voxel_mm3):
        pair = [
            local_contrast(image, normal, box, component, shell)
            for image in (subject.flair, subject.t1w)
        ]
        if pair[0] is None or pair[1] is None:
            continue
        flair.append(pair[0])
        t1w.append(pair[1])
        volumes.append(float(component.sum()) * voxel_mm3)
    return flair, t1w, volumes
