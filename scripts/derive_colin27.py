"""Derive the Colin27 anatomy shipped with the v2 phantom generator: whole head and tissue maps.

Colin27 (Holmes et al., J Comput Assist Tomogr 22:324–333, 1998: one subject scanned 27 times,
averaged, in MNI space) ships in Debian's ``mricron-data`` as ``ch2.nii.gz`` (whole head) and
``ch2bet.nii.gz`` (brain extracted), 181×217×181 at 1 mm. This script resamples both by affine
(trilinear) onto nilearn's MNI152 1 mm grid (197×233×189, origin (−98, −134, −72)); splits the
brain into CSF, grey and white matter with a three-class Gaussian mixture on the brain-extracted
intensity whose spatial prior is nilearn's MNI152 tissue maps smoothed by 3 mm (EM; the posteriors
serve as partial-volume maps; without the prior, white matter's bias-field tail was taken for grey
matter: 1.09 L of grey, 0.43 L of white); averages everything over 2 mm voxels like the MNI152
2 mm anatomy; and writes ``src/instasal/phantoms/data/colin27_2mm.npz`` (uint8 maps, 2 mm only:
at 1 mm the whole head alone would be 3.5 MB) with its provenance.

Run once, by a developer (``apt-get download mricron-data && dpkg -x mricron-data_*.deb root``)::

    .venv/bin/python scripts/derive_colin27.py root/usr/share/mricron/templates
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MNI_1MM_SHAPE = (197, 233, 189)
MNI_1MM_AFFINE = np.array(
    [[1.0, 0, 0, -98.0], [0, 1.0, 0, -134.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]]
)
EM_ITERATIONS = 60
# ch2 intensity (0-255) below which a voxel is air: between the air noise and the scalp.
HEAD_THRESHOLD = 12.0


def resample_to_mni(path: Path) -> np.ndarray:
    """A NIfTI volume resampled by affine (trilinear) onto nilearn's MNI152 1 mm grid."""
    image = nib.nifti1.load(path)
    target = np.indices(MNI_1MM_SHAPE, dtype=np.float64).reshape(3, -1)
    world = MNI_1MM_AFFINE[:3, :3] @ target + MNI_1MM_AFFINE[:3, 3:4]
    inverse = np.linalg.inv(image.affine)
    source = inverse[:3, :3] @ world + inverse[:3, 3:4]
    data = np.asarray(image.get_fdata(), dtype=np.float32)
    values = ndimage.map_coordinates(data, source, order=1, mode="constant", cval=0.0)
    return values.reshape(MNI_1MM_SHAPE).astype(np.float32)


def mni_tissue_prior(brain: np.ndarray) -> np.ndarray:
    """Spatial prior ``[N, 3]`` (CSF, grey, white) at the ``brain`` voxels: nilearn's MNI152 maps,
    smoothed by 3 mm, with a 5 % floor so that the intensity can overrule them."""
    from nilearn import datasets

    grey = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    prior = np.stack(
        [ndimage.gaussian_filter(np.clip(m, 0, 1), 3.0)[brain] for m in (csf, grey, white)], 1
    )
    prior += 0.05
    return np.asarray(prior / prior.sum(axis=1, keepdims=True))


def tissue_posteriors(
    intensity: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Posteriors ``[N, 3]`` (CSF, grey, white) of a 3-class Gaussian mixture on ``intensity``
    with the spatial ``prior`` ``[N, 3]``, fitted by EM, and the fitted means and sds."""
    means = np.quantile(intensity, [0.1, 0.5, 0.9]).astype(np.float64)
    spreads = np.full(3, intensity.std() / 3.0)
    values = intensity.astype(np.float64)[:, None]
    log_prior = np.log(prior)
    for _ in range(EM_ITERATIONS):
        log_posterior = log_prior - np.log(spreads) - 0.5 * ((values - means) / spreads) ** 2
        log_posterior -= log_posterior.max(axis=1, keepdims=True)
        posterior = np.exp(log_posterior)
        posterior /= posterior.sum(axis=1, keepdims=True)
        mass = posterior.sum(axis=0)
        means = (posterior * values).sum(axis=0) / mass
        spreads = np.sqrt((posterior * (values - means) ** 2).sum(axis=0) / mass)
    fitted = {"means": means.tolist(), "sds": spreads.tolist()}
    return posterior.astype(np.float32), fitted


def pool_to_2mm(volume: np.ndarray) -> np.ndarray:
    """Average over 2 mm voxels centred on every second 1 mm voxel, weights (1/4, 1/2, 1/4) per
    axis (as ``instasal.phantoms.anatomy`` pools the MNI152 maps)."""
    pooled = volume.astype(np.float32)
    for axis in range(3):
        pooled = ndimage.correlate1d(pooled, [0.25, 0.5, 0.25], axis=axis, mode="constant")
    return np.ascontiguousarray(pooled[::2, ::2, ::2])


def _to_uint8(fraction: np.ndarray) -> np.ndarray:
    return np.round(np.clip(fraction, 0.0, 1.0) * 255.0).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates", type=Path, help="folder holding ch2.nii.gz and ch2bet.nii.gz")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src/instasal/phantoms/data/colin27_2mm.npz",
    )
    arguments = parser.parse_args()
    head = resample_to_mni(arguments.templates / "ch2.nii.gz")
    brain_intensity = resample_to_mni(arguments.templates / "ch2bet.nii.gz")
    brain = brain_intensity > 0.5
    posterior, fitted = tissue_posteriors(brain_intensity[brain], mni_tissue_prior(brain))
    maps = np.zeros((3, *MNI_1MM_SHAPE), dtype=np.float32)
    maps[:, brain] = posterior.T
    # Air is noise in ch2; the generator draws its own noise floor, so outside the head is 0.
    head_mask = ndimage.binary_closing(head > HEAD_THRESHOLD, iterations=3)
    labels, _ = ndimage.label(head_mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    head_mask = ndimage.binary_fill_holes(labels == int(sizes.argmax()))
    head = np.where(head_mask, head, 0.0)
    affine_2mm = MNI_1MM_AFFINE.copy()
    affine_2mm[:3, :3] *= 2.0
    provenance = {
        "what": "Colin27 whole-head T1 (ch2) and brain (ch2bet) resampled by affine (trilinear) to "
        "nilearn's MNI152 1 mm grid; CSF/grey/white = posteriors of a 3-class Gaussian mixture "
        f"(EM, {EM_ITERATIONS} iterations) on the brain-extracted intensity with nilearn's MNI152 "
        "tissue maps (3 mm smoothed, 5 % floor) as spatial prior; air outside the head set to 0; "
        "all averaged over 2 mm voxels (weights 1/4, 1/2, 1/4 per axis)",
        "source": "Debian mricron-data (ch2.nii.gz, ch2bet.nii.gz)",
        "reference": "Holmes CJ, Hoge R, Collins L, et al. Enhancement of MR images using "
        "registration for signal averaging. J Comput Assist Tomogr 22:324-333, 1998",
        "sha256_ch2": hashlib.sha256((arguments.templates / "ch2.nii.gz").read_bytes()).hexdigest(),
        "sha256_ch2bet": hashlib.sha256(
            (arguments.templates / "ch2bet.nii.gz").read_bytes()
        ).hexdigest(),
        "mixture": fitted,
        "grid_affine": affine_2mm.tolist(),
        "intensity_unit": "head and brain_t1: 255 = twice the white-matter mean; maps: 255 = 1",
        "script": "scripts/derive_colin27.py",
        "derived_on": datetime.date.today().isoformat(),
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    white_level = float(fitted["means"][2])
    np.savez_compressed(
        arguments.out,
        head=_to_uint8(pool_to_2mm(head) / (2.0 * white_level)),
        brain_t1=_to_uint8(pool_to_2mm(brain_intensity) / (2.0 * white_level)),
        csf=_to_uint8(pool_to_2mm(maps[0])),
        grey=_to_uint8(pool_to_2mm(maps[1])),
        white=_to_uint8(pool_to_2mm(maps[2])),
        brain=_to_uint8(pool_to_2mm(brain.astype(np.float32))),
        affine=affine_2mm,
        provenance=np.array(json.dumps(provenance)),
    )
    print(json.dumps(provenance, indent=1))
    print(f"wrote {arguments.out} ({arguments.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
