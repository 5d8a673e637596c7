"""The per-lesion part of an explain run: saliency maps, Grad-CAM, summary rows, records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from instasal.instances import Instances
from instasal.io import Subject, write_nifti
from instasal.pipeline.outputs import RunLayout
from instasal.pipeline.settings import ExplainSettings
from instasal.summaries import lesion_summary, saliency_columns
from instasal.typing import Context

__all__ = ["LESIONS_PER_BATCH", "REGION_NAMES", "explain_lesions", "region_of", "table_columns"]

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


def explain_lesions(
    todo: list[Any],
    instances: Instances,
    network: Any,
    x: Any,
    subject: Subject,
    probability: np.ndarray,
    region_map: np.ndarray | None,
    layout: RunLayout,
    key: str,
    settings: ExplainSettings,
    *,
    context: Context,
    target: int,
    layer: str | None,
    rows: list[dict[str, Any]],
    progress: Callable[[str, float, float], None],
) -> None:
    """Explain the domains in ``todo`` in small batches sharing noise draws and forward passes."""
    from instasal.saliency import instance_gradcam_many, instance_smoothgrad_many, normalise_map

    if not todo:
        return
    draws = 1 if settings.noise_level == 0 else settings.n_samples  # no noise: one exact draw
    total_rows = float(sum(r.n_voxels for r in todo) * draws)
    done_rows = 0.0
    for start in range(0, len(todo), LESIONS_PER_BATCH):
        batch = todo[start : start + LESIONS_PER_BATCH]
        domains = {r.id: instances.mask(r.id) for r in batch}
        offset = done_rows
        ids = ", ".join(str(r.id) for r in batch)

        def report_rows(done: int, total: int, offset: float = offset, ids: str = ids) -> None:
            progress(f"saliency of lesion(s) {ids}", offset + done, total_rows)

        maps = instance_smoothgrad_many(
            network,
            x,
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
                network,
                x,
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
            domain = domains[record.id]
            saliency = maps[record.id].detach().cpu().numpy()
            files = []
            for k, channel in enumerate(subject.channel_names):
                path = layout.smoothgrad(record.id, channel)
                write_nifti(
                    saliency[k], subject.affine, path, header=subject.header, overwrite=True
                )
                files.append(path)
            row: dict[str, Any] = {
                "id": record.id,
                "type": record.kind,
                "region": region_of(region_map, domain),
                "volume_mm3": record.volume_mm3,
                "n_voxels": record.n_voxels,
                "centroid_i": record.centroid_voxel[0],
                "centroid_j": record.centroid_voxel[1],
                "centroid_k": record.centroid_voxel[2],
                "centroid_x": record.centroid_world[0],
                "centroid_y": record.centroid_world[1],
                "centroid_z": record.centroid_world[2],
                "prob_mean": float(probability[domain].mean()),
                "prob_max": float(probability[domain].max()),
            }
            row |= lesion_summary(saliency, domain, subject.spacing, subject.channel_names)
            if record.id in cams:
                cam = cams[record.id]
                cam_array = cam.detach().cpu().numpy()
                write_nifti(
                    cam_array,
                    subject.affine,
                    layout.gradcam(record.id),
                    header=subject.header,
                    overwrite=True,
                )
                write_nifti(
                    normalise_map(cam).detach().cpu().numpy(),
                    subject.affine,
                    layout.gradcam(record.id, normalised=True),
                    header=subject.header,
                    overwrite=True,
                )
                files += [layout.gradcam(record.id), layout.gradcam(record.id, normalised=True)]
                peak = int(np.argmax(cam_array))
                row["gradcam_peak"] = float(cam_array.ravel()[peak])
                row["gradcam_peak_voxel"] = ",".join(
                    str(int(i)) for i in np.unravel_index(peak, cam_array.shape)
                )
            else:
                row["gradcam_peak"] = float("nan")
                row["gradcam_peak_voxel"] = "n/a"
            layout.write_lesion_record(
                record.id,
                {
                    "run_key": key,
                    "row": row,
                    "files": [str(p.relative_to(layout.root)) for p in files],
                },
            )
            rows.append(row)
