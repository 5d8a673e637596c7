"""The interactive viewer of the subject report: cropped volumes for NiiVue, embedded in the page.

NiiVue (BSD-2-Clause, ``vendor/niivue.umd.js``) draws the slices with WebGL2 in the browser; the
report inlines its script and every volume (gzipped NIfTI as base64), so it opens offline. Each
domain gets a box of ``2 * half_window_mm`` around its centre, clipped to the image; intensities
and maps keep their values (float32), so the value under the crosshair is the stored one.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "VIEWER_HALF_WINDOW_MM",
    "ViewerVolume",
    "crop_box",
    "domain_outline",
    "lesion_volumes",
    "niivue_script",
]


@dataclass(frozen=True)
class ViewerVolume:
    """One volume of a lesion's viewer: its NIfTI bytes and how NiiVue shows it."""

    key: str
    label: str
    unit: str
    nifti_base64: str
    colormap: str
    colormap_negative: str
    cal_min: float
    cal_max: float


def niivue_script() -> str:
    """The bundled NiiVue browser script (UMD build; defines ``window.niivue``)."""
    return (
        resources.files("instasal.report")
        .joinpath("vendor/niivue.umd.js")
        .read_text("utf-8")
        .replace("</script", "<\\/script")
    )


VIEWER_HALF_WINDOW_MM = 20.0
VIEWER_MARGIN_MM = 10.0


def crop_box(
    domain: np.ndarray,
    affine: np.ndarray,
    half_window_mm: float = VIEWER_HALF_WINDOW_MM,
    margin_mm: float = VIEWER_MARGIN_MM,
) -> tuple[slice, slice, slice]:
    """Voxel box around a domain: ``half_window_mm`` on each side of its bounding-box centre, or
    the bounding box plus ``margin_mm`` where the domain is larger; clipped to the image.

    Parameters
    ----------
    domain
        The domain mask (3D, boolean); must hold at least one voxel.
    affine
        Voxel-to-world affine of the mask; the box extent per axis is ``half_window_mm`` divided
        by that axis' voxel size.
    half_window_mm
        Least half-width of the box in millimetres.
    margin_mm
        Least distance from the domain to the box's faces (millimetres), where the image allows.
    """
    spacing = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    found = np.argwhere(domain)
    centre = (found.min(axis=0) + found.max(axis=0)) / 2.0
    box = []
    for axis in range(3):
        extent = (found[:, axis].max() - found[:, axis].min()) / 2.0
        half = int(np.ceil(max(half_window_mm / spacing[axis], extent + margin_mm / spacing[axis])))
        start = max(int(np.floor(centre[axis])) - half, 0)
        stop = min(int(np.ceil(centre[axis])) + half + 1, domain.shape[axis])
        box.append(slice(start, stop))
    return box[0], box[1], box[2]


def domain_outline(domain: np.ndarray) -> np.ndarray:
    """The voxels just outside a domain: not in it, with a face neighbour (6-connectivity) in it.

    Drawn over the image, this ring surrounds the domain on every slice through it and never
    covers one of the domain's own voxels (a one-voxel lesion's boundary would be the lesion).
    """
    inside = np.asarray(domain, bool)
    return ndimage.binary_dilation(inside) & ~inside


def _nifti_base64(data: np.ndarray, affine: np.ndarray) -> str:
    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    image.header.set_xyzt_units("mm")
    return base64.b64encode(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)).decode(
        "ascii"
    )


def lesion_volumes(
    anatomy: Sequence[np.ndarray],
    channel_names: Sequence[str],
    saliency: np.ndarray,
    domain: np.ndarray,
    affine: np.ndarray,
    *,
    scales: Mapping[str, float],
    gradcam: np.ndarray | None,
    half_window_mm: float = VIEWER_HALF_WINDOW_MM,
) -> list[ViewerVolume]:
    """The cropped volumes of one domain's viewer: channels, SmoothGrad maps, Grad-CAM++, outline.

    Parameters
    ----------
    anatomy
        The input channels (raw intensities), one 3D array each, in the saliency maps' grid.
    saliency
        The domain's SmoothGrad map ``[C, X, Y, Z]`` (logit per unit of normalised intensity).
    domain
        The domain mask.
    affine
        Voxel-to-world affine of the grid; the crop's affine is shifted to the box's first voxel,
        so world positions are kept.
    scales
        Half-range of each channel's SmoothGrad colour scale, by channel name (the report's page
        can switch them to the range shared by every domain).
    gradcam
        The [0, 1]-normalised Grad-CAM++ map, or None when not computed.
    half_window_mm
        Least half-width of the crop in millimetres (see :func:`crop_box`).
    """
    box = crop_box(domain, affine, half_window_mm)
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    cropped_affine = np.asarray(affine, float) @ shift
    volumes = []
    for name, image in zip(channel_names, anatomy, strict=True):
        crop = np.asarray(image, np.float32)[box]
        low, high = np.percentile(crop, [1.0, 99.0])
        volumes.append(
            ViewerVolume(
                f"image-{name}",
                name,
                "input intensity",
                _nifti_base64(crop, cropped_affine),
                "gray",
                "",
                float(low),
                float(high if high > low else low + 1.0),
            )
        )
    for index, name in enumerate(channel_names):
        volumes.append(
            ViewerVolume(
                f"smoothgrad-{name}",
                f"SmoothGrad {name}",
                "logit per normalised intensity",
                _nifti_base64(saliency[index][box], cropped_affine),
                "warm",
                "winter",
                scales[name] * 0.02,
                scales[name],
            )
        )
    if gradcam is not None:
        volumes.append(
            ViewerVolume(
                "gradcam",
                "Grad-CAM++",
                "normalised to [0, 1]",
                _nifti_base64(gradcam[box], cropped_affine),
                "hot",
                "",
                0.02,
                1.0,
            )
        )
    volumes.append(
        ViewerVolume(
            "outline",
            "domain outline",
            "1 just outside the domain",
            _nifti_base64(domain_outline(domain)[box].astype(np.float32), cropped_affine),
            "green",
            "",
            0.5,
            1.0,
        )
    )
    return volumes
