"""One domain's panels in the subject report: its figure at its own colour range and at the run's
shared range, and the cropped volumes of its interactive viewer.

A lesion's SmoothGrad values are drawn on a diverging scale of half-range ``scale``: its own
(the largest |peak| or |trough| over its channels), so a TP with peaks of 0.1 is not blank beside
a TN with peaks of 3; and the range shared by every domain of the run (the largest over all of
them), so colours compare between domains. Both figures are drawn; the page shows one at a time.
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

__all__ = ["LesionPanel", "lesion_panel", "lesion_scale", "panel_rows", "shared_scale"]


def _largest_magnitude(values: Sequence[Any]) -> float:
    finite = [abs(float(v)) for v in values if pd.notna(v) and np.isfinite(float(v))]
    return max(finite, default=0.0)


def lesion_scale(row: Mapping[Hashable, Any], channels: Sequence[str], fallback: float) -> float:
    """A domain's own colour range: its largest |peak| or |trough| over the channels
    (``fallback`` where every value is 0 or missing, a map with nothing to draw)."""
    largest = _largest_magnitude(
        [row[f"{kind}_{name}"] for name in channels for kind in ("peak", "trough")]
    )
    return largest if largest > 0 else fallback


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
    """A domain's figure (PNG) at its own range and at the shared range, the two ranges, and the
    volumes of its viewer (as JSON-ready dicts)."""

    own_png: bytes
    shared_png: bytes
    scale: float
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
    own = lesion_scale(row, channels, shared)

    def draw(scale: float) -> bytes:
        figure = lesion_figure(
            anatomy,
            channels,
            saliency,
            domain,
            subject.affine,
            scale=scale,
            gradcam=cam,
            gradcam_peak=float(row["gradcam_peak"]),
            title=f"domain {lesion_id} ({row['type']})",
        )
        return figure_png(figure)

    own_png = draw(own)
    volumes = lesion_volumes(
        anatomy, channels, saliency, domain, subject.affine, scale=own, gradcam=cam
    )
    return LesionPanel(
        own_png,
        own_png if own == shared else draw(shared),
        own,
        [asdict(volume) for volume in volumes],
    )
