#!/usr/bin/env python
"""Compare instance Grad-CAM++ at layers of a built-in model (zero maps, grain, faithfulness).

Example (the comparison reported in ``docs/method.md``)::

    nice -n 5 python scripts/gradcam_layers.py runs/results_cohort --out runs/gradcam_layers \\
        --subjects 3 --domains 4

For each labelled subject, up to ``--domains`` TP and FP domains (largest first) get one
Grad-CAM++ map per layer (patch context, as in the report). Per map it records:

- ``zero``: the map is zero everywhere (no positive evidence at that layer);
- ``fine_energy``: the share of the map's energy finer than a Gaussian of 1 voxel (σ), i.e.
  ``‖m − G₁ * m‖² / ‖m‖²`` — the checkerboard of a transposed convolution shows up here;
- ``deletion_gain``: the deletion-curve gain over 3 random orders of :mod:`instasal.trust`
  (mean probability of Ω; higher is more faithful).

It writes ``layers.tsv`` (one row per domain and layer) and prints the per-layer summary.

Rule, fixed before the first full run: another layer replaces the authors' as a built-in default
only if, over the TP domains, its share of zero maps is not higher than the authors' layer's, its
median ``fine_energy`` is lower, and its median deletion gain is higher by more than 0.05.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

LAYERS = {
    "authors": "model.1.submodule.2.conv",
    "up2_block": "model.1.submodule.2",
    "skip1": "model.1",
    "up3_block": "model.1.submodule.1.submodule.2",
    "encoder1": "model.0",
}


def _fine_energy(saliency_map: np.ndarray) -> float:
    total = float(np.sum(saliency_map**2))
    if total == 0.0:
        return float("nan")
    return float(np.sum((saliency_map - gaussian_filter(saliency_map, 1.0)) ** 2) / total)


def main(argv: list[str]) -> int:
    """Run the comparison; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path, help="labelled BIDS-like cohort")
    parser.add_argument("--out", type=Path, required=True, help="folder for layers.tsv")
    parser.add_argument("--model", default="unet", help="built-in model (U-Net layer names)")
    parser.add_argument("--subjects", type=int, default=3, help="at most this many subjects")
    parser.add_argument("--domains", type=int, default=4, help="TP and FP domains per subject")
    args = parser.parse_args(argv)

    from instasal.experiments.subjects import prepared_subjects
    from instasal.io import atomic_write_text
    from instasal.models import load_model
    from instasal.saliency import ExplainedPass, GradCamConfig, instance_gradcam_many
    from instasal.trust import deletion_insertion

    model = load_model(args.model)
    patch = ExplainedPass(context="patch")
    rows = []
    for prepared in prepared_subjects(args.cohort, model, limit=args.subjects):
        name = prepared.files.subject_id
        for kind in ("TP", "FP"):
            records = sorted(prepared.instances.of_kind(kind), key=lambda r: -r.n_voxels)
            domains = {r.id: prepared.instances.mask(r.id) for r in records[: args.domains]}
            maps = {
                label: instance_gradcam_many(
                    prepared.network, prepared.x, domains, GradCamConfig(layer), patch
                )
                for label, layer in LAYERS.items()
            }
            for lesion, omega in domains.items():
                per_layer = {label: maps[label][lesion].cpu().numpy() for label in LAYERS}
                faithful = deletion_insertion(
                    prepared.network,
                    prepared.x,
                    omega,
                    {f"gradcam_{label}": m for label, m in per_layer.items()},
                    spacing=prepared.subject.spacing,
                    tissue=prepared.brain_mask,
                    explained=patch,
                )
                for label, saliency_map in per_layer.items():
                    rows.append(
                        {
                            "subject": name,
                            "lesion": lesion,
                            "type": kind,
                            "layer": label,
                            "module": LAYERS[label],
                            "zero": bool(np.all(saliency_map == 0)),
                            "fine_energy": _fine_energy(saliency_map),
                            "deletion_gain": faithful.numbers[f"deletion_gain_gradcam_{label}"],
                        }
                    )
        print(f"{name}: done", flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        args.out / "layers.tsv", table.to_csv(sep="\t", index=False, na_rep="n/a"), overwrite=True
    )
    summary = table.groupby(["layer", "type"]).agg(
        n=("zero", "size"),
        zero_share=("zero", "mean"),
        fine_energy_median=("fine_energy", "median"),
        deletion_gain_median=("deletion_gain", "median"),
    )
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
