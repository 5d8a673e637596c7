"""Render orthogonal slices of a phantom subject beside the MNI152 template, to a PNG.

Rows: template T1, phantom T1w, phantom FLAIR, FLAIR with ground truth (lesions red by region
shade, mimics yellow). Columns: axial, coronal, sagittal through a chosen voxel (default: the centre
of the subject's largest lesion, else the grid centre).

With ``--generator v2`` the first row is the subject's own template (MNI152 or Colin27) and the
arm options apply (``--contrast swapped``, ``--head``, ``--anatomy``); the images are windowed
to their 99.5th percentile, so the head arm shows its scalp and fat.

Usage::

    .venv/bin/python scripts/render_phantom.py OUT.png --seed 3 --resolution 1
    .venv/bin/python scripts/render_phantom.py OUT.png --seed 3 --resolution 2 --generator v2 --head
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from instasal.phantoms import make_phantom
from instasal.phantoms.anatomy import load_template_anatomy
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.reference_data import load_colin27
from instasal.typing import Generator


def _slices(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def render(
    out: Path,
    seed: int,
    resolution: int,
    centre: tuple[int, int, int] | None,
    n_lesions: int | None,
    arm: PhantomArm | None = None,
) -> None:
    """Write the figure for ``make_phantom(seed, resolution=resolution)`` (v2 with ``arm``)."""
    generator: Generator = "v1" if arm is None else "v2"
    subject = make_phantom(
        seed,
        resolution=resolution,  # type: ignore[arg-type]
        n_lesions=n_lesions,
        generator=generator,
        arm=arm,
    )
    template = load_template_anatomy(resolution)
    template_name = "MNI152"
    if subject.draws.get("anatomy") == "colin27":
        template, template_name = load_colin27(2).anatomy, "Colin27"
    if centre is None:
        if subject.lesions:
            largest = max(subject.lesions, key=lambda lesion: lesion.volume_mm3)
            centre = largest.centre
        else:
            centre = tuple(n // 2 for n in subject.flair.shape)
    assert centre is not None
    rows = [
        (f"{template_name} template T1", template.t1),
        (f"phantom T1w (seed {seed})", subject.t1w),
        ("phantom FLAIR", subject.flair),
        ("FLAIR + truth (red lesion, yellow mimic)", subject.flair),
    ]
    figure, axes = plt.subplots(4, 3, figsize=(12, 16), facecolor="black")
    for row, (title, volume) in enumerate(rows):
        high = float(np.percentile(volume[volume > 0], 99.5))
        for column, (image, lesion, mimic) in enumerate(
            zip(
                _slices(volume, centre),
                _slices(subject.lesion_mask, centre),
                _slices(subject.mimic_mask, centre),
                strict=True,
            )
        ):
            axis = axes[row, column]
            axis.imshow(image, origin="lower", cmap="gray", vmin=0.0, vmax=high)
            if row == 3:
                overlay = np.zeros((*image.shape, 4))
                overlay[lesion] = (1.0, 0.1, 0.1, 0.55)
                overlay[mimic] = (1.0, 0.9, 0.0, 0.55)
                axis.imshow(overlay, origin="lower")
            axis.set_axis_off()
            if column == 0:
                axis.set_title(title, color="white", fontsize=10, loc="left")
    figure.suptitle(
        f"{generator} seed {seed}, {resolution} mm, {len(subject.lesions)} lesions, "
        f"slice at voxel {centre}" + (f"\n{arm}" if arm else ""),
        color="white",
    )
    figure.tight_layout()
    figure.savefig(out, dpi=80, facecolor="black")
    plt.close(figure)


def main() -> None:
    """Parse arguments and render."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=1)
    parser.add_argument("--lesions", type=int, default=None, help="number of lesions")
    parser.add_argument("--centre", type=int, nargs=3, default=None, help="voxel i j k")
    parser.add_argument("--generator", choices=("v1", "v2"), default="v1")
    parser.add_argument("--contrast", choices=("standard", "swapped"), default="standard")
    parser.add_argument("--head", action="store_true", help="v2: the non-skull-stripped arm")
    parser.add_argument("--anatomy", choices=("drawn", "mni152", "colin27"), default="drawn")
    arguments = parser.parse_args()
    centre = tuple(arguments.centre) if arguments.centre else None
    arm = (
        PhantomArm(
            contrast=arguments.contrast,
            skull_stripped=not arguments.head,
            anatomy=arguments.anatomy,
        )
        if arguments.generator == "v2"
        else None
    )
    render(arguments.out, arguments.seed, arguments.resolution, centre, arguments.lesions, arm)


if __name__ == "__main__":
    main()
