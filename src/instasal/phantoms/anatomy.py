"""Subject anatomy for the phantom cohort: the MNI152 2009 template, warped.

The template and its tissue maps ship with nilearn (no download). A subject is the template seen
through a smooth random deformation (affine jitter, a ventricle-centred expansion imitating atrophy,
and a smooth free-form displacement). Every map and mask of a subject goes through the same warp, so
they stay co-registered. Contrasts and the acquisition are in :mod:`instasal.phantoms.contrast`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from nilearn import datasets
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.typing import BoolArray, FloatArray, IntArray, Resolution

__all__ = [
    "DEEP_GREY_BOX",
    "DEFORMATION_RANGES",
    "FREE_FORM_SPACING_MM",
    "VENTRICLE_EXPANSION_WIDTH_MM",
    "Resolution",
    "SubjectAnatomy",
    "TemplateAnatomy",
    "deformation_coordinates",
    "distance_near_brain",
    "load_template_anatomy",
    "sample_trilinear",
    "smooth_field",
    "soft_box",
    "template_from_maps",
    "warp_anatomy",
]


# Subject deformation (uniform draws): affine scale and rotation about the grid centre, radial
# expansion around the ventricles (Gaussian weight of width VENTRICLE_EXPANSION_WIDTH_MM), and the
# RMS of a free-form displacement on a control grid FREE_FORM_SPACING_MM apart.
DEFORMATION_RANGES: dict[str, tuple[float, float]] = {
    "scale": (0.94, 1.06),
    "rotation_deg": (-4.0, 4.0),
    "ventricle_expansion": (0.0, 0.3),
    "free_form_rms_mm": (1.0, 2.5),
}
VENTRICLE_EXPANSION_WIDTH_MM = 28.0
FREE_FORM_SPACING_MM = 30.0

# Central box (world mm) that seeds the ventricle mask: the bodies of the lateral ventricles.
_VENTRICLE_SEED_BOX = ((-22.0, 22.0), (-30.0, 15.0), (5.0, 30.0))
# Deep grey matter (thalamus, basal ganglia): excluded from "cortex", and dimmer on FLAIR.
DEEP_GREY_BOX = ((-34.0, 34.0), (-38.0, 28.0), (-14.0, 22.0))


@dataclass(frozen=True, eq=False)
class TemplateAnatomy:
    """The MNI152 2009 template on one grid, with the maps phantoms are built from.

    Attributes
    ----------
    t1
        Template T1 contrast in [0, 1], zero outside the brain.
    grey, white, csf
        Tissue probabilities; ``csf`` is what the brain mask holds beyond grey and white matter.
    brain
        Brain probability (the template's binary mask, pooled at 2 mm).
    ventricles
        Lateral and third ventricles as a 0/1 map.
    distance_ventricles, distance_cortex, distance_exterior
        Euclidean distances in mm to the ventricles, to cortical grey matter (grey matter
        outside the deep grey nuclei) and to the outside of the brain.
    affine
        Voxel-to-world matrix (1 or 2 mm isotropic, MNI space).
    resolution
        Voxel size in mm.
    """

    t1: FloatArray
    grey: FloatArray
    white: FloatArray
    csf: FloatArray
    brain: FloatArray
    ventricles: FloatArray
    distance_ventricles: FloatArray
    distance_cortex: FloatArray
    distance_exterior: FloatArray
    affine: np.ndarray
    resolution: int

    @functools.cached_property
    def tissue_stack(self) -> FloatArray:
        """T1, grey, white and ventricles stacked channels-last ``[X, Y, Z, 4]`` for warping."""
        return np.stack([self.t1, self.grey, self.white, self.ventricles], axis=-1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape ``(X, Y, Z)``."""
        x, y, z = self.t1.shape
        return (int(x), int(y), int(z))

    def voxel_to_world(self, voxels: FloatArray | IntArray) -> FloatArray:
        """Map voxel coordinates ``[..., 3]`` of this grid to world (RAS mm) coordinates."""
        return np.asarray(voxels, dtype=np.float64) @ self.affine[:3, :3].T + self.affine[:3, 3]


def _check_resolution(resolution: int) -> None:
    if resolution not in (1, 2):
        raise ConfigurationError(f"resolution must be 1 or 2 (mm), got {resolution!r}")


def _pool_to_2mm(volume: FloatArray) -> FloatArray:
    """Average a 1 mm volume over 2 mm voxels centred on every second 1 mm voxel.

    A 2 mm voxel centred on 1 mm voxel ``2i`` covers that voxel and half of each neighbour, hence
    the weights (1/4, 1/2, 1/4) per axis; this is the partial-volume average, not point sampling.
    """
    pooled = volume.astype(np.float32)
    for axis in range(3):
        pooled = ndimage.correlate1d(pooled, [0.25, 0.5, 0.25], axis=axis, mode="constant")
    return np.ascontiguousarray(pooled[::2, ::2, ::2])


def soft_box(affine: np.ndarray, shape: tuple[int, ...], box: tuple, ramp_mm: float) -> FloatArray:
    """A box of world coordinates with logistic edges ``ramp_mm`` wide, 1 inside, 0 outside."""
    weight = np.ones(shape, dtype=np.float32)
    for axis, (low, high) in enumerate(box):
        values = affine[axis, axis] * np.arange(shape[axis]) + affine[axis, 3]
        inside = 1.0 / (1.0 + np.exp(-(values - low) / ramp_mm))
        inside *= 1.0 / (1.0 + np.exp((values - high) / ramp_mm))
        view = [1, 1, 1]
        view[axis] = -1
        weight = weight * inside.astype(np.float32).reshape(view)
    return weight


def _box_mask(anatomy_affine: np.ndarray, shape: tuple[int, ...], box: tuple) -> BoolArray:
    axes = [
        anatomy_affine[axis, axis] * np.arange(shape[axis]) + anatomy_affine[axis, 3]
        for axis in range(3)
    ]
    inside = [
        (low <= values) & (values <= high) for values, (low, high) in zip(axes, box, strict=True)
    ]
    return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]


@functools.lru_cache(maxsize=2)
def load_template_anatomy(resolution: Resolution = 2) -> TemplateAnatomy:
    """Load (once per process) the MNI152 2009 template and tissue maps shipped with nilearn.

    The 2 mm version is the 1 mm data averaged over 2 mm voxels (partial volume kept), on the grid
    nilearn uses for ``resolution=2``.

    Parameters
    ----------
    resolution
        Voxel size in mm, 1 or 2.

    Returns
    -------
    TemplateAnatomy
        Maps, masks and distance maps on the chosen grid.
    """
    _check_resolution(resolution)

    template = datasets.load_mni152_template(resolution=1)
    maps = {
        "t1": np.asarray(template.get_fdata(), dtype=np.float32),
        "grey": np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32),
        "white": np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32),
        "brain": np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(), np.float32),
    }
    affine = np.asarray(template.affine, dtype=np.float64)
    if resolution == 2:
        maps = {name: _pool_to_2mm(volume) for name, volume in maps.items()}
        affine = affine.copy()
        affine[:3, :3] *= 2.0
    return template_from_maps(maps, affine, resolution)


def template_from_maps(
    maps: dict[str, FloatArray], affine: np.ndarray, resolution: Resolution
) -> TemplateAnatomy:
    """Build a :class:`TemplateAnatomy` (CSF, ventricles, distance maps) from a brain's maps.

    Parameters
    ----------
    maps
        ``t1``, ``grey``, ``white`` and ``brain`` (probabilities; T1 contrast in [0, 1]), one
        grid.
    affine
        The grid's voxel-to-world matrix (MNI space: the region rules read MNI coordinates).
    resolution
        Voxel size in mm.
    """
    brain = np.clip(maps["brain"], 0.0, 1.0)
    grey = np.clip(maps["grey"], 0.0, 1.0) * brain
    white = np.clip(maps["white"], 0.0, 1.0) * brain
    csf = np.clip(brain - grey - white, 0.0, 1.0)
    t1 = np.clip(maps["t1"], 0.0, 1.0) * brain
    spacing = (float(resolution),) * 3
    shape = t1.shape
    brain_mask = brain >= 0.5
    # Distances are only ever read inside the brain, so they are computed in the brain's bounding
    # box with a margin (exact there: every feature lies inside the brain), at half the cost.
    brain_voxels = np.argwhere(brain_mask)
    lower = np.maximum(brain_voxels.min(axis=0) - 2, 0)
    upper = np.minimum(brain_voxels.max(axis=0) + 3, np.array(shape))
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    distance_exterior = _distance_in_box(~brain_mask, box, spacing)
    ventricles = _ventricle_mask(csf, distance_exterior, affine, shape, resolution)
    cortex = (grey >= 0.5) & ~_box_mask(affine, shape, DEEP_GREY_BOX)
    return TemplateAnatomy(
        t1=t1,
        grey=grey,
        white=white,
        csf=csf,
        brain=brain,
        ventricles=ventricles.astype(np.float32),
        distance_ventricles=_distance_in_box(ventricles, box, spacing),
        distance_cortex=_distance_in_box(cortex, box, spacing),
        distance_exterior=distance_exterior,
        affine=affine,
        resolution=resolution,
    )


def _distance_in_box(
    features: BoolArray, box: tuple[slice, ...], spacing: tuple[float, ...]
) -> FloatArray:
    """Distance in mm to the nearest ``features`` voxel, computed inside ``box``.

    Outside the box the value is 0 where ``features`` holds and the box's largest distance
    elsewhere (those voxels are never read).
    """
    inside = ndimage.distance_transform_edt(~features[box], sampling=spacing)
    distance = np.full(features.shape, float(inside.max()), dtype=np.float32)
    distance[features] = 0.0
    distance[box] = inside
    return distance


def distance_near_brain(
    features: BoolArray, brain_mask: BoolArray, margin_mm: float, resolution: float
) -> FloatArray:
    """Distance in mm to the nearest ``features`` voxel, exact within ``margin_mm`` of the
    brain's bounding box (computed there only: a fraction of the grid at 1 mm); beyond it, the
    box's largest distance. Features must lie inside that box."""
    voxels = np.argwhere(brain_mask)
    margin = int(np.ceil(margin_mm / resolution)) + 1
    lower = np.maximum(voxels.min(axis=0) - margin, 0)
    upper = np.minimum(voxels.max(axis=0) + margin + 1, np.array(brain_mask.shape))
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    return _distance_in_box(features, box, (resolution,) * 3)


def _ventricle_mask(
    csf: FloatArray,
    distance_exterior: FloatArray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    resolution: int,
) -> BoolArray:
    """Lateral ventricles: deep CSF connected to the lateral ventricle bodies.

    The interhemispheric fissure and the cisterns touch the ventricles through CSF channels a few
    mm thin; an opening (erode 2 mm, keep what touches the seed box, grow back 2 mm inside the deep
    CSF) cuts them off.
    """
    deep_csf = (csf >= 0.5) & (distance_exterior >= 8.0)
    steps = max(1, round(2.0 / resolution))
    core = ndimage.binary_erosion(deep_csf, iterations=steps)
    labels, _ = ndimage.label(core)
    seeds = np.unique(labels[_box_mask(affine, shape, _VENTRICLE_SEED_BOX) & core])
    kept = np.isin(labels, seeds[seeds > 0])
    return np.asarray(ndimage.binary_dilation(kept, iterations=steps, mask=deep_csf))


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], resolution: float, spacing_mm: float
) -> FloatArray:
    """A smooth random field of unit standard deviation on a grid of ``shape``.

    Gaussian bumps on a control grid ``spacing_mm`` apart with random weights, evaluated as a tensor
    product (three small matrix products), so a 1 mm field costs a fraction of a second.
    """
    controls = tuple(int(np.ceil(n * resolution / spacing_mm)) + 3 for n in shape)
    weights = rng.standard_normal(size=controls, dtype=np.float32)
    bases = []
    for size, count in zip(shape, controls, strict=True):
        positions = np.arange(size, dtype=np.float32) * resolution
        centres = (np.arange(count, dtype=np.float32) - 1.0) * spacing_mm
        bases.append(np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / spacing_mm) ** 2))
    # Contract the small control axes one at a time, the largest output last, so that the only
    # full-size operation is one matrix product writing a contiguous array.
    along_z = weights @ bases[2].T
    along_y = np.swapaxes(np.swapaxes(along_z, 1, 2) @ bases[1].T, 1, 2)
    field = (bases[0] @ along_y.reshape(controls[0], -1)).reshape(shape)
    # Moments from every fourth voxel per axis: the field is smooth, so this is exact to ~1 %.
    sample = field[::4, ::4, ::4]
    return (field - np.float32(sample.mean())) / np.float32(max(float(sample.std()), 1e-6))


@dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """A subject's warped anatomy on the template grid.

    Attributes
    ----------
    template
        The template it was warped from.
    t1, grey, white, csf, ventricles
        Warped maps (zero outside the brain).
    brain_mask, white_mask
        Brain (warped brain probability ≥ 0.5) and white matter (warped WM probability ≥ 0.5).
    coordinates, crop_lower
        ``[3, x, y, z]`` template voxel coordinates each subject voxel of the computed box (which
        starts at voxel ``crop_lower``) was taken from; region rules (distances to ventricles and
        cortex, the tentorium) are evaluated there, so they follow the anatomy through the warp.
    """

    template: TemplateAnatomy
    t1: FloatArray
    grey: FloatArray
    white: FloatArray
    csf: FloatArray
    ventricles: FloatArray
    brain_mask: BoolArray
    white_mask: BoolArray
    coordinates: FloatArray
    crop_lower: tuple[int, int, int]

    def to_template(self, voxels: np.ndarray) -> FloatArray:
        """Template voxel coordinates ``[N, 3]`` of subject voxels ``[N, 3]`` (integer indices)."""
        local = np.asarray(voxels, dtype=np.int64) - np.asarray(self.crop_lower)
        upper = np.array(self.coordinates.shape[1:]) - 1
        local = np.clip(local, 0, upper)
        return self.coordinates[:, local[:, 0], local[:, 1], local[:, 2]].T.astype(np.float64)


def sample_trilinear(volumes: FloatArray, coordinates: FloatArray) -> FloatArray:
    """Sample channels-last ``volumes`` ``[X, Y, Z, C]`` at voxel ``coordinates`` ``[3, N]``.

    Trilinear; coordinates outside the grid are clamped to its edge. One set of corner indices and
    weights serves every channel, and channels-last storage makes each corner one contiguous read
    (scipy's ``map_coordinates`` would recompute the weights per channel at several times the cost).

    Returns
    -------
    numpy.ndarray
        ``[N, C]`` float32 samples.
    """
    shape = volumes.shape[:3]
    strides = (shape[1] * shape[2], shape[2], 1)
    flat_base = np.zeros(coordinates.shape[1], dtype=np.int64)
    weights: list[tuple[FloatArray, FloatArray]] = []
    for axis in range(3):
        clipped = np.clip(coordinates[axis], np.float32(0.0), np.float32(shape[axis] - 1.001))
        base = clipped.astype(np.int64)
        fraction = (clipped - base).astype(np.float32)
        weights.append((1.0 - fraction, fraction))
        flat_base += base * strides[axis]
    flat = volumes.reshape(-1, volumes.shape[3])
    out = np.zeros((coordinates.shape[1], volumes.shape[3]), dtype=np.float32)
    for corner in range(8):
        offsets = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
        weight = weights[0][offsets[0]] * weights[1][offsets[1]] * weights[2][offsets[2]]
        shift = sum(offset * stride for offset, stride in zip(offsets, strides, strict=True))
        out += weight[:, None] * flat[flat_base + shift]
    return out


def deformation_coordinates(
    rng: np.random.Generator,
    template: TemplateAnatomy,
    lower: np.ndarray,
    upper: np.ndarray,
    ranges: dict[str, tuple[float, float]] = DEFORMATION_RANGES,
) -> FloatArray:
    """Template voxel coordinates ``[3, x, y, z]`` of the subject voxels in ``[lower, upper)``.

    Composes, from subject to template: a smooth free-form displacement (RMS 1–2.5 mm), a radial
    expansion around the ventricles (enlarged ventricles of atrophy, up to ~30 %), and a small
    affine (±6 % scale, ±4° rotation) about the brain centre; ``ranges`` (default
    :data:`DEFORMATION_RANGES`) bound each draw.
    """
    resolution = float(template.resolution)
    crop_shape = tuple(int(n) for n in upper - lower)
    grid = [np.arange(lo, hi, dtype=np.float32) for lo, hi in zip(lower, upper, strict=True)]
    centre = np.array(template.shape, dtype=np.float32) / 2.0
    ventricle_centre = np.argwhere(template.ventricles > 0.5).mean(axis=0).astype(np.float32)
    angles = np.deg2rad(rng.uniform(*ranges["rotation_deg"], size=3))
    scales = np.diag(rng.uniform(*ranges["scale"], size=3))
    rotation = (_rotation_matrix(angles) @ scales).astype(np.float32)
    displacement_mm = rng.uniform(*ranges["free_form_rms_mm"])
    expansion = rng.uniform(*ranges["ventricle_expansion"])
    width = np.float32(VENTRICLE_EXPANSION_WIDTH_MM / resolution)
    relative = [axis_grid - ventricle_centre[axis] for axis, axis_grid in enumerate(grid)]
    radius2 = (
        relative[0][:, None, None] ** 2
        + relative[1][None, :, None] ** 2
        + relative[2][None, None, :] ** 2
    )
    shrink = 1.0 - expansion * np.exp(-0.5 * radius2 / width**2)
    coordinates = np.empty((3, *crop_shape), dtype=np.float32)
    expanded = []
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = -1
        point = ventricle_centre[axis] + relative[axis].reshape(shape) * shrink - centre[axis]
        expanded.append(point)
    for axis in range(3):
        value = centre[axis] + rotation[axis, 0] * expanded[0]
        value = value + rotation[axis, 1] * expanded[1] + rotation[axis, 2] * expanded[2]
        field = smooth_field(rng, crop_shape, resolution, FREE_FORM_SPACING_MM)
        coordinates[axis] = value + field * (displacement_mm / resolution)
    return coordinates


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def warp_anatomy(
    rng: np.random.Generator,
    template: TemplateAnatomy,
    ranges: dict[str, tuple[float, float]] = DEFORMATION_RANGES,
    whole_grid: bool = False,
) -> SubjectAnatomy:
    """Draw a random smooth deformation and warp every template map through it.

    Only the brain's bounding box (with a margin for the deformation) is computed, or the whole
    grid with ``whole_grid`` (for warping the head around the brain through
    ``SubjectAnatomy.coordinates``); the brain probability is warped first, and the other maps only
    where it is non-zero. ``ranges`` bound the deformation's draws.
    """
    brain_voxels = np.argwhere(template.brain > 0)
    margin = int(np.ceil(16.0 / template.resolution))
    shape = np.array(template.shape)
    lower = np.maximum(brain_voxels.min(axis=0) - margin, 0)
    upper = np.minimum(brain_voxels.max(axis=0) + 1 + margin, shape)
    if whole_grid:
        lower, upper = np.zeros(3, dtype=np.int64), shape
    crop_shape = tuple(int(n) for n in upper - lower)
    coordinates = deformation_coordinates(rng, template, lower, upper, ranges)
    flat_coordinates = coordinates.reshape(3, -1)
    brain = sample_trilinear(template.brain[..., None], flat_coordinates)[:, 0]
    inside = np.flatnonzero(brain >= 0.5)
    sampled = sample_trilinear(template.tissue_stack, flat_coordinates[:, inside]).T
    crop = tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper, strict=True))
    maps = []
    for channel in sampled:
        crop_map = np.zeros(brain.size, dtype=np.float32)
        crop_map[inside] = channel
        full = np.zeros(template.shape, dtype=np.float32)
        full[crop] = crop_map.reshape(crop_shape)
        maps.append(full)
    t1, grey, white, ventricles = maps
    brain_mask = np.zeros(template.shape, dtype=bool)
    brain_mask[crop] = (brain >= 0.5).reshape(crop_shape)
    csf = np.clip(brain_mask - grey - white, 0.0, 1.0)
    return SubjectAnatomy(
        template=template,
        t1=t1,
        grey=grey,
        white=white,
        csf=csf,
        ventricles=ventricles,
        brain_mask=brain_mask,
        white_mask=(white >= 0.5) & brain_mask,
        coordinates=coordinates,
        crop_lower=(int(lower[0]), int(lower[1]), int(lower[2])),
    )
