"""v2 lesions (docs/phantoms.md §v2): centres drawn from SAMSEG's MS lesion prior, ovoid, lobulated
and irregular shapes with partial-volume borders, a 24 mm³ minimum, and T1w contrast over its real
range (iso-intense, mildly hypointense, black holes), or the swapped-contrast control arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
from scipy import ndimage

from instasal.phantoms.anatomy import (
    DEEP_GREY_BOX,
    SubjectAnatomy,
    distance_near_brain,
    sample_trilinear,
    soft_box,
)
from instasal.phantoms.lesion_placement import (
    REGION_LABELS,
    Lesion,
    LesionCanvas,
    LesionSet,
    ventricle_gradients,
)
from instasal.typing import BoolArray, ContrastArm, FloatArray, IntArray, LesionRegion

__all__ = [
    "LESION_PARAMETERS_V2",
    "MIN_LESION_MM3",
    "LesionParametersV2",
    "draw_lesion_count_v2",
    "insert_lesions_v2",
    "lesion_landmarks",
    "lesion_occupancy",
]

ShapeKind: TypeAlias = Literal["ovoid", "lobulated", "irregular"]
# The smallest lesion ground truth holds at either grid (docs/phantoms.md §v2, minimum lesion size).
MIN_LESION_MM3 = 24.0
_CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionParametersV2:
    """Generation parameters of v2 lesions (ranges are uniform draws per lesion).

    Contrasts are peak intensities relative to white matter, minus 1 (FLAIR) or 1 minus them
    (T1w darkening); the measured lesion means are lower (core profile, partial volume).
    ``infratentorial_share`` of the centres are drawn below the tentorium and
    ``periventricular_share`` within the region atlas's periventricular band (≤ 4 mm from the
    ventricles), uniformly; the rest follow SAMSEG's prior. Drawn from the prior alone, lesions
    came out 0 % infratentorial (0.6 % of its white-matter mass lies there, against roughly 10 % of
    lesions in MS cohorts) and 9 % abutting the ventricles (its 20-subject ventricles are larger
    than MNI152's and an affine does not remove the difference in shape; docs/phantoms.md §v2).
    """

    count_mean: float = 22.0
    count_dispersion: float = 1.3
    count_max: int = 120
    volume_median_mm3: float = 70.0
    volume_log_sd: float = 1.25
    volume_range_mm3: tuple[float, float] = (30.0, 20000.0)
    shape_shares: tuple[tuple[ShapeKind, float], ...] = (
        ("ovoid", 0.35),
        ("lobulated", 0.4),
        ("irregular", 0.25),
    )
    lobes: tuple[int, int] = (2, 5)
    periventricular_elongation: tuple[float, float] = (1.5, 2.5)
    faint_share: float = 0.25
    faint_flair: tuple[float, float] = (0.1, 0.25)
    flair: tuple[float, float] = (0.25, 0.9)
    t1w_iso_share: float = 0.2
    t1w_iso: tuple[float, float] = (0.0, 0.02)
    t1w_mild: tuple[float, float] = (0.06, 0.35)
    black_hole_share: tuple[float, float] = (0.1, 0.4)
    black_hole_reference_mm3: float = 2000.0
    t1w_black_hole: tuple[float, float] = (0.35, 0.65)
    infratentorial_share: float = 0.08
    periventricular_share: float = 0.3
    swapped_flair: tuple[float, float] = (0.08, 0.25)
    swapped_t1w: tuple[float, float] = (0.4, 0.75)


LESION_PARAMETERS_V2 = LesionParametersV2()


def draw_lesion_count_v2(rng: np.random.Generator) -> int:
    """Lesions to place: negative binomial (mean 22, dispersion 1.3), at most 120."""
    parameters = LESION_PARAMETERS_V2
    dispersion = parameters.count_dispersion
    count = rng.negative_binomial(dispersion, dispersion / (dispersion + parameters.count_mean))
    return int(min(count, parameters.count_max))


def _lobes(
    rng: np.random.Generator, kind: ShapeKind, axes: FloatArray, rotation: FloatArray
) -> list[tuple[FloatArray, FloatArray, FloatArray]]:
    """(centre offset mm, semi-axes mm, rotation) of each lobe; the first is the main one."""
    lobes = [(np.zeros(3, dtype=np.float32), axes, rotation)]
    if kind != "lobulated":
        return lobes
    low, high = LESION_PARAMETERS_V2.lobes
    for _ in range(int(rng.integers(low, high + 1)) - 1):
        direction = rng.normal(size=3)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        offset = direction * float(axes.max()) * rng.uniform(0.5, 1.0)
        size = axes * rng.uniform(0.35, 0.75) * np.exp(0.2 * rng.normal(size=3))
        turn, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        lobes.append((offset.astype(np.float32), size.astype(np.float32), turn))
    return lobes


def lesion_occupancy(
    shape: tuple[int, int, int],
    centre: FloatArray,
    lobes: list[tuple[FloatArray, FloatArray, FloatArray]],
    resolution: float,
    roughness: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Partial-volume occupancy and core profile of a union of roughened ellipsoids in a crop.

    Each lobe's normalised radius is 1 on its surface; the union takes the smallest; smooth noise
    (``roughness``: amplitude, at a third of the main lobe's smallest axis) makes the surface
    irregular. Occupancy falls linearly across one voxel at the surface (partial volume).
    """
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    offsets_mm = (grid - centre) * resolution
    radius = np.full(len(grid), np.inf, dtype=np.float32)
    for offset, axes, rotation in lobes:
        local = (offsets_mm - offset) @ rotation
        radius = np.minimum(radius, np.sqrt(np.sum((local / axes) ** 2, axis=1)))
    field = radius.reshape(shape)
    smallest = float(lobes[0][1].min())
    if roughness > 0:
        noise = ndimage.gaussian_filter(
            rng.normal(size=shape), sigma=max(0.7, 0.33 * smallest / resolution)
        )
        field = field * np.exp(-roughness * noise / max(float(noise.std()), 1e-6))
    surface_mm = (field - 1.0) * smallest
    occupancy = np.clip(0.5 - surface_mm / resolution, 0.0, 1.0)
    core = np.clip(1.0 - field, 0.0, 1.0)
    return occupancy.astype(np.float32), core.astype(np.float32)


def _contrast(
    rng: np.random.Generator, volume_mm3: float, arm: ContrastArm
) -> tuple[float, float, bool]:
    """FLAIR peak, T1w peak (≤ 0) and faintness. The same draws serve both arms (so a swapped
    subject differs from the standard one of its seed in lesion contrasts only)."""
    parameters = LESION_PARAMETERS_V2
    faint_draw, flair_draw, class_draw, t1w_draw = rng.random(4)
    if arm == "swapped":
        flair = parameters.swapped_flair[0] + flair_draw * np.ptp(parameters.swapped_flair)
        t1w = parameters.swapped_t1w[0] + t1w_draw * np.ptp(parameters.swapped_t1w)
        return float(flair), float(-t1w), True
    faint = bool(faint_draw < parameters.faint_share)
    flair_range = parameters.faint_flair if faint else parameters.flair
    flair = flair_range[0] + flair_draw * (flair_range[1] - flair_range[0])
    # Black holes are more common in larger lesions: the share grows with log volume.
    growth = np.log(volume_mm3 / MIN_LESION_MM3) / np.log(
        parameters.black_hole_reference_mm3 / MIN_LESION_MM3
    )
    low, high = parameters.black_hole_share
    black_hole_share = low + (high - low) * float(np.clip(growth, 0.0, 1.0))
    if class_draw < parameters.t1w_iso_share:
        t1w_range = parameters.t1w_iso
    elif class_draw < parameters.t1w_iso_share + black_hole_share:
        t1w_range = parameters.t1w_black_hole
    else:
        t1w_range = parameters.t1w_mild
    t1w = t1w_range[0] + t1w_draw * (t1w_range[1] - t1w_range[0])
    return float(flair), float(-t1w), faint


def _shape(
    rng: np.random.Generator, volume: float, elongate: bool, direction: FloatArray
) -> tuple[list[tuple[FloatArray, FloatArray, FloatArray]], float]:
    """Lobes and roughness of one lesion of target ``volume``; ``elongate``: along
    ``direction`` (Dawson's fingers)."""
    names = [name for name, _ in LESION_PARAMETERS_V2.shape_shares]
    shares = np.array([share for _, share in LESION_PARAMETERS_V2.shape_shares])
    kind = names[int(rng.choice(len(names), p=shares / shares.sum()))]
    ratios = np.exp(0.25 * rng.normal(size=3))
    if elongate:
        ratios[0] *= rng.uniform(*LESION_PARAMETERS_V2.periventricular_elongation)
    ratios /= np.prod(ratios) ** (1.0 / 3.0)
    axes = ((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0) * ratios).astype(np.float32)
    helper = rng.normal(size=3)
    helper -= helper @ direction * direction
    second = helper / max(float(np.linalg.norm(helper)), 1e-6)
    rotation = np.stack([direction, second, np.cross(direction, second)], axis=1)
    roughness = float(rng.uniform(0.35, 0.6) if kind == "irregular" else rng.uniform(0.05, 0.25))
    return _lobes(rng, kind, axes, rotation), roughness


def _draw(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    canvas: LesionCanvas,
    centre: IntArray,
    elongate: bool,
    direction: FloatArray,
    arm: ContrastArm,
    lesion_id: int,
    centre_label: int,
    landmarks: tuple[BoolArray, BoolArray],
) -> Lesion | None:
    """Draw one lesion into ``canvas``; None (nothing drawn) when its mask is under 24 mm³."""
    resolution = float(anatomy.template.resolution)
    low, high = LESION_PARAMETERS_V2.volume_range_mm3
    volume = float(
        np.clip(
            LESION_PARAMETERS_V2.volume_median_mm3
            * np.exp(LESION_PARAMETERS_V2.volume_log_sd * rng.normal()),
            low,
            high,
        )
    )
    lobes, roughness = _shape(rng, volume, elongate, direction)
    extent = max(float(np.linalg.norm(offset)) + float(axes.max()) for offset, axes, _ in lobes)
    half = int(np.ceil((1.5 * extent + 2.0 * resolution) / resolution))
    lower = np.maximum(centre - half, 0)
    upper = np.minimum(centre + half + 1, np.array(canvas.flair.shape))
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    crop_shape = (int(upper[0] - lower[0]), int(upper[1] - lower[1]), int(upper[2] - lower[2]))
    subvoxel = rng.uniform(-0.4, 0.4, size=3).astype(np.float32)
    occupancy, core = lesion_occupancy(
        crop_shape,
        (centre - lower).astype(np.float32) + subvoxel,
        lobes,
        resolution,
        roughness,
        rng,
    )
    csf = anatomy.csf[crop]
    # A lesion replaces tissue, never CSF, and stays in the brain.
    occupancy *= (1.0 - csf) * anatomy.brain_mask[crop]
    # One lesion is one piece: fragments that surface noise or CSF cut off are dropped (with the
    # main piece's one-voxel partial-volume border kept).
    pieces, count = ndimage.label(occupancy >= 0.5, structure=_CONNECTIVITY_18)
    if count == 0:
        return None
    largest = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    occupancy *= ndimage.binary_dilation(pieces == largest, structure=_CONNECTIVITY_18)
    own = occupancy >= 0.5
    flair_peak, t1w_peak, faint = _contrast(rng, volume, arm)
    if float(own.sum()) * resolution**3 < MIN_LESION_MM3:
        return None
    region = _region(own, crop, centre_label, landmarks)
    texture = 0.05 * rng.normal(size=crop_shape)
    profiles = (0.7 + 0.3 * np.sqrt(core) + texture, 0.5 + 0.5 * np.sqrt(core) + texture)
    for image, peak, profile, fluid, brighten in (
        (canvas.flair, flair_peak, profiles[0], canvas.csf_flair, True),
        (canvas.t1w, t1w_peak, profiles[1], canvas.csf_t1w, False),
    ):
        current = image[crop]
        tissue = (current - csf * fluid) / np.maximum(1.0 - csf, 0.1)
        lesion = 1.0 + peak * profile
        # A black hole darkens towards CSF, never below it.
        lesion = np.maximum(lesion, tissue) if brighten else np.minimum(lesion, tissue)
        if not brighten:
            lesion = np.maximum(lesion, fluid + 0.05)
        image[crop] = current + occupancy * (lesion - tissue)
    canvas.regions[crop][own & ~canvas.mask[crop]] = REGION_LABELS[region]
    canvas.mask[crop] |= own
    return Lesion(
        id=lesion_id,
        region=region,
        volume_mm3=float(own.sum()) * resolution**3,
        centre=(int(centre[0]), int(centre[1]), int(centre[2])),
        flair_contrast=flair_peak,
        t1w_contrast=t1w_peak,
        faint=faint,
    )


def _candidates(
    rng: np.random.Generator, anatomy: SubjectAnatomy, prior: FloatArray, atlas: IntArray
) -> tuple[IntArray, FloatArray, FloatArray]:
    """White-matter voxels, their sampling weights and their ventricle-normal directions.

    Weights are the prior at each voxel's template position (supratentorial voxels), plus the
    infratentorial and periventricular shares spread uniformly over those voxels (see
    :class:`LesionParametersV2`).
    """
    white = np.argwhere((anatomy.white >= 0.6) & anatomy.brain_mask)
    voxels = white[rng.choice(len(white), size=min(len(white), 30000), replace=False)]
    positions = anatomy.to_template(voxels)
    weights = sample_trilinear(prior[..., None], positions.T.astype(np.float32))[:, 0]
    labels = atlas[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    below = labels == REGION_LABELS["infratentorial"]
    weights[below] = 0.0
    total = float(weights.sum())
    if total > 0:
        weights /= total
        pools = (
            (below, LESION_PARAMETERS_V2.infratentorial_share),
            (
                labels == REGION_LABELS["periventricular"],
                LESION_PARAMETERS_V2.periventricular_share,
            ),
        )
        weights *= 1.0 - sum(share for pool, share in pools if pool.any())
        for pool, share in pools:
            if pool.any():
                weights[pool] += share / pool.sum()
    keep = weights > 0
    return voxels[keep], weights[keep], ventricle_gradients(anatomy, positions[keep])


def lesion_landmarks(anatomy: SubjectAnatomy) -> tuple[BoolArray, BoolArray]:
    """What a lesion's region is read against (MAGNIMS: lesions abutting these): ventricular CSF
    (CSF ≥ ½ at least 8 mm inside the brain, atria and horns included) and cortical grey matter
    (grey ≥ ½ outside the deep grey nuclei)."""
    resolution = float(anatomy.template.resolution)
    depth = distance_near_brain(~anatomy.brain_mask, anatomy.brain_mask, resolution, resolution)
    ventricular = (anatomy.csf >= 0.5) & (depth >= 8.0)
    deep_grey = soft_box(anatomy.template.affine, anatomy.t1.shape, DEEP_GREY_BOX, 1.0) > 0.5
    return ventricular, (anatomy.grey >= 0.5) & ~deep_grey


def _region(
    own: BoolArray,
    crop: tuple[slice, ...],
    centre_label: int,
    landmarks: tuple[BoolArray, BoolArray],
) -> LesionRegion:
    """A lesion's region: infratentorial by its centre, else periventricular or juxtacortical when
    its mask shares a voxel face with ventricular CSF or cortex (abuts it), else deep."""
    if centre_label == REGION_LABELS["infratentorial"]:
        return "infratentorial"
    near = ndimage.binary_dilation(own)
    if (near & landmarks[0][crop]).any():
        return "periventricular"
    if (near & landmarks[1][crop]).any():
        return "juxtacortical"
    return "deep"


def insert_lesions_v2(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    flair: FloatArray,
    t1w: FloatArray,
    count: int,
    prior: FloatArray,
    atlas: IntArray,
    arm: ContrastArm,
    csf_levels: tuple[float, float],
) -> LesionSet:
    """Place up to ``count`` lesions, centres drawn in proportion to the lesion ``prior``
    (template grid) within white matter, and draw them into copies of ``flair`` and ``t1w``.

    A lesion's region is read from its mask (:func:`lesion_landmarks`: abutting ventricular CSF,
    cortex, or neither; infratentorial by the ``atlas`` label at its centre); lesions centred in
    the atlas's periventricular band are elongated along the ventricle normal (Dawson's fingers).
    ``csf_levels`` are the FLAIR and T1w CSF intensities (white-matter units) that partial volume
    with CSF is undone against.
    """
    canvas = LesionCanvas(
        flair=flair.copy(),
        t1w=t1w.copy(),
        mask=np.zeros(flair.shape, dtype=bool),
        regions=np.zeros(flair.shape, dtype=np.uint8),
        csf_flair=csf_levels[0],
        csf_t1w=csf_levels[1],
    )
    voxels, weights, gradients = _candidates(rng, anatomy, prior, atlas)
    landmarks = lesion_landmarks(anatomy)
    lesions: list[Lesion] = []
    attempts = 0
    while len(lesions) < count and attempts < 20 * max(count, 1) and len(voxels):
        attempts += 1
        pick = int(rng.choice(len(voxels), p=weights / weights.sum()))
        centre = voxels[pick]
        label = int(atlas[tuple(centre)])
        if canvas.mask[tuple(centre)] or label == 0:
            continue
        # Lesions near the ventricles point away from them (Dawson's fingers).
        elongate = label == REGION_LABELS["periventricular"]
        if elongate:
            direction = gradients[pick]
        else:
            direction = rng.normal(size=3)
            direction /= max(float(np.linalg.norm(direction)), 1e-6)
        record = _draw(
            rng,
            anatomy,
            canvas,
            centre,
            elongate,
            direction,
            arm,
            len(lesions) + 1,
            label,
            landmarks,
        )
        if record is not None:
            lesions.append(record)
    return LesionSet(
        flair=canvas.flair,
        t1w=canvas.t1w,
        mask=canvas.mask,
        regions=canvas.regions,
        lesions=tuple(lesions),
    )
