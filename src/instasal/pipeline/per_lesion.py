"""The per-lesion part of an explain run: saliency maps, Grad-CAM, summary rows, records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instasal.dataset import REGION_LABELS
from instasal.instances import Instance, Instances
from instasal.models.cards import ModelCard
from instasal.models.inference import probability_from_logits
from instasal.pipeline.outputs import RunLayout
from instasal.prepare import PreparedSubject
from instasal.saliency import (
    ExplainedPass,
    GradCamConfig,
    InstanceGradCam,
    InstanceSmoothGrad,
    SmoothGradConfig,
    explained_logits,
    normalise_map,
)
from instasal.saliency.summaries import lesion_summary, saliency_columns
from instasal.typing import InstanceKind, Progress

__all__ = [
    "DOMAIN_KINDS",
    "LESIONS_PER_BATCH",
    "REGION_NAMES",
    "LesionPlan",
    "SubjectSpace",
    "explain_lesions",
    "region_of",
    "sample_domains",
    "table_columns",
]

REGION_NAMES: dict[int, str] = {label: name for name, label in REGION_LABELS.items()}
"""A region map's label → its name in the lesion table (:data:`instasal.dataset.REGION_LABELS`)."""
LESIONS_PER_BATCH = 4
"""Domains explained together (sharing noise draws and forward passes); the resume granularity."""


def table_columns(channel_names: Sequence[str]) -> list[str]:
    base = ["id", "type", "region", "volume_mm3", "n_voxels"]
    base += ["centroid_i", "centroid_j", "centroid_k", "centroid_x", "centroid_y", "centroid_z"]
    base += ["prob_mean", "prob_max", "explained_prob_mean", "explained_prob_max"]
    base += ["explained_detects"]
    return [*base, *saliency_columns(channel_names), "gradcam_peak", "gradcam_peak_voxel"]


def region_of(region_map: np.ndarray | None, domain: np.ndarray) -> str:
    """The most frequent non-zero region label in ``domain`` by name (``none``: no label there)."""
    if region_map is None:
        return "n/a"
    values = region_map[domain]
    values = values[values > 0]
    if values.size == 0:
        return "none"
    return REGION_NAMES.get(int(np.bincount(values).argmax()), "other")


DOMAIN_KINDS: tuple[InstanceKind, ...] = ("lesion", "TP", "FP", "FN", "TN")
"""The domain types, in the order their ``max_lesions`` draws are seeded."""


def sample_domains(instances: Instances, max_lesions: int | None, seed: int) -> list[Instance]:
    """The domains to explain: all, or at most ``max_lesions`` of each type drawn at random.

    Each type's draw is a uniform sample without replacement from a generator seeded with
    ``(seed, index of the type in DOMAIN_KINDS)``: the same run seed draws the same domains, and
    no part of the volume is favoured (a prefix of the ids, which are in raster order, would
    favour the first rows of the grid). Returned in id order.
    """
    if max_lesions is None:
        return list(instances)
    chosen: list[Instance] = []
    for index, kind in enumerate(DOMAIN_KINDS):
        records = instances.of_kind(kind)
        generator = np.random.default_rng([seed, index])
        drawn = generator.choice(len(records), size=min(max_lesions, len(records)), replace=False)
        chosen += [records[int(i)] for i in drawn]
    return sorted(chosen, key=lambda record: record.id)


@dataclass(frozen=True, eq=False)
class SubjectSpace:
    """One subject's lesion domains on both grids, for the per-lesion stage.

    Attributes
    ----------
    prepared
        The subject in the model's input space (:func:`instasal.prepare.prepare_subject`).
    probability
        Target probability on the working grid.
    instances
        Domains on the working grid (where saliency is computed).
    native
        The same domains on the stored grid (ids, centroids and boxes of the table).
    native_ids
        Working id → stored id.
    region_map
        Region labels on the working grid, if given.
    """

    prepared: PreparedSubject
    probability: np.ndarray
    instances: Instances
    native: Instances
    native_ids: dict[int, int]
    region_map: np.ndarray | None


@dataclass(frozen=True)
class LesionPlan:
    """How every domain of a run is explained: the settings, what the run resolved for them, and
    where the results go.

    Attributes
    ----------
    smoothgrad, gradcam
        The run's SmoothGrad and Grad-CAM configs, the Grad-CAM layer named in the prepared
        network (``gradcam=None``: no Grad-CAM); passed to the methods as they are.
    explained
        The forward pass both methods explain (target class, context), resolved for this model.
    layout, key
        The run's files and run key (each domain's record carries the key).
    threshold, card
        The prediction's probability threshold and the model's card (its output activation): a
        domain whose explained forward has more than half its voxels below the threshold is
        marked as not detected by that forward.
    """

    smoothgrad: SmoothGradConfig
    gradcam: GradCamConfig | None
    explained: ExplainedPass
    layout: RunLayout
    key: str
    threshold: float
    card: ModelCard


def explain_lesions(
    todo: Sequence[Instance], space: SubjectSpace, plan: LesionPlan, progress: Progress
) -> list[dict[str, Any]]:
    """Explain the working-grid domains in ``todo`` in small batches sharing noise and forwards.

    Maps are computed on the working grid and written on the stored grid, each domain's record
    as soon as its batch is done (the resume granularity); the returned table rows, in ``todo``'s
    order, describe the stored-grid domains (ids, centroids, peak locations).
    """
    batches = [todo[i : i + LESIONS_PER_BATCH] for i in range(0, len(todo), LESIONS_PER_BATCH)]
    network, x = space.prepared.network, space.prepared.x
    smoothgrad = InstanceSmoothGrad(network, plan.smoothgrad)
    gradcam = None if plan.gradcam is None else InstanceGradCam(network, plan.gradcam)
    batch_rows = [
        smoothgrad.work(x, {r.id: space.instances.mask(r.id) for r in batch}, plan.explained).rows
        for batch in batches
    ]
    total_rows = float(sum(batch_rows))
    done_rows = 0.0
    rows: list[dict[str, Any]] = []
    for batch, batch_total in zip(batches, batch_rows, strict=True):
        offset = done_rows
        ids = ", ".join(str(space.native_ids[r.id]) for r in batch)

        def report_rows(
            _stage: str, done: float, _total: float, offset: float = offset, ids: str = ids
        ) -> None:
            progress(f"saliency of lesion(s) {ids}", offset + done, total_rows)

        domains = {r.id: space.instances.mask(r.id) for r in batch}
        maps = smoothgrad.attribute(x, domains, plan.explained, progress=report_rows)
        cams = {} if gradcam is None else gradcam.attribute(x, domains, plan.explained)
        explained = _explained_columns(batch, space, plan)
        done_rows += batch_total
        for record in batch:
            cam = cams.get(record.id)
            row = _write_lesion(
                space,
                record,
                maps[record.id].detach().cpu().numpy(),
                None if cam is None else cam.detach().cpu().numpy(),
                explained[record.id],
                plan,
            )
            rows.append(row)
    return rows


def _explained_columns(
    batch: Sequence[Instance], space: SubjectSpace, plan: LesionPlan
) -> dict[int, dict[str, Any]]:
    """Per domain, the explained forward's probability over Ω (mean, max) and whether that
    forward detects the domain (at least half its voxels at or above the threshold)."""
    network, x = space.prepared.network, space.prepared.x
    domains = {r.id: space.instances.mask(r.id) for r in batch}
    columns: dict[int, dict[str, Any]] = {}
    for domain_id, logits in explained_logits(network, x, domains, plan.explained).items():
        values = logits.numpy().astype(np.float32)[:, :, None, None]
        probability = probability_from_logits(values, plan.card).reshape(-1)
        columns[domain_id] = {
            "explained_prob_mean": float(probability.mean()),
            "explained_prob_max": float(probability.max()),
            "explained_detects": bool((probability >= plan.threshold).mean() >= 0.5),
        }
    return columns


def _write_lesion(
    space: SubjectSpace,
    record: Instance,
    saliency: np.ndarray,
    cam: np.ndarray | None,
    explained: dict[str, Any],
    plan: LesionPlan,
) -> dict[str, Any]:
    """Write one domain's maps and its record (row and files, under the run key); its row."""
    layout = plan.layout
    row, files = _lesion_outputs(space, record, saliency, cam, layout)
    row |= explained
    layout.write_lesion_record(
        int(row["id"]),
        {
            "run_key": plan.key,
            "row": row,
            "files": [str(p.relative_to(layout.root)) for p in files],
        },
    )
    return row


def _lesion_outputs(
    space: SubjectSpace,
    record: Instance,
    saliency: np.ndarray,
    cam: np.ndarray | None,
    layout: RunLayout,
) -> tuple[dict[str, Any], list[Path]]:
    """Write one domain's maps on the stored grid; its table row and the files written."""
    prepared = space.prepared
    native_subject = prepared.native
    native_id = space.native_ids[record.id]
    native_record = space.native[native_id]
    domain = space.native.mask(native_id)
    working_domain = space.instances.mask(record.id)
    saliency = np.ascontiguousarray(prepared.to_native(saliency))

    def write(array: np.ndarray, path: Path) -> Path:
        return native_subject.on_grid(array).save(path, overwrite=True)

    files = [
        write(saliency[k], layout.smoothgrad(native_id, channel))
        for k, channel in enumerate(native_subject.channel_names)
    ]
    row: dict[str, Any] = {
        "id": native_id,
        "type": native_record.kind,
        "region": region_of(space.region_map, working_domain),
        "volume_mm3": native_record.volume_mm3,
        "n_voxels": native_record.n_voxels,
        "centroid_i": native_record.centroid_voxel[0],
        "centroid_j": native_record.centroid_voxel[1],
        "centroid_k": native_record.centroid_voxel[2],
        "centroid_x": native_record.centroid_world[0],
        "centroid_y": native_record.centroid_world[1],
        "centroid_z": native_record.centroid_world[2],
        "prob_mean": float(space.probability[working_domain].mean()),
        "prob_max": float(space.probability[working_domain].max()),
    }
    row |= lesion_summary(
        saliency,
        domain,
        native_subject.spacing,
        native_subject.channel_names,
        voxel_volume_mm3=native_subject.voxel_volume_mm3,
    )
    if cam is None:
        row["gradcam_peak"] = float("nan")
        row["gradcam_peak_voxel"] = "n/a"
        return row, files
    cam = np.ascontiguousarray(prepared.to_native(cam))
    files.append(write(cam, layout.gradcam(native_id)))
    normalised = normalise_map(torch.from_numpy(cam)).numpy()
    files.append(write(normalised, layout.gradcam(native_id, normalised=True)))
    peak = int(np.argmax(cam))
    row["gradcam_peak"] = float(cam.ravel()[peak])
    row["gradcam_peak_voxel"] = ",".join(str(int(i)) for i in np.unravel_index(peak, cam.shape))
    return row, files
