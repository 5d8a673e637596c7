"""Figures of an explain run: per-lesion orthogonal slices and the summary plots.

Saliency maps are quantitative: each channel's map is drawn on a diverging colour scale centred
on zero whose range the caller gives (the report draws each lesion's channels at their own ranges,
and again all at the range shared by every lesion of the run, so colours compare across channels
and lesions) and prints on the row's colour bar. Images are reoriented to RAS before
slicing and shown in neurological convention (L on the left); every panel marks the domain with
its outline and with ticks on the panel's edges at the domain's centre, visible however small the
domain is.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


OUTLINE_COLOUR = "#39ff14"


def _draw_outline(axis: Axes, outline: np.ndarray) -> None:
    """The domain's outline on one plane, closed where the domain meets the plane's edge.

    The plane is padded with one empty voxel on every side, so a contour exists for planes one
    voxel thin (a slab image) and an outline touching the edge is drawn round, not left open. A
    dark line under the green keeps it visible on bright anatomy and on hot Grad-CAM++ colours.
    """
    rows, columns = outline.shape
    for colour, width in (("black", 2.0), (OUTLINE_COLOUR, 0.9)):
        axis.contour(
            np.arange(-1, columns + 1),
            np.arange(-1, rows + 1),
            np.pad(outline, 1),
            levels=[0.5],
            colors=colour,
            linewidths=width,
        )
    axis.set_xlim(-0.5, columns - 0.5)
    axis.set_ylim(-0.5, rows - 0.5)


def _mark_centre(axis: Axes, x: float, y: float) -> None:
    """Ticks on the bottom and left edges of a panel, pointing at the domain's centre."""
    for position, marker in (((x, 0.0), "^"), ((0.0, y), ">")):
        axis.plot(
            *position,
            marker=marker,
            markersize=6,
            color=OUTLINE_COLOUR,
            markeredgecolor="black",
            markeredgewidth=0.6,
            transform=axis.get_xaxis_transform() if marker == "^" else axis.get_yaxis_transform(),
            clip_on=False,
        )


def lesion_figure(
    anatomy: Sequence[np.ndarray],
    channel_names: Sequence[str],
    saliency: np.ndarray,
    domain: np.ndarray,
    affine: np.ndarray,
    *,
    scales: Sequence[float],
    gradcam: np.ndarray | None = None,
    gradcam_peak: float = float("nan"),
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
        The lesion domain; its contour and ticks at its centre are drawn on every panel.
    scales
        Half-range of each channel's diverging colour scale (logit per intensity unit), printed
        on its row's colour bar.
    gradcam
        The Grad-CAM++ map divided by its peak (so in [0, 1]), when computed.
    gradcam_peak
        The raw Grad-CAM++ peak that ``gradcam`` was divided by, printed on its colour bar.
    """
    extra = [gradcam] if gradcam is not None else []
    spacing, oriented = to_ras(affine, *anatomy, *saliency, domain.astype(np.uint8), *extra)
    n_channels = len(anatomy)
    images = oriented[:n_channels]
    mask = oriented[2 * n_channels]
    rows: list[tuple[str, np.ndarray, np.ndarray | None, str, float]] = [
        (name, image, None, "", 0.0) for name, image in zip(channel_names, images, strict=True)
    ]
    maps = oriented[n_channels : 2 * n_channels]
    for name, image, value, scale in zip(channel_names, images, maps, scales, strict=True):
        rows.append((f"SmoothGrad {name}", image, value, "saliency", scale))
    if gradcam is not None:
        rows.append(("Grad-CAM++ ÷ its peak", images[0], oriented[-1], "cam", 1.0))
    centre = [round(c) for c in np.argwhere(mask).mean(axis=0)]
    halves = [max(4, int(HALF_WINDOW_MM / s)) for s in spacing]
    windows = [_window(c, h, n) for c, h, n in zip(centre, halves, mask.shape, strict=True)]
    layout = ConstrainedLayoutEngine(w_pad=0.01, h_pad=0.01, hspace=0.0, wspace=0.0)
    figure, axes = plt.subplots(
        len(rows), 3, figsize=(6.4, 1.95 * len(rows) + 0.4), squeeze=False, layout=layout
    )
    geometry = _PanelGeometry(
        centre,
        windows,
        [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]],
        _planes(mask, centre, windows),
    )
    for row, (label, image, overlay, kind, scale) in enumerate(rows):
        artist = None
        for column in range(3):
            drawn = _draw_panel(axes[row, column], geometry, column, image, overlay, kind, scale)
            artist = drawn if drawn is not None else artist
            if row == 0:
                _label_top_panel(axes[row, column], column)
        axes[row, 0].set_ylabel(label, fontsize=8)
        if artist is not None:
            bar = figure.colorbar(artist, ax=axes[row, 2], shrink=0.9, pad=0.02)
            if kind == "saliency":
                bar.set_label(f"±{scale:.3g} logit / unit", fontsize=7)
            else:
                bar.set_label(f"fraction of raw peak {gradcam_peak:.3g}", fontsize=7)
            bar.ax.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


@dataclass(frozen=True)
class _PanelGeometry:
    """Where a lesion figure's panels cut the volume: the domain's centre voxel, the window of
    each axis, each plane's aspect ratio, and the domain's mask on each plane."""

    centre: list[int]
    windows: list[slice]
    aspects: list[float]
    mask_planes: list[np.ndarray]

    def centre_in_plane(self, column: int) -> tuple[float, float]:
        """The domain centre's (x, y) position on the axial, coronal or sagittal panel."""
        axes = ((0, 1), (0, 2), (1, 2))[column]
        return (
            self.centre[axes[0]] - self.windows[axes[0]].start,
            self.centre[axes[1]] - self.windows[axes[1]].start,
        )


def _draw_panel(
    axis: Axes,
    geometry: _PanelGeometry,
    column: int,
    image: np.ndarray,
    overlay: np.ndarray | None,
    kind: str,
    scale: float,
) -> Any:
    """One panel: anatomy, the overlay of its row, the domain's outline and centre ticks; returns
    the overlay's colour mapping (None without one)."""
    plane = _planes(image, geometry.centre, geometry.windows)[column]
    aspect = geometry.aspects[column]
    low, high = np.percentile(image[image != 0], [1, 99.5]) if image.any() else (0, 1)
    axis.imshow(plane, cmap="gray", origin="lower", vmin=low, vmax=high, aspect=aspect)
    artist = None
    if overlay is not None:
        values = _planes(overlay, geometry.centre, geometry.windows)[column]
        if kind == "saliency":
            artist = _diverging_overlay(axis, values, scale, aspect)
        elif np.any(overlay > 0):
            artist = _cam_overlay(axis, values, aspect)
        elif column == 1:
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
    outline = geometry.mask_planes[column]
    if outline.any():
        _draw_outline(axis, outline)
    _mark_centre(axis, *geometry.centre_in_plane(column))
    axis.set_xticks([])
    axis.set_yticks([])
    return artist


def _label_top_panel(axis: Axes, column: int) -> None:
    """The plane's name above a top-row panel and its orientation letters inside it."""
    axis.set_title(("axial", "coronal", "sagittal")[column], fontsize=9)
    left, right = ("P", "A") if column == 2 else ("L", "R")
    for x, letter in ((0.06, left), (0.88, right)):
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


def _cam_overlay(axis: Axes, values: np.ndarray, aspect: float) -> ScalarMappable:
    """Grad-CAM++ over its peak on a sequential scale, opacity growing with the value, so weak
    evidence lets the anatomy show instead of tinting the whole panel."""
    norm = Normalize(vmin=0.0, vmax=1.0)
    colours = colormaps["inferno"](norm(values))
    colours[..., 3] = np.clip(2.0 * values, 0.0, 1.0) * 0.85
    axis.imshow(colours, origin="lower", aspect=aspect)
    return ScalarMappable(norm=norm, cmap="inferno")


def _diverging_overlay(axis: Any, values: np.ndarray, scale: float, aspect: float) -> Any:
    """Draw ``values`` on a diverging scale ±``scale`` centred on zero, opacity growing with |v|.

    Colours are the quantitative scale the caller chose; opacity only lets the anatomy show
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
