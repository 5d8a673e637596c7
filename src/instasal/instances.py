"""Lesion instances: the domains Ω that instance saliency explains (SPEC §1).

Predicted lesions are the connected components of the thresholded probability map; with a reference
mask they are typed TP/FP, missed reference components become FN domains, and TN domains are blobs
sampled in normal-appearing tissue. This module knows no torch model.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import cc3d
import numpy as np
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.io import voxel_to_world, voxel_volume_mm3
from instasal.typing import BoolArray, Connectivity, InstanceKind, IntArray

__all__ = [
    "PREDICTED_KINDS",
    "Instance",
    "InstanceKind",
    "Instances",
    "classify_instances",
    "connected_components",
    "find_instances",
    "label_components",
    "lesion_components",
    "relabel_in_raster_order",
    "sample_true_negatives",
]

TN_FALLBACK_VOLUMES_MM3 = (10.0, 200.0)


PREDICTED_KINDS: tuple[InstanceKind, ...] = ("lesion", "TP", "FP")
"""The kinds of domain the model predicted (the others, FN and TN, it did not)."""


@dataclass(frozen=True)
class Instance:
    """One domain Ω.

    Attributes
    ----------
    id
        Integer id, the value of this domain in :attr:`Instances.labels`.
    volume_mm3
        Voxel count times voxel volume.
    n_voxels
        Number of voxels.
    centroid_voxel, centroid_world
        Mean voxel position, in voxel indices and in world (RAS mm) coordinates.
    bbox
        Half-open ``(start, stop)`` voxel range per axis.
    kind
        ``"lesion"`` for an untyped predicted component, else ``"TP"``, ``"FP"``, ``"FN"``
        or ``"TN"``.
    """

    id: int
    volume_mm3: float
    n_voxels: int
    centroid_voxel: tuple[float, float, float]
    centroid_world: tuple[float, float, float]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    kind: InstanceKind = "lesion"

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The bounding box as array slices."""
        (a0, a1), (b0, b1), (c0, c1) = self.bbox
        return (slice(a0, a1), slice(b0, b1), slice(c0, c1))


@dataclass(frozen=True, eq=False)
class Instances:
    """Lesion domains of one subject: a label map and one :class:`Instance` record per id.

    Iterating yields the records in id order; ``instances.mask(i)`` is domain ``i`` as a boolean
    array.
    """

    labels: IntArray
    affine: np.ndarray
    records: tuple[Instance, ...]

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, instance_id: int) -> Instance:
        for record in self.records:
            if record.id == instance_id:
                return record
        raise KeyError(f"no instance with id {instance_id}; ids are {self.ids}")

    @property
    def ids(self) -> list[int]:
        """The ids, in order."""
        return [r.id for r in self.records]

    def mask(self, instance_id: int) -> BoolArray:
        """Domain ``instance_id`` as a boolean array on the label grid."""
        self[instance_id]
        return np.asarray(self.labels == instance_id)

    def of_kind(self, *kinds: InstanceKind) -> list[Instance]:
        """The records whose kind is one of ``kinds``."""
        return [r for r in self.records if r.kind in kinds]

    def predicted_mask(self) -> BoolArray:
        """The segmentation: the voxels of the predicted lesions (kinds :data:`PREDICTED_KINDS`),
        i.e. the probability thresholded, split into components and cleared of those at or
        below the minimum volume; FN and TN domains are not in it."""
        ids = [r.id for r in self.records if r.kind in PREDICTED_KINDS]
        return np.isin(self.labels, ids)


def _structure(connectivity: int) -> np.ndarray:
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ConfigurationError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, rank)


def label_components(mask: np.ndarray, connectivity: Connectivity = 18) -> tuple[IntArray, int]:
    """Connected components of a 3D mask, numbered 1..n by the raster position of their first voxel.

    Uses connected-components-3d (measured several times faster than ``scipy.ndimage.label`` on
    brain-sized volumes, see ``benchmarks/components.py``) and renumbers its labels so that ids do
    not depend on the backend's scan order.
    """
    _structure(connectivity)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ConfigurationError(f"mask must be 3D, got shape {mask.shape}")
    raw = cc3d.connected_components(
        np.ascontiguousarray(mask, dtype=bool), connectivity=connectivity
    )
    n = int(raw.max())
    if n == 0:
        return np.zeros(mask.shape, dtype=np.int32), 0
    flat = raw.ravel(order="C")
    foreground = np.flatnonzero(flat)
    present, first = np.unique(flat[foreground], return_index=True)
    order = present[np.argsort(first, kind="stable")]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return relabel[raw], len(order)


def _records(
    labels: IntArray, affine: np.ndarray, ids: Sequence[int], kinds: Sequence[InstanceKind]
) -> list[Instance]:
    voxel_volume = voxel_volume_mm3(affine)
    records = []
    objects = ndimage.find_objects(labels)
    for instance_id, kind in zip(ids, kinds, strict=True):
        box = objects[instance_id - 1]
        assert box is not None
        local = np.argwhere(labels[box] == instance_id)
        offset = np.array([s.start for s in box])
        centroid = local.mean(axis=0) + offset
        world = voxel_to_world(affine, centroid)
        records.append(
            Instance(
                id=int(instance_id),
                volume_mm3=len(local) * voxel_volume,
                n_voxels=len(local),
                centroid_voxel=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                centroid_world=(float(world[0]), float(world[1]), float(world[2])),
                bbox=(
                    (box[0].start, box[0].stop),
                    (box[1].start, box[1].stop),
                    (box[2].start, box[2].stop),
                ),
                kind=kind,
            )
        )
    return records


def connected_components(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
    kind: InstanceKind = "lesion",
) -> Instances:
    """Components of ``mask`` larger than ``min_volume_mm3`` as :class:`Instances` (SPEC §1)."""
    affine = np.asarray(affine, dtype=np.float64)
    voxel_volume = voxel_volume_mm3(affine)
    labels, n = lesion_components(mask, voxel_volume, connectivity, min_volume_mm3)
    ids = list(range(1, n + 1))
    return Instances(labels, affine, tuple(_records(labels, affine, ids, [kind] * len(ids))))


def lesion_components(
    mask: np.ndarray,
    voxel_volume_mm3: float,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
) -> tuple[IntArray, int]:
    """The lesions of a binary mask (SPEC §1): its connected components of volume above
    ``min_volume_mm3``, numbered 1..n in the raster order of their first voxel.

    The one rule that turns a thresholded probability (or a reference mask) into lesions: the
    segmentation, the lesion table and the segmentation metrics all count lesions with it.
    """
    if min_volume_mm3 < 0:
        raise ConfigurationError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3}")
    labels, n = label_components(mask, connectivity)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts[1:] * voxel_volume_mm3 > min_volume_mm3) + 1
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return relabel[labels], len(keep)


def find_instances(
    prob: np.ndarray,
    affine: np.ndarray,
    *,
    threshold: float = 0.3,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
) -> Instances:
    """Lesion instances of a probability map (SPEC §1, §5).

    Parameters
    ----------
    prob
        Lesion probability ``[X, Y, Z]`` (a torch tensor is accepted).
    affine
        The grid's voxel-to-world matrix; gives voxel volumes and world centroids.
    threshold
        Voxels with ``prob >= threshold`` are lesion (paper: 0.3 U-Net, 0.4 nnU-Net / Swin UNETR).
    connectivity
        6, 18 (default, as the authors' scripts) or 26.
    min_volume_mm3
        Components of volume ≤ this are dropped.

    Examples
    --------
    >>> prob = np.zeros((10, 10, 10)); prob[2:5, 2:5, 2:5] = 0.9
    >>> instances = find_instances(prob, np.eye(4))
    >>> [(r.id, r.volume_mm3) for r in instances]
    [(1, 27.0)]
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigurationError(f"threshold must be in [0, 1], got {threshold}")
    prob_array = np.asarray(prob.detach().cpu() if hasattr(prob, "detach") else prob)
    if prob_array.ndim != 3:
        raise ConfigurationError(f"prob must be a 3D map [X, Y, Z], got shape {prob_array.shape}")
    return connected_components(
        prob_array >= threshold,
        affine,
        connectivity=connectivity,
        min_volume_mm3=min_volume_mm3,
    )


def relabel_in_raster_order(
    labels: IntArray, affine: np.ndarray, kinds: dict[int, InstanceKind]
) -> tuple[Instances, dict[int, int]]:
    """Instances of a label map whose ids need renumbering (e.g. after a reorientation).

    Ids are given as :func:`classify_instances` gives them: predicted components (``lesion``,
    ``TP``, ``FP``) first, then ``FN``, each group in the raster order of its first voxel, then
    ``TN`` in their current id order.

    Parameters
    ----------
    labels
        Label map with the old ids.
    affine
        The grid's voxel-to-world matrix.
    kinds
        The kind of every old id.

    Returns
    -------
    instances, mapping
        The renumbered instances, and ``{old id: new id}``.
    """
    labels = np.asarray(labels)
    flat = labels.ravel(order="C")
    foreground = np.flatnonzero(flat)
    present, first = np.unique(flat[foreground], return_index=True)
    first_voxel = dict(zip(present.tolist(), first.tolist(), strict=True))
    groups: list[list[int]] = [[], [], []]
    for old, kind in kinds.items():
        group = 2 if kind == "TN" else 1 if kind == "FN" else 0
        groups[group].append(old)
    order = sorted(groups[0], key=first_voxel.__getitem__)
    order += sorted(groups[1], key=first_voxel.__getitem__) + sorted(groups[2])
    mapping = {old: new for new, old in enumerate(order, start=1)}
    relabel = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    for old, new in mapping.items():
        relabel[old] = new
    renumbered = relabel[labels]
    records = _records(
        renumbered,
        np.asarray(affine, dtype=np.float64),
        list(mapping.values()),
        [kinds[old] for old in mapping],
    )
    return Instances(renumbered, np.asarray(affine, dtype=np.float64), tuple(records)), mapping


def classify_instances(
    predicted: Instances,
    reference: np.ndarray,
    *,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
    tissue_mask: np.ndarray | None = None,
    n_true_negatives: int = 0,
    min_distance_mm: float = 3.0,
    seed: int | np.random.Generator = 0,
) -> Instances:
    """Type predicted lesions TP/FP against a reference and add FN and TN domains (SPEC §1).

    Ids: predicted components keep theirs (1..n, typed TP when they overlap any reference voxel,
    else FP); reference components (same connectivity and size rule) with no predicted voxel follow
    as FN (n+1..n+m, in raster order); sampled TN blobs come last.

    Parameters
    ----------
    predicted
        Output of :func:`find_instances`.
    reference
        Ground-truth lesion mask on the same grid.
    tissue_mask
        Where TN domains may lie (white matter where known, else the brain); required when
        ``n_true_negatives > 0``.
    n_true_negatives
        How many TN blobs to sample.
    min_distance_mm
        Minimum distance of every TN voxel from any predicted or reference lesion voxel.
    seed
        Seed or generator for TN sampling.
    """
    reference = np.asarray(reference) != 0
    if reference.shape != predicted.labels.shape:
        raise ConfigurationError(
            f"reference shape {reference.shape} differs from the prediction's "
            f"{predicted.labels.shape}"
        )
    overlapping = set(np.unique(predicted.labels[reference]).tolist()) - {0}
    typed = [replace(r, kind="TP" if r.id in overlapping else "FP") for r in predicted]
    labels = predicted.labels.copy()
    reference_components = connected_components(
        reference, predicted.affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3
    )
    next_id = len(typed) + 1
    missed_ids = []
    for component in reference_components:
        domain = reference_components.labels == component.id
        if not (predicted.labels[domain] > 0).any():
            labels[domain] = next_id
            missed_ids.append(next_id)
            next_id += 1
    records = typed + _records(labels, predicted.affine, missed_ids, ["FN"] * len(missed_ids))
    if n_true_negatives > 0:
        if tissue_mask is None:
            raise ConfigurationError("n_true_negatives > 0 needs a tissue_mask to sample TN in")
        tp_volumes = [r.volume_mm3 for r in typed if r.kind == "TP"]
        lesions = (predicted.labels > 0) | reference
        blobs = sample_true_negatives(
            np.asarray(tissue_mask) != 0,
            lesions,
            predicted.affine,
            n=n_true_negatives,
            volumes_mm3=tp_volumes,
            min_distance_mm=min_distance_mm,
            seed=seed,
        )
        tn_ids = []
        for blob in blobs:
            labels[blob] = next_id
            tn_ids.append(next_id)
            next_id += 1
        records += _records(labels, predicted.affine, tn_ids, ["TN"] * len(tn_ids))
    return Instances(labels, predicted.affine, tuple(records))


def sample_true_negatives(
    tissue_mask: BoolArray,
    lesion_mask: BoolArray,
    affine: np.ndarray,
    *,
    n: int,
    volumes_mm3: Sequence[float] = (),
    min_distance_mm: float = 3.0,
    seed: int | np.random.Generator = 0,
    max_attempts_per_blob: int = 50,
) -> list[BoolArray]:
    """Sample ``n`` TN blobs in ``tissue_mask``, every voxel ≥ ``min_distance_mm`` from a lesion.

    Each blob grows from a random seed voxel through the allowed region, nearest voxels (in mm)
    first, until it reaches a volume drawn from ``volumes_mm3`` (the subject's TP volumes; when
    empty, log-uniform in 10–200 mm³). Blobs are connected (6-connectivity growth), do not overlap
    each other, and are deterministic for a given seed. Fewer than ``n`` are returned only when the
    allowed region is exhausted.
    """
    if n < 0:
        raise ConfigurationError(f"n must be >= 0, got {n}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    voxel_volume = voxel_volume_mm3(affine)
    if lesion_mask.any():
        distance = ndimage.distance_transform_edt(~lesion_mask, sampling=spacing)
        allowed = tissue_mask & (distance >= min_distance_mm)
    else:
        allowed = tissue_mask.copy()
    blobs: list[BoolArray] = []
    for _ in range(n):
        if volumes_mm3:
            target_mm3 = float(rng.choice(np.asarray(volumes_mm3, dtype=float)))
        else:
            low, high = TN_FALLBACK_VOLUMES_MM3
            target_mm3 = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        target = max(1, round(target_mm3 / voxel_volume))
        candidates = np.argwhere(allowed)
        if len(candidates) == 0:
            break
        best: BoolArray | None = None
        for _attempt in range(max_attempts_per_blob):
            start = tuple(candidates[rng.integers(len(candidates))])
            blob = _grow_blob(allowed, start, target, spacing)
            if best is None or blob.sum() > best.sum():
                best = blob
            if blob.sum() == target:
                break
        assert best is not None
        blobs.append(best)
        allowed &= ~best
    return blobs


def _grow_blob(
    allowed: BoolArray, start: tuple[int, ...], target: int, spacing: np.ndarray
) -> BoolArray:
    """Grow a connected blob of up to ``target`` voxels from ``start``, nearest (mm) first."""
    blob = np.zeros_like(allowed)
    origin = np.asarray(start, dtype=float)
    heap: list[tuple[float, tuple[int, ...]]] = [(0.0, start)]
    seen = {start}
    steps = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    count = 0
    while heap and count < target:
        _, voxel = heapq.heappop(heap)
        blob[voxel] = True
        count += 1
        for step in steps:
            neighbour = tuple(v + s for v, s in zip(voxel, step, strict=True))
            if neighbour in seen:
                continue
            if not all(0 <= c < size for c, size in zip(neighbour, allowed.shape, strict=True)):
                continue
            seen.add(neighbour)
            if allowed[neighbour]:
                offset = (np.asarray(neighbour) - origin) * spacing
                heapq.heappush(heap, (float(offset @ offset), neighbour))
    return blob
