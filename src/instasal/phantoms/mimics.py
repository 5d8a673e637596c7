"""FLAIR hyperintensities that are not MS lesions, the confounders that make real models err.

Three kinds, all common on clinical FLAIR:

- periventricular caps and rim: thin hyperintense caps at the frontal and occipital horn tips and a
  pencil-thin lining along the ventricles (normal findings; ependymal CSF leakage);
- septal artefacts: a bright septum pellucidum / midline strip between the lateral ventricles;
- cortical and sulcal bright spots: incompletely suppressed sulcal CSF (flow, inflow) and cortical
  hyperintensities, small and bright, on the brain surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instasal.phantoms.anatomy import SubjectAnatomy, sample_trilinear
from instasal.phantoms.lesion_placement import soft_ellipsoid
from instasal.typing import BoolArray, FloatArray

__all__ = ["MIMIC_PARAMETERS", "MimicParameters", "MimicSet", "insert_mimics"]


@dataclass(frozen=True)
class MimicParameters:
    """Generation parameters of the mimics (ranges are uniform draws per subject or per spot).

    Contrasts are added FLAIR intensity in white-matter units.
    """

    cap_contrast: tuple[float, float] = (0.2, 0.5)
    rim_contrast: tuple[float, float] = (0.04, 0.12)
    cap_width_mm: tuple[float, float] = (1.5, 3.5)
    horn_fraction: float = 0.2
    septal_probability: float = 0.6
    septal_contrast: tuple[float, float] = (0.25, 0.7)
    spot_count_mean: float = 5.0
    spot_radius_mm: tuple[float, float] = (1.0, 3.0)
    spot_contrast: tuple[float, float] = (0.3, 0.9)
    spot_max_depth_mm: float = 8.0
    mask_threshold: float = 0.12


MIMIC_PARAMETERS = MimicParameters()


@dataclass(frozen=True, eq=False)
class MimicSet:
    """The FLAIR with mimics drawn in, and the mask of mimic voxels."""

    flair: FloatArray
    mask: BoolArray


def _ventricle_region(anatomy: SubjectAnatomy) -> tuple[tuple[slice, ...], BoolArray]:
    ventricles = anatomy.ventricles >= 0.5
    voxels = np.argwhere(ventricles)
    margin = int(np.ceil(8.0 / anatomy.template.resolution))
    lower = np.maximum(voxels.min(axis=0) - margin, 0)
    upper = np.minimum(voxels.max(axis=0) + margin + 1, np.array(ventricles.shape))
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    return crop, ventricles[crop]


def _caps(
    anatomy: SubjectAnatomy,
    rng: np.random.Generator,
    crop: tuple[slice, ...],
    ventricles: BoolArray,
) -> FloatArray:
    """Added FLAIR intensity of caps (horn tips) and the thin periventricular lining."""
    resolution = float(anatomy.template.resolution)
    distance = ndimage.distance_transform_edt(~ventricles, sampling=(resolution,) * 3)
    y_voxels = np.argwhere(ventricles)[:, 1]
    front, back = float(y_voxels.max()), float(y_voxels.min())
    horn = MIMIC_PARAMETERS.horn_fraction * (front - back)
    y = np.arange(ventricles.shape[1], dtype=np.float32)[None, :, None]
    horn_weight = np.maximum(
        np.clip((y - (front - horn)) / horn, 0.0, 1.0),
        np.clip(((back + horn) - y) / horn, 0.0, 1.0),
    )
    cap = rng.uniform(*MIMIC_PARAMETERS.cap_contrast)
    rim = rng.uniform(*MIMIC_PARAMETERS.rim_contrast)
    width = rng.uniform(*MIMIC_PARAMETERS.cap_width_mm)
    variation = ndimage.gaussian_filter(rng.normal(size=ventricles.shape), 2.0)
    texture = np.exp(0.25 * variation / max(float(variation.std()), 1e-6))
    # Full strength in the first voxel outside the ventricle wall, then an exponential fall-off.
    falloff = np.exp(-np.maximum(distance - resolution, 0.0) / width)
    added = (cap * horn_weight + rim) * falloff * texture
    added *= (distance > 0) * (1.0 - anatomy.csf[crop])
    return np.asarray(added, dtype=np.float32)


def _septum(
    anatomy: SubjectAnatomy,
    rng: np.random.Generator,
    crop: tuple[slice, ...],
    ventricles: BoolArray,
) -> FloatArray:
    """Added FLAIR intensity of a bright septum: tissue with ventricle on both sides along x."""
    reach = max(1, round(3.0 / anatomy.template.resolution))
    left = np.zeros_like(ventricles)
    right = np.zeros_like(ventricles)
    for shift in range(1, reach + 1):
        left[shift:] |= ventricles[:-shift]
        right[:-shift] |= ventricles[shift:]
    septum = left & right & ~ventricles & anatomy.brain_mask[crop]
    smooth = ndimage.gaussian_filter(septum.astype(np.float32), 0.6)
    return np.asarray(rng.uniform(*MIMIC_PARAMETERS.septal_contrast) * smooth, dtype=np.float32)


def _spots(
    anatomy: SubjectAnatomy, flair: FloatArray, mask: BoolArray, rng: np.random.Generator
) -> None:
    """Draw bright spots on the cortex and in sulcal CSF into ``flair`` and ``mask`` in place."""
    template = anatomy.template
    resolution = float(template.resolution)
    surface = np.argwhere(((anatomy.grey >= 0.4) | (anatomy.csf >= 0.4)) & anatomy.brain_mask)
    sample = surface[rng.choice(len(surface), size=min(len(surface), 5000), replace=False)]
    depth = sample_trilinear(
        template.distance_exterior[..., None], anatomy.to_template(sample).T.astype(np.float32)
    )[:, 0]
    shallow = sample[depth <= MIMIC_PARAMETERS.spot_max_depth_mm]
    count = int(rng.poisson(MIMIC_PARAMETERS.spot_count_mean)) if len(shallow) else 0
    for _ in range(count):
        centre = shallow[int(rng.integers(len(shallow)))]
        radius = rng.uniform(*MIMIC_PARAMETERS.spot_radius_mm)
        axes = np.asarray(radius * np.exp(0.3 * rng.normal(size=3)), dtype=np.float32)
        half = int(np.ceil((1.6 * float(axes.max()) + 2.0 * resolution) / resolution))
        lower = np.maximum(centre - half, 0)
        upper = np.minimum(centre + half + 1, np.array(flair.shape))
        crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
        shape = (int(upper[0] - lower[0]), int(upper[1] - lower[1]), int(upper[2] - lower[2]))
        direction = rng.normal(size=3)
        rotation, _ = np.linalg.qr(np.stack([direction, rng.normal(size=3), rng.normal(size=3)], 1))
        occupancy, core = soft_ellipsoid(
            shape, (centre - lower).astype(np.float32), axes, rotation, resolution, 0.2, rng
        )
        occupancy *= anatomy.brain_mask[crop]
        value = 1.0 + rng.uniform(*MIMIC_PARAMETERS.spot_contrast) * (0.7 + 0.3 * np.sqrt(core))
        flair[crop] += occupancy * np.maximum(value - flair[crop], 0.0)
        mask[crop] |= occupancy >= 0.5


def insert_mimics(rng: np.random.Generator, anatomy: SubjectAnatomy, flair: FloatArray) -> MimicSet:
    """Draw caps, rim, (maybe) a septal artefact and sulcal spots into a copy of ``flair``.

    ``flair`` is in white-matter units. The mask holds tissue voxels (CSF < 0.25) brightened by at
    least ``MIMIC_PARAMETERS.mask_threshold`` by caps, rim or septum, and the spots' own voxels,
    where the result is at least that much brighter than white matter.
    """
    flair = flair.copy()
    mask = np.zeros(flair.shape, dtype=bool)
    crop, ventricles = _ventricle_region(anatomy)
    added = _caps(anatomy, rng, crop, ventricles)
    if rng.random() < MIMIC_PARAMETERS.septal_probability:
        added = np.maximum(added, _septum(anatomy, rng, crop, ventricles))
    flair[crop] += added
    # Caps and septum count where they lie in tissue; at the ventricle wall partial volume with CSF
    # dominates what a voxel looks like.
    mask[crop] = (added >= MIMIC_PARAMETERS.mask_threshold) & (anatomy.csf[crop] < 0.25)
    _spots(anatomy, flair, mask, rng)
    # Only what ends up brighter than white matter is a hyperintensity (not a cap voxel that is
    # mostly ventricle, nor the rim of a spot that is mostly sulcal CSF).
    mask &= flair >= 1.0 + MIMIC_PARAMETERS.mask_threshold
    return MimicSet(flair=flair, mask=mask)
