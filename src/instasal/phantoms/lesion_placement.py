"""White-matter lesions where MS puts them: placement by region, shapes, partial volume, contrast.

Lesion centres are drawn per region from the subject's white matter, with the region rules
evaluated in template (MNI) space through the subject's warp: periventricular (touching the lateral
or third ventricle), juxtacortical (touching cortical grey matter), deep white matter (away from
both) and infratentorial (below the tentorium: brainstem and cerebellum). Each lesion is an
ellipsoid roughened by smooth noise, drawn in a local crop with a one-voxel partial-volume border,
brighter than white matter on FLAIR and iso- to hypo-intense on T1w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instasal.dataset import REGION_LABELS
from instasal.phantoms.anatomy import SubjectAnatomy, sample_trilinear
from instasal.typing import BoolArray, FloatArray, IntArray, LesionRegion

__all__ = [
    "LESION_PARAMETERS",
    "REGION_LABELS",
    "Lesion",
    "LesionCanvas",
    "LesionParameters",
    "LesionRegion",
    "LesionSet",
    "draw_lesion_count",
    "insert_lesions",
    "is_infratentorial",
    "region_atlas",
    "soft_ellipsoid",
    "ventricle_gradients",
]


@dataclass(frozen=True)
class LesionParameters:
    """Generation parameters of the lesions (ranges are uniform draws per lesion).

    Attributes
    ----------
    count_mean, count_dispersion, count_max
        Lesions per subject: negative binomial with this mean and dispersion, clipped to
        ``count_max``.
    region_weights
        Share of lesions per region (MS predilection sites).
    periventricular_max_distance_mm, juxtacortical_max_distance_mm
        Largest centre distance to the ventricles / to cortical grey matter (template space).
    deep_min_distance_ventricles_mm, deep_min_distance_cortex_mm
        Smallest centre distances of deep white-matter lesions.
    volume_median_mm3, volume_log_sd, volume_range_mm3
        Target volume: log-normal, clipped to the range.
    faint_share, faint_reference_volume_mm3, faint_flair_contrast, flair_contrast
        FLAIR peak contrast over white matter; a share of lesions up to the reference volume is
        faint (larger ones less often, as the square root of reference over volume).
    t1w_hypointensity, black_hole_share, black_hole_min_volume_mm3, black_hole_hypointensity
        T1w peak darkening relative to white matter; some larger lesions are T1 black holes.
    axis_log_sd, periventricular_elongation, roughness
        Shape: ellipsoid axis ratios, Dawson-finger elongation along the ventricle normal, and
        amplitude of the smooth surface noise.
    confluence_share, confluence_min_volume_mm3, satellites, satellite_distance,
    satellite_volume_fraction
        Confluence: this share of periventricular and deep lesions of at least the minimum volume
        get a number of satellites (inclusive range) centred this many largest semi-axes away,
        with this fraction of the parent's target volume.
    """

    count_mean: float = 14.0
    count_dispersion: float = 2.0
    count_max: int = 40
    region_weights: tuple[tuple[str, float], ...] = (
        ("periventricular", 0.38),
        ("juxtacortical", 0.22),
        ("deep", 0.28),
        ("infratentorial", 0.12),
    )
    periventricular_max_distance_mm: float = 4.0
    juxtacortical_max_distance_mm: float = 3.0
    deep_min_distance_ventricles_mm: float = 6.0
    deep_min_distance_cortex_mm: float = 4.0
    volume_median_mm3: float = 60.0
    volume_log_sd: float = 1.35
    volume_range_mm3: tuple[float, float] = (5.0, 8000.0)
    faint_share: float = 0.3
    faint_reference_volume_mm3: float = 100.0
    faint_flair_contrast: tuple[float, float] = (0.12, 0.28)
    flair_contrast: tuple[float, float] = (0.35, 0.95)
    t1w_hypointensity: tuple[float, float] = (0.0, 0.12)
    black_hole_share: float = 0.35
    black_hole_min_volume_mm3: float = 100.0
    black_hole_hypointensity: tuple[float, float] = (0.2, 0.5)
    axis_log_sd: float = 0.25
    periventricular_elongation: tuple[float, float] = (1.3, 2.2)
    roughness: tuple[float, float] = (0.05, 0.35)
    confluence_share: float = 0.35
    confluence_min_volume_mm3: float = 100.0
    satellites: tuple[int, int] = (1, 3)
    satellite_distance: tuple[float, float] = (0.7, 1.3)
    satellite_volume_fraction: tuple[float, float] = (0.1, 0.5)


LESION_PARAMETERS = LesionParameters()


@dataclass(frozen=True)
class Lesion:
    """One ground-truth lesion.

    Attributes
    ----------
    id
        1-based placement order.
    region
        Where it was placed (:data:`REGION_LABELS` gives its label value).
    volume_mm3
        Volume of its own mask (voxels with partial volume ≥ 0.5) before any overlap with others.
    centre
        Centre voxel ``(i, j, k)``.
    flair_contrast
        Peak FLAIR intensity over white matter, minus 1 (0.3 = 30 % brighter).
    t1w_contrast
        Peak T1w intensity over white matter, minus 1 (≤ 0: iso- to hypo-intense).
    faint
        Whether its FLAIR contrast was drawn from the faint range.
    """

    id: int
    region: LesionRegion
    volume_mm3: float
    centre: tuple[int, int, int]
    flair_contrast: float
    t1w_contrast: float
    faint: bool


@dataclass(frozen=True, eq=False)
class LesionSet:
    """Lesions inserted into a subject, with the images they were drawn into."""

    flair: FloatArray
    t1w: FloatArray
    mask: BoolArray
    regions: IntArray
    lesions: tuple[Lesion, ...]


def draw_lesion_count(rng: np.random.Generator) -> int:
    """Draw a lesion count: negative binomial (see :class:`LesionParameters`)."""
    dispersion = LESION_PARAMETERS.count_dispersion
    mean = LESION_PARAMETERS.count_mean
    count = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
    return int(min(count, LESION_PARAMETERS.count_max))


def is_infratentorial(world: FloatArray) -> BoolArray:
    """Whether MNI points ``[N, 3]`` lie below the tentorium (brainstem or cerebellum).

    The tentorium is modelled as a tent: highest (z ≈ −8 mm) just behind the midbrain, sloping
    down posteriorly and laterally; in front of y = −40 mm only the brainstem (|x| < 14 mm,
    z < −12 mm) counts, so the temporal lobes stay supratentorial.
    """
    x, y, z = world[:, 0], world[:, 1], world[:, 2]
    tentorium = -8.0 - 0.35 * np.maximum(0.0, -55.0 - y) - 0.15 * np.abs(x)
    posterior = (y < -40.0) & (z < tentorium)
    brainstem = (np.abs(x) < 14.0) & (y >= -40.0) & (y < -5.0) & (z < -12.0)
    return np.asarray(posterior | brainstem)


def _region_measures(
    anatomy: SubjectAnatomy, voxels: IntArray
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:
    """What the region rules read at subject voxels ``[N, 3]``: template positions, distances to
    the ventricles and to cortical grey matter (template distance maps), and infratentoriality."""
    template = anatomy.template
    positions = anatomy.to_template(voxels)
    points = positions.T.astype(np.float32)
    ventricles = sample_trilinear(template.distance_ventricles[..., None], points)[:, 0]
    cortex = sample_trilinear(template.distance_cortex[..., None], points)[:, 0]
    infratentorial = is_infratentorial(template.voxel_to_world(positions))
    return positions, ventricles, cortex, infratentorial


def region_atlas(anatomy: SubjectAnatomy) -> IntArray:
    """Label every brain voxel with its MS region (uint8, labels of :data:`REGION_LABELS`).

    The lesion table's region of a predicted lesion that no ground-truth lesion explains (a false
    positive, a missed-lesion candidate, a TN domain) is read from this atlas. The rules are the
    placement rules of :func:`insert_lesions`, on the template's distance maps at each voxel's
    template position, made exhaustive by priority: infratentorial below the tentorium; else
    periventricular within ``periventricular_max_distance_mm`` of the ventricles; else
    juxtacortical within ``juxtacortical_max_distance_mm`` of cortical grey matter; else deep.
    Voxels outside the brain are 0. (Placement is stricter: deep lesions also keep away from both
    ventricles and cortex; this atlas gives the gaps to the deep region.)
    """
    voxels = np.argwhere(anatomy.brain_mask)
    atlas = np.zeros(anatomy.brain_mask.shape, dtype=np.uint8)
    if voxels.size == 0:
        return atlas
    _, ventricles, cortex, infratentorial = _region_measures(anatomy, voxels)
    labels = np.select(
        [
            infratentorial,
            ventricles <= LESION_PARAMETERS.periventricular_max_distance_mm,
            cortex <= LESION_PARAMETERS.juxtacortical_max_distance_mm,
        ],
        [
            REGION_LABELS["infratentorial"],
            REGION_LABELS["periventricular"],
            REGION_LABELS["juxtacortical"],
        ],
        default=REGION_LABELS["deep"],
    )
    atlas[tuple(voxels.T)] = labels
    return atlas


def _candidates(
    anatomy: SubjectAnatomy, rng: np.random.Generator
) -> dict[LesionRegion, tuple[IntArray, FloatArray]]:
    """Candidate centre voxels per region with, for each, the ventricle distance gradient.

    Region rules use the template's distance maps at each voxel's template position.
    """
    white_voxels = np.argwhere((anatomy.white >= 0.6) & anatomy.brain_mask)
    count = min(len(white_voxels), 30000)
    voxels = white_voxels[rng.choice(len(white_voxels), size=count, replace=False)]
    positions, ventricles, cortex, infratentorial = _region_measures(anatomy, voxels)
    white = anatomy.white[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    supratentorial = ~infratentorial
    rules: dict[LesionRegion, BoolArray] = {
        "periventricular": supratentorial
        & (ventricles <= LESION_PARAMETERS.periventricular_max_distance_mm),
        "juxtacortical": supratentorial
        & (cortex <= LESION_PARAMETERS.juxtacortical_max_distance_mm)
        & (ventricles > LESION_PARAMETERS.periventricular_max_distance_mm),
        "deep": supratentorial
        & (ventricles >= LESION_PARAMETERS.deep_min_distance_ventricles_mm)
        & (cortex >= LESION_PARAMETERS.deep_min_distance_cortex_mm)
        & (white >= 0.8),
        "infratentorial": infratentorial,
    }
    gradients = ventricle_gradients(anatomy, positions)
    return {region: (voxels[rule], gradients[rule]) for region, rule in rules.items()}


def ventricle_gradients(anatomy: SubjectAnatomy, positions: FloatArray) -> FloatArray:
    """Unit gradients ``[N, 3]`` of the template ventricle distance at template ``positions``."""
    distance = anatomy.template.distance_ventricles[..., None]
    gradient = np.zeros_like(positions)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1.0
        ahead = sample_trilinear(distance, (positions + step).T.astype(np.float32))[:, 0]
        behind = sample_trilinear(distance, (positions - step).T.astype(np.float32))[:, 0]
        gradient[:, axis] = ahead - behind
    norm = np.linalg.norm(gradient, axis=1, keepdims=True)
    return gradient / np.maximum(norm, 1e-6)


def _rotation_towards(direction: FloatArray, rng: np.random.Generator) -> FloatArray:
    """A rotation whose first column is ``direction`` and whose other two are random."""
    helper = rng.normal(size=3)
    helper -= helper @ direction * direction
    second = helper / max(float(np.linalg.norm(helper)), 1e-6)
    return np.stack([direction, second, np.cross(direction, second)], axis=1)


def soft_ellipsoid(
    shape: tuple[int, int, int],
    centre: FloatArray,
    axes_mm: FloatArray,
    rotation: FloatArray,
    resolution: float,
    roughness: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Partial-volume occupancy and core profile of a roughened ellipsoid in a crop of ``shape``.

    Parameters
    ----------
    shape
        Crop shape in voxels.
    centre
        Centre in crop voxel coordinates (sub-voxel).
    axes_mm
        Semi-axes in mm, along the columns of ``rotation``.
    resolution
        Voxel size in mm.
    roughness
        Amplitude of the smooth noise that makes the surface irregular (0: a clean ellipsoid).
    rng
        Source of the surface noise.

    Returns
    -------
    occupancy, core
        Occupancy in [0, 1] falling linearly across one voxel at the surface (partial volume),
        and ``core`` in [0, 1], 1 at the centre and 0 at the surface.
    """
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    offsets_mm = (grid - centre) * resolution
    local = offsets_mm @ rotation
    radius = np.sqrt(np.sum((local / axes_mm) ** 2, axis=1)).reshape(shape)
    if roughness > 0:
        noise = ndimage.gaussian_filter(
            rng.normal(size=shape), sigma=max(1.0, 0.4 * float(axes_mm.min()) / resolution)
        )
        noise /= max(float(noise.std()), 1e-6)
        radius = radius * np.exp(-roughness * noise)
    surface_mm = (radius - 1.0) * float(axes_mm.min())
    occupancy = np.clip(0.5 - surface_mm / resolution, 0.0, 1.0)
    core = np.clip(1.0 - radius, 0.0, 1.0)
    return occupancy.astype(np.float32), core.astype(np.float32)


def _draw_volume(rng: np.random.Generator) -> float:
    low, high = LESION_PARAMETERS.volume_range_mm3
    volume = LESION_PARAMETERS.volume_median_mm3 * np.exp(
        LESION_PARAMETERS.volume_log_sd * rng.normal()
    )
    return float(np.clip(volume, low, high))


def _draw_axes(rng: np.random.Generator, volume_mm3: float, region: LesionRegion) -> FloatArray:
    """Semi-axes with product giving ``volume_mm3``; periventricular ones elongated along axis 0."""
    ratios = np.exp(LESION_PARAMETERS.axis_log_sd * rng.normal(size=3))
    if region == "periventricular":
        ratios[0] *= rng.uniform(*LESION_PARAMETERS.periventricular_elongation)
    ratios /= np.prod(ratios) ** (1.0 / 3.0)
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return np.asarray(radius * ratios, dtype=np.float32)


def _draw_contrast(rng: np.random.Generator, volume_mm3: float) -> tuple[float, float, bool]:
    # Large lesions are rarely faint: the faint share falls as 1/sqrt(volume) above a reference.
    reference = LESION_PARAMETERS.faint_reference_volume_mm3
    faint_share = LESION_PARAMETERS.faint_share * min(1.0, np.sqrt(reference / volume_mm3))
    faint = bool(rng.random() < faint_share)
    flair_range = (
        LESION_PARAMETERS.faint_flair_contrast if faint else LESION_PARAMETERS.flair_contrast
    )
    flair = rng.uniform(*flair_range)
    black_hole = (
        volume_mm3 >= LESION_PARAMETERS.black_hole_min_volume_mm3
        and not faint
        and rng.random() < LESION_PARAMETERS.black_hole_share
    )
    hypo_range = (
        LESION_PARAMETERS.black_hole_hypointensity
        if black_hole
        else LESION_PARAMETERS.t1w_hypointensity
    )
    hypo = rng.uniform(*hypo_range)
    return float(flair), float(-hypo), faint


@dataclass(frozen=True, eq=False)
class LesionCanvas:
    """The images and masks lesions are drawn into (arrays updated in place)."""

    flair: FloatArray
    t1w: FloatArray
    mask: BoolArray
    regions: IntArray
    csf_flair: float
    csf_t1w: float


def _draw_lesion(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    canvas: LesionCanvas,
    centre: IntArray,
    region: LesionRegion,
    volume: float,
    direction: FloatArray,
    lesion_id: int,
) -> tuple[Lesion, FloatArray]:
    """Draw one lesion into ``canvas``; return its record and its semi-axes (mm)."""
    resolution = float(anatomy.template.resolution)
    axes = _draw_axes(rng, volume, region)
    rotation = _rotation_towards(direction, rng)
    half = int(np.ceil((1.6 * float(axes.max()) + 2.0 * resolution) / resolution))
    lower = np.maximum(centre - half, 0)
    upper = np.minimum(centre + half + 1, np.array(canvas.flair.shape))
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    crop_shape = (int(upper[0] - lower[0]), int(upper[1] - lower[1]), int(upper[2] - lower[2]))
    subvoxel = rng.uniform(-0.4, 0.4, size=3).astype(np.float32)
    roughness = float(rng.uniform(*LESION_PARAMETERS.roughness))
    occupancy, core = soft_ellipsoid(
        crop_shape,
        (centre - lower).astype(np.float32) + subvoxel,
        axes,
        rotation,
        resolution,
        roughness,
        rng,
    )
    # Lesions replace tissue, never CSF: the lesion's share of a voxel is its geometric
    # occupancy times the voxel's tissue fraction.
    csf = anatomy.csf[crop]
    occupancy *= (1.0 - csf) * anatomy.brain_mask[crop]
    # The centre was drawn from white matter: it belongs to the lesion even where a thin
    # lesion's surface noise or partial CSF would leave it below half occupancy.
    local_centre = tuple(centre - lower)
    occupancy[local_centre] = max(float(occupancy[local_centre]), 0.6)
    own = occupancy >= 0.5
    flair_contrast, t1w_contrast, faint = _draw_contrast(rng, volume)
    # FLAIR hyperintensity fills the lesion; T1w hypo-intensity concentrates in the core
    # (black holes are smaller than the FLAIR lesion around them).
    texture = 0.05 * rng.normal(size=crop_shape)
    flair_profile = 0.7 + 0.3 * np.sqrt(core) + texture
    t1w_profile = 0.35 + 0.65 * np.sqrt(core) + texture
    for image, contrast, profile, fluid_level, brighten in (
        (canvas.flair, flair_contrast, flair_profile, canvas.csf_flair, True),
        (canvas.t1w, t1w_contrast, t1w_profile, canvas.csf_t1w, False),
    ):
        current = image[crop]
        tissue = (current - csf * fluid_level) / np.maximum(1.0 - csf, 0.1)
        lesion = 1.0 + contrast * profile
        lesion = np.maximum(lesion, tissue) if brighten else np.minimum(lesion, tissue)
        image[crop] = current + occupancy * (lesion - tissue)
    canvas.regions[crop][own & ~canvas.mask[crop]] = REGION_LABELS[region]
    canvas.mask[crop] |= own
    record = Lesion(
        id=lesion_id,
        region=region,
        volume_mm3=float(own.sum()) * resolution**3,
        centre=(int(centre[0]), int(centre[1]), int(centre[2])),
        flair_contrast=flair_contrast,
        t1w_contrast=t1w_contrast,
        faint=faint,
    )
    return record, axes


def _satellites(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    parent: Lesion,
    axes: FloatArray,
    volume: float,
) -> list[tuple[IntArray, LesionRegion, float]]:
    """Centres, region and volumes of smaller lesions on the border of a large one (confluence)."""
    if (
        parent.region not in ("periventricular", "deep")
        or volume < LESION_PARAMETERS.confluence_min_volume_mm3
        or rng.random() >= LESION_PARAMETERS.confluence_share
    ):
        return []
    resolution = float(anatomy.template.resolution)
    low, high = LESION_PARAMETERS.satellites
    satellites: list[tuple[IntArray, LesionRegion, float]] = []
    for _ in range(int(rng.integers(low, high + 1))):
        distance = float(axes.max()) * rng.uniform(*LESION_PARAMETERS.satellite_distance)
        offset = _random_direction(rng) * distance / resolution
        centre = np.round(np.asarray(parent.centre) + offset).astype(np.int64)
        inside = np.all(centre >= 0) and np.all(centre < np.array(anatomy.white.shape))
        if inside and anatomy.white[tuple(centre)] >= 0.5:
            fraction = rng.uniform(*LESION_PARAMETERS.satellite_volume_fraction)
            satellites.append((centre, parent.region, volume * fraction))
    return satellites


def insert_lesions(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    flair: FloatArray,
    t1w: FloatArray,
    count: int,
) -> LesionSet:
    """Place ``count`` lesions and draw them into copies of ``flair`` and ``t1w``.

    Images are in white-matter units (white matter = 1). A lesion takes the tissue part of each
    voxel it covers in proportion to its geometric occupancy (never the CSF part), and never leaves
    the brain mask; it never makes FLAIR darker or T1w brighter than the tissue it replaces (a
    faint lesion reaching into cortex is as bright as the cortex there). Some large
    periventricular and deep lesions get smaller satellites on their border, which merge into
    lobulated, confluent plaques (each satellite is a lesion record of its own). A region with no
    candidate voxel in this subject is skipped in favour of the others.
    """
    fluid = anatomy.csf >= 0.9
    canvas = LesionCanvas(
        flair=flair.copy(),
        t1w=t1w.copy(),
        mask=np.zeros(flair.shape, dtype=bool),
        regions=np.zeros(flair.shape, dtype=np.uint8),
        csf_flair=float(np.median(flair[fluid])) if fluid.any() else 0.0,
        csf_t1w=float(np.median(t1w[fluid])) if fluid.any() else 0.0,
    )
    candidates = _candidates(anatomy, rng)
    weights_table = dict(LESION_PARAMETERS.region_weights)
    names: list[LesionRegion] = [name for name in REGION_LABELS if len(candidates[name][0]) > 0]
    weights = np.array([weights_table[name] for name in names])
    lesions: list[Lesion] = []
    pending: list[tuple[IntArray, LesionRegion, float]] = []
    attempts = 0
    while len(lesions) < count and attempts < 20 * count and names:
        attempts += 1
        if pending:
            centre, region, volume = pending.pop()
            direction = _random_direction(rng)
        else:
            region = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            voxels, gradients = candidates[region]
            pick = int(rng.integers(len(voxels)))
            centre = voxels[pick]
            volume = _draw_volume(rng)
            # Periventricular lesions point away from the ventricle (Dawson's fingers).
            periventricular = region == "periventricular"
            direction = gradients[pick] if periventricular else _random_direction(rng)
        if canvas.mask[tuple(centre)]:
            continue
        record, axes = _draw_lesion(
            rng, anatomy, canvas, centre, region, volume, direction, len(lesions) + 1
        )
        lesions.append(record)
        pending.extend(_satellites(rng, anatomy, record, axes, volume))
    return LesionSet(
        flair=canvas.flair,
        t1w=canvas.t1w,
        mask=canvas.mask,
        regions=canvas.regions,
        lesions=tuple(lesions),
    )


def _random_direction(rng: np.random.Generator) -> FloatArray:
    direction = rng.normal(size=3)
    return direction / max(float(np.linalg.norm(direction)), 1e-6)
