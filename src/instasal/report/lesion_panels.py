"""One domain's panels in the subject report: its figure at its own colour range and at the run's
shared range, and the cropped volumes of its interactive viewer.

A lesion's SmoothGrad map of each channel is drawn on a diverging scale: at its own range (the
map's largest |peak| or |trough|), so a TP with peaks of 0.1 is not blank beside a TN with peaks
of 3, nor a T1w map beside its FLAIR map; and at the range shared by every channel of every domain
of the run (the largest over all of them), so colours compare. Both figures are drawn; the page
shows one at a time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from instasal.io import Subject, load_image
from instasal.pipeline.results import ExplainResult
from instasal.report.subject_figures import figure_png, lesion_figure
from instasal.report.viewer import lesion_volumes

__all__ = ["LesionPanel", "lesion_panel", "lesion_scales", "panel_rows", "shared_scale"]


def _largest_magnitude(values: Sequence[Any]) -> float:
    finite = [abs(float(v)) for v in values if pd.notna(v) and np.isfinite(float(v))]
    return max(finite, default=0.0)


def lesion_scales(
    row: Mapping[Hashable, Any], channels: Sequence[str], fallback: float
) -> dict[str, float]:
    """The own colour range of each channel's map of a domain: its largest |peak| or |trough|
    (``fallback`` where both are 0 or missing, a map with nothing to draw)."""
    scales = {}
    for name in channels:
        largest = _largest_magnitude([row[f"peak_{name}"], row[f"trough_{name}"]])
        scales[name] = largest if largest > 0 else fallback
    return scales


def shared_scale(table: pd.DataFrame, channels: Sequence[str]) -> float:
    """The colour range shared by every domain of a lesion table (1 for a table of zeros)."""
    largest = _largest_magnitude(
        [v for name in channels for kind in ("peak", "trough") for v in table[f"{kind}_{name}"]]
    )
    return largest if largest > 0 else 1.0


def panel_rows(table: pd.DataFrame, cap: int) -> list[dict[Hashable, Any]]:
    """The rows of the domains that get a report panel: the ``cap`` largest, in id order."""
    largest = table.sort_values(["volume_mm3", "id"], ascending=[False, True]).head(cap)
    return largest.sort_values("id").to_dict(orient="records")


@dataclass(frozen=True)
class LesionPanel:
    """A domain's figure (PNG) at its channels' own ranges and at the shared range, the own
    ranges by channel, and the volumes of its viewer (as JSON-ready dicts)."""

    own_png: bytes
    shared_png: bytes
    scales: dict[str, float]
    volumes: list[dict[str, Any]]


def lesion_panel(
    result: ExplainResult, subject: Subject, row: Mapping[Hashable, Any], shared: float
) -> LesionPanel:
    """Read one domain's maps back from the run's NIfTI outputs and draw its panel."""
    channels = subject.channel_names
    layout = result.layout
    lesion_id = int(row["id"])
    saliency = np.stack(
        [
            np.asarray(load_image(layout.smoothgrad(lesion_id, name)).dataobj, np.float32)
            for name in channels
        ]
    )
    cam_path = layout.gradcam(lesion_id, normalised=True)
    cam = np.asarray(load_image(cam_path).dataobj, np.float32) if cam_path.exists() else None
    domain = result.instances.mask(lesion_id)
    anatomy = list(subject.data)
    own = lesion_scales(row, channels, shared)

    def draw(scales: list[float]) -> bytes:
        figure = lesion_figure(
            anatomy,
            channels,
            saliency,
            domain,
            subject.affine,
            scales=scales,
            gradcam=cam,
            gradcam_peak=float(row["gradcam_peak"]),
            title=f"domain {lesion_id} ({row['type']})",
        )
        return figure_png(figure)

    own_png = draw(list(own.values()))
    volumes = lesion_volumes(
        anatomy, channels, saliency, domain, subject.affine, scales=own, gradcam=cam
    )
    same = all(scale == shared for scale in own.values())
    return LesionPanel(
        own_png,
        own_png if same else draw([shared] * len(channels)),
        own,
        [asdict(volume) for volume in volumes],
    )
