"""The per-lesion part of an explain run: saliency maps, Grad-CAM, summary rows, records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instasal.instances import Instance, Instances
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.settings import ExplainSettings
from instasal.prepare import PreparedSubject
from instasal.saliency import instance_gradcam_many, instance_smoothgrad_many, normalise_map
from instasal.summaries import lesion_summary, saliency_columns
from instasal.typing import Context, Progress

__all__ = [
    "LESIONS_PER_BATCH",
    "REGION_NAMES",
    "SubjectSpace",
    "explain_lesions",
    "region_of",
    "table_columns",
]

REGION_NAMES = {
    1: "periventricular",
    2: "juxtacortical",
    3: "deep white matter",
    4: "infratentorial",
}
LESIONS_PER_BATCH = 4
"""Domains explained together (sharing noise draws and forward passes); the resume granularity."""


def table_columns(channel_names: Sequence[str]) -> list[str]:
    base = ["id", "type", "region", "volume_mm3", "n_voxels"]
    base += ["centroid_i", "centroid_j", "centroid_k", "centroid_x", "centroid_y", "centroid_z"]
    base += ["prob_mean", "prob_max"]
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


def explain_lesions(
    todo: list[Instance],
    space: SubjectSpace,
    layout: RunLayout,
    key: str,
    settings: ExplainSettings,
    *,
    context: Context,
    target: int,
    layer: str | None,
    rows: list[dict[str, Any]],
    progress: Progress,
) -> None:
    """Explain the working-grid domains in ``todo`` in small batches sharing noise and forwards.

    Maps are computed on the working grid and written on the stored grid; table rows describe the
    stored-grid domain (ids, centroids, peak locations).
    """
    if not todo:
        return
    prepared = space.prepared
    draws = 1 if settings.noise_level == 0 else settings.n_samples  # no noise: one exact draw
    total_rows = float(sum(r.n_voxels for r in todo) * draws)
    done_rows = 0.0
    for start in range(0, len(todo), LESIONS_PER_BATCH):
        batch = todo[start : start + LESIONS_PER_BATCH]
        domains = {r.id: space.instances.mask(r.id) for r in batch}
        offset = done_rows
        ids = ", ".join(str(space.native_ids[r.id]) for r in batch)

        def report_rows(done: int, total: int, offset: float = offset, ids: str = ids) -> None:
            progress(f"saliency of lesion(s) {ids}", offset + done, total_rows)

        maps = instance_smoothgrad_many(
            prepared.network,
            prepared.x,
            domains,
            target=target,
            n_samples=settings.n_samples,
            noise_level=settings.noise_level,
            noise_range=settings.noise_range,
            aggregation=settings.aggregation,
            context=context,
            seed=settings.seed,
            engine=settings.engine,
            progress=report_rows,
        )
        done_rows += sum(r.n_voxels for r in batch) * draws
        cams = (
            instance_gradcam_many(
                prepared.network,
                prepared.x,
                domains,
                layer=layer,
                variant=settings.gradcam_variant,
                target=target,
                context=context,
            )
            if settings.gradcam and layer
            else {}
        )
        for record in batch:
            saliency = maps[record.id].detach().cpu().numpy()
            cam = cams[record.id].detach().cpu().numpy() if record.id in cams else None
            row, files = _lesion_outputs(space, record, saliency, cam, layout)
            layout.write_lesion_record(
                int(row["id"]),
                {
                    "run_key": key,
                    "row": row,
                    "files": [str(p.relative_to(layout.root)) for p in files],
                },
            )
            rows.append(row)


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
