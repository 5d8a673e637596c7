"""Derive the MS lesion-location prior shipped with the v2 phantom generator, from SAMSEG's atlas.

SAMSEG (FreeSurfer's sequence-adaptive segmentation; Cerri et al., NeuroImage 225:117471, 2021)
ships a lesion probability per node of its level-2 tetrahedral atlas mesh
(``samseg/atlas/Lesion_Components/lesion_alphas.npz``). This script rasterises that mesh with
SAMSEG's own ``gems`` module onto its template grid (MNI space, 1 mm, x-flipped affine),
resamples it by
affine (trilinear) onto nilearn's MNI152 2 mm grid (99×117×95, origin (−98, −134, −72)), and writes
``src/instasal/phantoms/data/samseg_lesion_prior.npz`` with its provenance.

It runs once, by a developer, in a throwaway environment (``samseg`` needs numpy < 2 and compiles
``surfa``, ~7 min); instasal itself never imports samseg::

    python3.11 -m venv /tmp/samseg_venv
    /tmp/samseg_venv/bin/pip install "numpy<2" samseg==0.4a0 nibabel scipy
    /tmp/samseg_venv/bin/python scripts/derive_lesion_prior.py
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MNI_2MM_SHAPE = (99, 117, 95)
MNI_2MM_AFFINE = np.array(
    [[2.0, 0, 0, -98.0], [0, 2.0, 0, -134.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]]
)
ATLAS_FOLDER = "atlas/20Subjects_smoothing2_down2_smoothingForAffine2"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rasterise_prior(samseg_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Lesion probability on SAMSEG's template grid, and that grid's affine."""
    from samseg import gems

    template = nib.load(samseg_root / ATLAS_FOLDER / "template.nii.gz")
    collection = gems.KvlMeshCollection()
    collection.read(str(samseg_root / ATLAS_FOLDER / "atlas_level2.txt.gz"))
    mesh = collection.reference_mesh
    alphas = np.load(samseg_root / "atlas/Lesion_Components/lesion_alphas.npz")
    lesion = np.asarray(alphas["lesion_alphas_level_2"], dtype=np.float64)
    if lesion.shape[0] != mesh.alphas.shape[0]:
        raise SystemExit(f"{lesion.shape[0]} lesion alphas for {mesh.alphas.shape[0]} mesh nodes")
    mesh.alphas = np.stack([1.0 - lesion, lesion], axis=1).astype(np.float32)
    probabilities = mesh.rasterize_atlas(tuple(int(n) for n in template.shape[:3]))
    # gems rasterises probabilities as uint16 fractions of 65535 (samseg divides the same way).
    lesion_probability = np.asarray(probabilities[..., 1], dtype=np.float32) / 65535.0
    return lesion_probability, np.asarray(template.affine)


def resample_to_mni_2mm(prior: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Trilinear resampling by affine onto nilearn's MNI152 2 mm grid (0 outside the source)."""
    target = np.indices(MNI_2MM_SHAPE, dtype=np.float64).reshape(3, -1)
    world = MNI_2MM_AFFINE[:3, :3] @ target + MNI_2MM_AFFINE[:3, 3:4]
    inverse = np.linalg.inv(affine)
    source = inverse[:3, :3] @ world + inverse[:3, 3:4]
    values = ndimage.map_coordinates(prior, source, order=1, mode="constant", cval=0.0)
    return values.reshape(MNI_2MM_SHAPE).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1]
        / "src/instasal/phantoms/data/samseg_lesion_prior.npz",
    )
    arguments = parser.parse_args()
    import samseg

    root = Path(samseg.__path__[0])
    prior, affine = rasterise_prior(root)
    resampled = resample_to_mni_2mm(prior, affine)
    provenance = {
        "what": "MS lesion probability, SAMSEG lesion atlas (level-2 mesh, lesion alphas), "
        "rasterised with samseg.gems and resampled by affine (trilinear) to the MNI152 2 mm grid",
        "source_package": f"samseg {metadata.version('samseg')} (PyPI wheel, MIT licence)",
        "reference": "Cerri S, Puonti O, Meier DS, et al. A contrast-adaptive method for "
        "simultaneous whole-brain and lesion segmentation in multiple sclerosis. "
        "NeuroImage 225:117471, 2021",
        "sha256_lesion_alphas": _sha256(root / "atlas/Lesion_Components/lesion_alphas.npz"),
        "sha256_atlas_level2": _sha256(root / ATLAS_FOLDER / "atlas_level2.txt.gz"),
        "template_affine": affine.tolist(),
        "grid_affine": MNI_2MM_AFFINE.tolist(),
        "source_max": float(prior.max()),
        "resampled_max": float(resampled.max()),
        "script": "scripts/derive_lesion_prior.py",
        "derived_on": datetime.date.today().isoformat(),
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        arguments.out,
        prior=resampled.astype(np.float16),
        affine=MNI_2MM_AFFINE,
        provenance=np.array(json.dumps(provenance, indent=1)),
    )
    print(json.dumps(provenance, indent=1))
    print(f"wrote {arguments.out} ({arguments.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
