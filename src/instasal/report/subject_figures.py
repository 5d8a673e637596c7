"""Figures of an explain run: per-lesion orthogonal slices and the summary plots.

Saliency maps are quantitative: every lesion is drawn with one diverging colour scale centred on
zero and shared by all lesions and channels of the run, so colours compare across lesions.
Images are reoriented to RAS before slicing and shown in neurological convention (L on the left).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import NullFormatter

__all__ = [
    "TYPE_COLOURS",
    "figure_png",
    "lesion_figure",
    "peak_vs_volume_figure",
    "reliance_figure",
    "to_ras",
]

TYPE_COLOURS = {
    "TP": "#1b9e77",
    "FP": "#d95f02",
    "FN": "#7570b3",
    "TN": "#7f7f7f",
    "lesion": "#e7298a",
}
HALF_WINDOW_MM = 40.0


def to_ras(affine: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Reorient 3D arrays to the closest RAS orientation; return the voxel sizes and the arrays."""
    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(
        orientation, nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[orientation[:, 0].argsort()]
    return spacing, [nib.orientations.apply_orientation(a, transform) for a in arrays]


def figure_png(figure: Figure, dpi: int = 80) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _window(centre: float, half: int, size: int) -> slice:
    start = max(0, min(round(centre) - half, size - 2 * half))
    return slice(start, min(size, start + 2 * half))


def _planes(
    volume: np.ndarray, centre: Sequence[int], windows: Sequence[slice]
) -> list[np.ndarray]:
    i, j, k = centre
    return [
        volume[windows[0], windows[1], k].T,  # axial: x right, y up
        volume[windows[0], j, windows[2]].T,  # coronal: x right, z up
        volume[i, windows[1], windows[2]].T,  # sagittal: y right, z up
    ]


def _draw_outline(axis: Axes, outline: np.ndarray) -> None:
    """The domain's outline on one plane, closed where the domain meets the plane's edge.

    The plane is padded with one empty voxel on every side, so a contour exists for planes one
    voxel thin (a slab image) and an outline touching the edge is drawn round, not left open.
    """
    rows, columns = outline.shape
    axis.contour(
        np.arange(-1, columns + 1),
        np.arange(-1, rows + 1),
        np.pad(outline, 1),
        levels=[0.5],
        colors="#39ff14",
        linewidths=0.8,
    )
    axis.set_xlim(-0.5, columns - 0.5)
    axis.set_ylim(-0.5, rows - 0.5)


def lesion_figure(
    anatomy: Sequence[np.ndarray],
    channel_names: Sequence[str],
    saliency: np.ndarray,
    domain: np.ndarray,
    affine: np.ndarray,
    *,
    scale: float,
    gradcam: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Orthogonal slices through a lesion's centre: anatomy, each channel's saliency, Grad-CAM++.

    Parameters
    ----------
    anatomy
        The input channels (raw intensities), one 3D array each.
    saliency
        The lesion's SmoothGrad map ``[C, X, Y, Z]``.
    domain
        The lesion domain; its contour is drawn on every panel.
    scale
        Half-range of the shared diverging colour scale (logit per intensity unit).
    gradcam
        The [0, 1]-normalised Grad-CAM++ map, when computed.
    """
    extra = [gradcam] if gradcam is not None else []
    spacing, oriented = to_ras(affine, *anatomy, *saliency, domain.astype(np.uint8), *extra)
    n_channels = len(anatomy)
    images = oriented[:n_channels]
    maps = oriented[n_channels : 2 * n_channels]
    mask = oriented[2 * n_channels]
    cam = oriented[2 * n_channels + 1] if gradcam is not None else None
    centre = [round(c) for c in np.argwhere(mask).mean(axis=0)]
    halves = [max(4, int(HALF_WINDOW_MM / s)) for s in spacing]
    windows = [_window(c, h, n) for c, h, n in zip(centre, halves, mask.shape, strict=True)]
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    rows: list[tuple[str, np.ndarray, np.ndarray | None, str]] = []
    for name, image in zip(channel_names, images, strict=True):
        rows.append((name, image, None, ""))
    for name, image, value in zip(channel_names, images, maps, strict=True):
        rows.append((f"SmoothGrad {name}", image, value, "saliency"))
    if cam is not None:
        rows.append(("Grad-CAM++ (normalised)", images[0], cam, "cam"))
    layout = ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, hspace=0.0, wspace=0.0)
    figure, axes = plt.subplots(
        len(rows), 3, figsize=(6.4, 1.95 * len(rows) + 0.4), squeeze=False, layout=layout
    )
    mask_planes = _planes(mask, centre, windows)
    saliency_artist = cam_artist = None
    cam_empty = cam is not None and not bool(np.any(cam > 0))
    for row, (label, image, overlay, kind) in enumerate(rows):
        image_planes = _planes(image, centre, windows)
        overlay_planes = _planes(overlay, centre, windows) if overlay is not None else [None] * 3
        for column, (plane, over, outline, aspect) in enumerate(
            zip(image_planes, overlay_planes, mask_planes, aspects, strict=True)
        ):
            axis = axes[row, column]
            low, high = np.percentile(image[image != 0], [1, 99.5]) if image.any() else (0, 1)
            axis.imshow(plane, cmap="gray", origin="lower", vmin=low, vmax=high, aspect=aspect)
            if over is not None and kind == "saliency":
                saliency_artist = _diverging_overlay(axis, over, scale, aspect)
            elif over is not None and cam_empty:
                if column == 1:
                    axis.text(
                        0.5,
                        0.5,
                        "no positive Grad-CAM++\nevidence for this domain",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white",
                        transform=axis.transAxes,
                        bbox={"facecolor": "black", "alpha": 0.7, "edgecolor": "none"},
                    )
            elif over is not None:
                cam_artist = axis.imshow(
                    np.ma.masked_where(over < 0.05, over),
                    cmap="inferno",
                    vmin=0,
                    vmax=1,
                    origin="lower",
                    aspect=aspect,
                    alpha=0.6,
                )
            if outline.any():
                _draw_outline(axis, outline)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(("axial", "coronal", "sagittal")[column], fontsize=9)
            if column == 0:
                axis.set_ylabel(label, fontsize=8)
            if row == 0:
                left, right = ("P", "A") if column == 2 else ("L", "R")
                for x, letter in ((0.03, left), (0.88, right)):
                    axis.text(
                        x,
                        0.04,
                        letter,
                        color="white",
                        fontsize=8,
                        fontweight="bold",
                        transform=axis.transAxes,
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.0, "edgecolor": "none"},
                    )
    if saliency_artist is not None:
        saliency_axes = axes[n_channels : 2 * n_channels, 2].tolist()
        bar = figure.colorbar(saliency_artist, ax=saliency_axes, shrink=0.9, pad=0.02)
        bar.set_label("saliency (logit / intensity unit)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if cam_artist is not None:
        bar = figure.colorbar(cam_artist, ax=axes[-1, 2], shrink=0.9, pad=0.02)
        bar.ax.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _diverging_overlay(axis: Any, values: np.ndarray, scale: float, aspect: float) -> Any:
    """Draw ``values`` on a diverging scale ±``scale`` centred on zero, opacity growing with |v|.

    Colours are the quantitative scale shared by all lesions; opacity only lets the anatomy show
    through where saliency is weak (|v| below a third of the scale fades out linearly).
    """
    norm = Normalize(vmin=-scale, vmax=scale)
    colours = colormaps["RdBu_r"](norm(values))
    colours[..., 3] = np.clip(3.0 * np.abs(values) / scale, 0.0, 1.0) * 0.9
    axis.imshow(colours, origin="lower", aspect=aspect)
    return ScalarMappable(norm=norm, cmap="RdBu_r")


SALIENCY_UNIT = "logit / normalised intensity"


def _type_label(kind: str, n_shown: int, totals: Mapping[str, int] | None) -> str:
    """Legend entry: the domains plotted, and of how many of that type when some were left out."""
    total = (totals or {}).get(kind, n_shown)
    if total > n_shown:
        return f"{kind} ({n_shown} of {total} explained)"
    return f"{kind} (n={n_shown})"


def peak_vs_volume_figure(
    table: pd.DataFrame, channel: str, totals: Mapping[str, int] | None = None
) -> Figure:
    """Peak saliency of ``channel`` against lesion volume, one colour per domain type.

    Parameters
    ----------
    table : pandas.DataFrame
        The lesion table of the explained domains.
    channel : str
        The channel whose peak is plotted.
    totals : mapping of str to int, optional
        Domains per type in the whole instance map; the legend says "k of n explained" where the
        table holds fewer.

    Returns
    -------
    matplotlib.figure.Figure
    """
    figure, axis = plt.subplots(figsize=(5.0, 3.6))
    for kind, group in table.groupby("type"):
        axis.scatter(
            group["volume_mm3"],
            group[f"peak_{channel}"],
            s=22,
            color=TYPE_COLOURS.get(str(kind), "k"),
            label=_type_label(str(kind), len(group), totals),
            alpha=0.85,
            edgecolors="none",
        )
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("volume (mm³)")
    axis.set_ylabel(f"peak {channel} saliency ({SALIENCY_UNIT})")
    axis.axhline(0, color="0.6", lw=0.6)
    axis.legend(fontsize=8, frameon=False)
    axis.set_title(f"Peak {channel} saliency vs lesion volume", fontsize=10)
    return figure


def reliance_figure(
    table: pd.DataFrame, channel_names: Sequence[str], totals: Mapping[str, int] | None = None
) -> Figure:
    """Peak saliency of the first two channels against each other (modality reliance).

    Parameters
    ----------
    table : pandas.DataFrame
        The lesion table of the explained domains.
    channel_names : sequence of str
        The model's channels; the first two are plotted (first on the vertical axis).
    totals : mapping of str to int, optional
        Domains per type in the whole instance map, as in `peak_vs_volume_figure`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    first, second = channel_names[0], channel_names[1]
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    for kind, group in table.groupby("type"):
        axis.scatter(
            group[f"peak_{second}"],
            group[f"peak_{first}"],
            s=22,
            color=TYPE_COLOURS.get(str(kind), "k"),
            label=_type_label(str(kind), len(group), totals),
            alpha=0.85,
            edgecolors="none",
        )
    values = table[[f"peak_{first}", f"peak_{second}"]].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    bottom = min(0.0, float(finite.min())) if finite.size else 0.0
    axis.plot([bottom, top], [bottom, top], color="0.5", lw=0.8, ls="--", label="equal")
    axis.set_xlabel(f"peak {second} saliency ({SALIENCY_UNIT})")
    axis.set_ylabel(f"peak {first} saliency ({SALIENCY_UNIT})")
    axis.legend(fontsize=8, frameon=False)
    axis.set_title(f"Peak saliency per domain: {first} vs {second}", fontsize=10)
    return figure
