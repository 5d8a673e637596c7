"""Derive the MS lesion-location prior shipped with the v2 phantom generator, from SAMSEG's atlas.

SAMSEG (FreeSurfer's sequence-adaptive segmentation; Cerri et al., NeuroImage 225:117471, 2021)
ships a lesion probability per node of its level-2 tetrahedral atlas mesh
(``samseg/atlas/Lesion_Components/lesion_alphas.npz``). This script rasterises that mesh with
SAMSEG's own ``gems`` module onto its template grid (1 mm, x-flipped affine), and maps it onto
nilearn's MNI152 2009 2 mm grid (99×117×95, origin (−98, −134, −72)).

SAMSEG's template space is FreeSurfer's, not exactly MNI152 2009: resampled by its affine alone,
SAMSEG's lateral ventricles (32 mL, an average of 20 subjects) overlap MNI152's (22 mL) with Dice
0.40 and its white matter with 0.69. The script fits a 9-parameter affine (translation, rotation,
scale) that best overlays SAMSEG's own white-matter and lateral-ventricle priors (rasterised from
the same mesh) on nilearn's MNI152 white matter and the ventricles instasal derives from it, and
resamples the lesion prior through it (trilinear). The fit moves it by ~3 mm and raises the
overlaps to 0.73 and 0.47 (both go into the provenance): most of the difference is shape, which an
affine cannot remove, so the prior's mass still lies mostly 4–20 mm from instasal's MNI152
ventricle mask. It writes ``src/instasal/phantoms/data/samseg_lesion_prior.npz``.

It runs once, by a developer, in a throwaway environment (``samseg`` needs numpy < 2 and compiles
``surfa``, ~7 min); instasal itself never imports samseg. The MNI152 maps come from nilearn in
that environment too::

    python3.11 -m venv /tmp/samseg_venv
    /tmp/samseg_venv/bin/pip install "numpy<2" samseg==0.4a0 nibabel scipy nilearn
    /tmp/samseg_venv/bin/python scripts/derive_lesion_prior.py
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

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


def _labels(samseg_root: Path, word: str) -> list[int]:
    from samseg.io import kvlReadCompressionLookupTable

    _, names, _ = kvlReadCompressionLookupTable(
        str(samseg_root / ATLAS_FOLDER / "compressionLookupTable.txt")
    )
    return [index for index, name in enumerate(names) if word in name]


def rasterise(samseg_root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Lesion, white-matter and lateral-ventricle probabilities on SAMSEG's template grid, and
    that grid's affine."""
    from samseg import gems

    template = nib.nifti1.load(samseg_root / ATLAS_FOLDER / "template.nii.gz")
    collection = gems.KvlMeshCollection()
    collection.read(str(samseg_root / ATLAS_FOLDER / "atlas_level2.txt.gz"))
    mesh = collection.reference_mesh
    structures = np.asarray(mesh.alphas, dtype=np.float64)
    alphas = np.load(samseg_root / "atlas/Lesion_Components/lesion_alphas.npz")
    per_node = {
        "lesion": np.asarray(alphas["lesion_alphas_level_2"], dtype=np.float64),
        "white": structures[:, _labels(samseg_root, "Cerebral-White-Matter")].sum(axis=1),
        "ventricles": structures[:, _labels(samseg_root, "Lateral-Ventricle")].sum(axis=1),
    }
    shape = tuple(int(n) for n in template.shape[:3])
    maps = {}
    for name, values in per_node.items():
        if values.shape[0] != structures.shape[0]:
            raise SystemExit(f"{values.shape[0]} {name} values for {structures.shape[0]} nodes")
        mesh.alphas = np.stack([1.0 - values, values], axis=1).astype(np.float32)
        # gems rasterises probabilities as uint16 fractions of 65535 (samseg divides the same way).
        maps[name] = np.asarray(mesh.rasterize_atlas(shape)[..., 1], dtype=np.float32) / 65535.0
    return maps, np.asarray(template.affine)


def _matrix(parameters: np.ndarray) -> np.ndarray:
    """World-to-world affine (MNI152 → SAMSEG) of translation (mm), rotation (rad) and log-scale."""
    shift, angles, log_scale = parameters[:3], parameters[3:6], parameters[6:9]
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(np.exp(log_scale))
    matrix[:3, 3] = shift
    return matrix


def resample(
    volume: np.ndarray, affine: np.ndarray, world_map: np.ndarray, step: int = 1
) -> np.ndarray:
    """``volume`` (grid ``affine``) at the MNI152 2 mm voxels (every ``step``-th), their world
    coordinates mapped by ``world_map`` first; trilinear, 0 outside."""
    grid = np.indices(MNI_2MM_SHAPE, dtype=np.float64)[:, ::step, ::step, ::step]
    shape = grid.shape[1:]
    world = MNI_2MM_AFFINE[:3, :3] @ grid.reshape(3, -1) + MNI_2MM_AFFINE[:3, 3:4]
    world = world_map[:3, :3] @ world + world_map[:3, 3:4]
    inverse = np.linalg.inv(affine)
    source = inverse[:3, :3] @ world + inverse[:3, 3:4]
    values = ndimage.map_coordinates(volume, source, order=1, mode="constant", cval=0.0)
    return values.reshape(shape).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def fit_alignment(
    maps: dict[str, np.ndarray], affine: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """The MNI152 → SAMSEG world affine that best overlays SAMSEG's white matter and ventricles
    on MNI152's (Powell on 4 mm samples, minus the sum of the two correlations), with overlaps."""
    from nilearn import datasets
    from scipy import optimize

    white = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    ventricles = _mni_ventricles()
    targets = {"white": white[::2, ::2, ::2], "ventricles": ventricles[::2, ::2, ::2]}

    def cost(parameters: np.ndarray) -> float:
        world_map = _matrix(parameters)
        total = 0.0
        for name, target in targets.items():
            moved = resample(maps[name], affine, world_map, step=2)
            total -= float(np.corrcoef(moved.ravel(), target.ravel())[0, 1])
        return total

    result = optimize.minimize(cost, np.zeros(9), method="Powell", options={"xtol": 1e-3})
    world_map = _matrix(result.x)
    overlaps = {}
    for label, mapping in (("affine_only", np.eye(4)), ("fitted", world_map)):
        overlaps[f"white_dice_{label}"] = _dice(
            resample(maps["white"], affine, mapping) > 0.5, white > 0.5
        )
        overlaps[f"ventricle_dice_{label}"] = _dice(
            resample(maps["ventricles"], affine, mapping) > 0.5, ventricles > 0.5
        )
    return world_map, overlaps


def _mni_ventricles() -> np.ndarray:
    """instasal's MNI152 ventricle mask at 2 mm, recomputed here without importing instasal
    (same rule: deep CSF connected to the ventricle bodies, opened by 2 mm)."""
    from nilearn import datasets

    def load(loader: Callable[..., Any]) -> np.ndarray:
        volume = loader(resolution=1).get_fdata().astype(np.float32)
        for axis in range(3):
            volume = ndimage.correlate1d(volume, [0.25, 0.5, 0.25], axis=axis, mode="constant")
        return volume[::2, ::2, ::2]

    brain = np.clip(load(datasets.load_mni152_brain_mask), 0, 1)
    grey = np.clip(load(datasets.load_mni152_gm_template), 0, 1) * brain
    white = np.clip(load(datasets.load_mni152_wm_template), 0, 1) * brain
    csf = np.clip(brain - grey - white, 0, 1)
    exterior = ndimage.distance_transform_edt(brain >= 0.5, sampling=2.0)
    deep = (csf >= 0.5) & (exterior >= 8.0)
    core = ndimage.binary_erosion(deep, iterations=1)
    labels, _ = ndimage.label(core)
    world = [
        MNI_2MM_AFFINE[a, a] * np.arange(n) + MNI_2MM_AFFINE[a, 3]
        for a, n in enumerate(MNI_2MM_SHAPE)
    ]
    box = [(-22.0, 22.0), (-30.0, 15.0), (5.0, 30.0)]
    inside = [(low <= w) & (w <= high) for w, (low, high) in zip(world, box, strict=True)]
    seed_box = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    seeds = np.unique(labels[seed_box & core])
    kept = np.isin(labels, seeds[seeds > 0])
    return np.asarray(ndimage.binary_dilation(kept, iterations=1, mask=deep), dtype=np.float32)


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
    maps, affine = rasterise(root)
    world_map, overlaps = fit_alignment(maps, affine)
    prior = maps["lesion"]
    resampled = resample(prior, affine, world_map)
    provenance = {
        "what": "MS lesion probability, SAMSEG lesion atlas (level-2 mesh, lesion alphas), "
        "rasterised with samseg.gems, resampled (trilinear) to the MNI152 2009 2 mm grid "
        "through a fitted 9-parameter affine (SAMSEG white matter and lateral ventricles "
        "overlaid on MNI152's)",
        "mni_to_samseg_world": world_map.tolist(),
        "alignment_overlaps": overlaps,
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
