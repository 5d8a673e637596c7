"""v2 mimics added to v1's (caps, rim, septum, sulcal spots): the choroid plexus in the atria of the
lateral ventricles and CSF flow artefacts in the fourth ventricle and basal cisterns (Bakshi et al.,
AJNR 2000). Both are FLAIR-bright and never ground truth. Hippocampal FLAIR brightness is part of
the tissue contrast (:mod:`instasal.phantoms.contrast_v2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instasal.phantoms.anatomy import SubjectAnatomy
from instasal.phantoms.lesion_placement import soft_ellipsoid
from instasal.typing import BoolArray, FloatArray, IntArray

__all__ = ["MIMIC_PARAMETERS_V2", "MimicParametersV2", "insert_mimics_v2"]


@dataclass(frozen=True)
class MimicParametersV2:
    """Generation parameters of the v2 mimics (uniform draws per subject or per blob).

    Positions are MNI mm; contrasts are FLAIR levels in white-matter units.
    """

    choroid_targets: tuple[tuple[float, float, float], ...] = (
        (-27.0, -40.0, 12.0),
        (27.0, -40.0, 12.0),
    )
    choroid_radius_mm: tuple[float, float] = (3.0, 5.5)
    choroid_flair: tuple[float, float] = (1.05, 1.45)
    choroid_t1w: tuple[float, float] = (0.55, 0.8)
    flow_probability: float = 0.5
    flow_targets: tuple[tuple[float, float, float], ...] = (
        (0.0, -48.0, -30.0),
        (0.0, -20.0, -28.0),
        (0.0, -8.0, -12.0),
    )
    flow_count: tuple[int, int] = (1, 3)
    flow_radius_mm: tuple[float, float] = (2.0, 4.5)
    flow_flair: tuple[float, float] = (0.9, 1.6)
    mask_threshold: float = 0.12


MIMIC_PARAMETERS_V2 = MimicParametersV2()


def _nearest_voxel(
    anatomy: SubjectAnatomy, candidates: IntArray, target_mm: tuple[float, float, float]
) -> IntArray | None:
    """The candidate subject voxel whose template position is nearest to an MNI point."""
    if len(candidates) == 0:
        return None
    template = anatomy.template
    world = template.voxel_to_world(anatomy.to_template(candidates))
    return np.asarray(candidates[int(np.argmin(np.sum((world - target_mm) ** 2, axis=1)))])


def _blob(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    centre: IntArray,
    radius_mm: float,
    within: BoolArray,
) -> tuple[tuple[slice, ...], FloatArray]:
    """Occupancy of a rough ellipsoidal blob around ``centre``, kept inside ``within``."""
    resolution = float(anatomy.template.resolution)
    axes = np.asarray(radius_mm * np.exp(0.25 * rng.normal(size=3)), dtype=np.float32)
    half = int(np.ceil((1.6 * float(axes.max()) + 2.0 * resolution) / resolution))
    lower = np.maximum(centre - half, 0)
    upper = np.minimum(centre + half + 1, np.array(within.shape))
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    shape = (int(upper[0] - lower[0]), int(upper[1] - lower[1]), int(upper[2] - lower[2]))
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    occupancy, _ = soft_ellipsoid(
        shape, (centre - lower).astype(np.float32), axes, rotation, resolution, 0.3, rng
    )
    return crop, occupancy * within[crop]


def insert_mimics_v2(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    flair: FloatArray,
    t1w: FloatArray,
    mask: BoolArray,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Draw choroid plexus (both atria) and, in some subjects, CSF flow artefacts into copies of
    ``flair``, ``t1w`` (white-matter units) and the mimic ``mask``.

    The mask gains the voxels a blob fills by at least half that end up at least
    ``mask_threshold`` brighter than white matter on FLAIR.
    """
    parameters = MIMIC_PARAMETERS_V2
    flair, t1w, mask = flair.copy(), t1w.copy(), mask.copy()
    ventricles = anatomy.ventricles >= 0.5
    fluid = (anatomy.csf >= 0.6) & anatomy.brain_mask & ~ventricles
    ventricle_voxels = np.argwhere(ventricles)
    fluid_voxels = np.argwhere(fluid)
    blobs: list[tuple[IntArray | None, float, float, float | None, BoolArray]] = []
    for target in parameters.choroid_targets:
        blobs.append(
            (
                _nearest_voxel(anatomy, ventricle_voxels, target),
                float(rng.uniform(*parameters.choroid_radius_mm)),
                float(rng.uniform(*parameters.choroid_flair)),
                float(rng.uniform(*parameters.choroid_t1w)),
                ventricles,
            )
        )
    if rng.random() < parameters.flow_probability:
        low, high = parameters.flow_count
        for _ in range(int(rng.integers(low, high + 1))):
            target = parameters.flow_targets[int(rng.integers(len(parameters.flow_targets)))]
            jitter = tuple(float(value) for value in np.asarray(target) + rng.normal(0.0, 3.0, 3))
            blobs.append(
                (
                    _nearest_voxel(anatomy, fluid_voxels, (jitter[0], jitter[1], jitter[2])),
                    float(rng.uniform(*parameters.flow_radius_mm)),
                    float(rng.uniform(*parameters.flow_flair)),
                    None,
                    fluid | ventricles,
                )
            )
    for centre, radius, flair_level, t1w_level, within in blobs:
        if centre is None:
            continue
        crop, occupancy = _blob(rng, anatomy, centre, radius, within)
        flair[crop] += occupancy * np.maximum(flair_level - flair[crop], 0.0)
        if t1w_level is not None:
            t1w[crop] += occupancy * (t1w_level - t1w[crop])
        mask[crop] |= (occupancy >= 0.5) & (flair[crop] >= 1.0 + parameters.mask_threshold)
    return flair, t1w, mask
