"""One lesion explained at 1 mm and at 2 mm side by side (docs/geometry.md).

A phantom subject at 2 mm is cropped to 64 mm around its largest lesion; the crop is also
interpolated (trilinear) to 1 mm over the same extent and stored LPS (to exercise the
reorientation too). Both are explained with the built-in 2 mm U-Net: the 2 mm run at the model's
own voxel size, the 1 mm run through the in-graph resampling. In each run the predicted lesion
nearest to that lesion's centre is shown, and the
figure shows FLAIR and the FLAIR SmoothGrad map through each lesion's centroid (axial), with the
peak saliency and its density per mm³ in the titles. Prints both lesions' table rows.

Usage: ``.venv/bin/python scripts/geometry_figure.py --out docs/geometry_1mm_2mm.png [--work DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from instasal.instances import label_components
from instasal.io import atomic_write_bytes
from instasal.phantoms import make_phantom
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.report.subject_figures import figure_png
from instasal.saliency import SmoothGradConfig

SEED = 3
SETTINGS = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=4, seed=0), gradcam=None)


def _crops() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A 64 mm crop (2 mm) around the phantom's largest lesion, its affine, the lesion's centre."""
    phantom = make_phantom(SEED, resolution=2)
    labels, _ = label_components(phantom.lesion_mask)
    largest = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    centre = np.argwhere(labels == largest).mean(axis=0)
    low = np.maximum(centre.round().astype(int) - 16, 0)
    box = tuple(slice(int(start), int(start) + 32) for start in low)
    affine = phantom.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ low
    world = phantom.affine[:3, :3] @ centre + phantom.affine[:3, 3]
    images = {"FLAIR": phantom.flair[box], "T1w": phantom.t1w[box]}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in images.items()}, affine, world


def _write(
    folder: Path, images: dict[str, np.ndarray], affine: np.ndarray, codes: str
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in images.items():
        image = nib.Nifti1Image(data, affine)
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(codes))
        )
        path = folder / f"sub-01_{name}.nii.gz"
        nib.save(image.as_reoriented(transform), path)
        paths.append(path)
    return paths


def _at_1mm(
    images: dict[str, np.ndarray], affine: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 2 mm images interpolated (trilinear) to 1 mm over the same extent, and their affine."""
    fine = {
        name: F.interpolate(torch.from_numpy(data)[None, None], scale_factor=2.0, mode="trilinear")[
            0, 0
        ].numpy()
        for name, data in images.items()
    }
    fine_affine = affine.copy()
    fine_affine[:3, 3] -= affine[:3, :3] @ np.full(3, 0.25)  # 1 mm centres at ±¼ of 2 mm voxels
    fine_affine[:3, :3] /= 2
    return fine, fine_affine


def _axial(path: Path, centroid_world: np.ndarray) -> tuple[np.ndarray, float]:
    """The axial slice (RAS-reoriented) through a world point, and the voxel size."""
    image = nib.as_closest_canonical(nib.load(path))
    voxel = np.linalg.solve(image.affine, [*centroid_world, 1.0])[:3]
    k = round(float(voxel[2]))
    return np.asarray(image.dataobj)[:, :, k].T, float(image.header.get_zooms()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="instasal-geometry-"))
    runs = {}
    coarse_images, affine, centre = _crops()
    inputs = {2: (coarse_images, affine, "RAS"), 1: (*_at_1mm(coarse_images, affine), "LPS")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for resolution, (data, grid, codes) in inputs.items():
            images = _write(work / f"{resolution}mm", data, grid, codes)
            runs[resolution] = explain_subject(  # resumes: rerunning redraws only the figure
                images,
                "unet",
                work / f"{resolution}mm" / "out",
                settings=SETTINGS,
                report=False,
            )

    def nearest(table: pd.DataFrame) -> pd.Series:
        points = table[["centroid_x", "centroid_y", "centroid_z"]].to_numpy(float)
        return table.iloc[int(np.argmin(np.linalg.norm(points - centre, axis=1)))]

    coarse, fine = nearest(runs[2].table), nearest(runs[1].table)
    columns = ["id", "volume_mm3", "n_voxels", "centroid_x", "centroid_y", "centroid_z"]
    columns += ["prob_max", "peak_FLAIR", "density_peak_FLAIR", "peak_T1w", "density_peak_T1w"]
    for resolution, row in ((2, coarse), (1, fine)):
        print(f"{resolution} mm:", {c: row[c] for c in columns})
    figure, axes = plt.subplots(2, 2, figsize=(7.2, 7.0))
    for column, (resolution, row) in enumerate(((2, coarse), (1, fine))):
        layout = runs[resolution].layout
        centroid = row[["centroid_x", "centroid_y", "centroid_z"]].to_numpy(float)
        flair, size = _axial(layout.root.parent / "sub-01_FLAIR.nii.gz", centroid)
        saliency, _ = _axial(layout.smoothgrad(int(row["id"]), "FLAIR"), centroid)
        extent = (0, flair.shape[1] * size, 0, flair.shape[0] * size)
        axes[0, column].imshow(flair, cmap="gray", origin="lower", extent=extent)
        axes[0, column].set_title(f"FLAIR, {resolution} mm voxels")
        bound = float(np.abs(saliency).max()) or 1.0
        shown = axes[1, column].imshow(
            saliency, cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower", extent=extent
        )
        axes[1, column].set_title(
            f"FLAIR SmoothGrad, lesion {int(row['id'])} ({row['volume_mm3']:.0f} mm³)\n"
            f"peak {row['peak_FLAIR']:.3f}/voxel = {row['density_peak_FLAIR']:.3f}/mm³",
            fontsize=9,
        )
        figure.colorbar(shown, ax=axes[1, column], fraction=0.046, label="logit per unit")
        for axis in axes[:, column]:
            axis.set_xlabel("mm")
    figure.suptitle("The built-in 2 mm U-Net explains one lesion at 2 mm and at 1 mm", fontsize=10)
    figure.tight_layout()
    atomic_write_bytes(args.out, figure_png(figure, dpi=110), overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
