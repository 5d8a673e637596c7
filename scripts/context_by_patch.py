"""Open question Q1: does the perilesional context a U-Net needs depend on its training patch?

Overlays the context curves of ``instasal experiment context`` runs (one per model) and prints, per
model, the lesion count, the probability with Ω alone, the peak of the curve and where it lies,
the value at the largest distance and the plateau distance by the experiment's stated rule.

Usage (after ``scripts/q1_patch_sizes.sh`` or equivalent runs)::

    .venv/bin/python scripts/context_by_patch.py runs/q1/context_p32 runs/q1/context_p48 \\
        runs/q1/context_p64 --labels "32³ patch" "48³ patch" "64³ patch" \\
        --out docs/results/context_by_patch.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from instasal.io import atomic_write_bytes
from instasal.report.subject_figures import figure_png

COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="context experiment output folders")
    parser.add_argument("--labels", nargs="+", help="one legend label per run")
    parser.add_argument("--out", type=Path, required=True, help="figure (PNG) to write")
    parser.add_argument("--overwrite", action="store_true")
    arguments = parser.parse_args()
    labels = arguments.labels or [run.name for run in arguments.runs]
    if len(labels) != len(arguments.runs):
        parser.error("give one label per run")
    figure, axis = plt.subplots(figsize=(5.6, 3.6))
    print("model\tn_lesions\tp_alone\tpeak\tpeak_mm\tp_at_max\tplateau_mm")
    for run, label, colour in zip(arguments.runs, labels, COLOURS, strict=False):
        curve = pd.read_csv(run / "context_curve.tsv", sep="\t")
        summary = json.loads((run / "context_summary.json").read_text())
        peak = curve.loc[curve["mean_probability"].idxmax()]
        print(
            f"{label}\t{summary['n_lesions']}\t{summary['probability_alone']:.3f}\t"
            f"{peak['mean_probability']:.3f}\t{peak['distance_mm']:g}\t"
            f"{summary['probability_at_max']:.3f}\t{summary['plateau_mm']}"
        )
        sem = curve["sd_probability"].fillna(0) / curve["n_lesions"] ** 0.5
        axis.plot(
            curve["distance_mm"],
            curve["mean_probability"],
            color=colour,
            label=f"{label} (n={summary['n_lesions']})",
        )
        axis.fill_between(
            curve["distance_mm"],
            curve["mean_probability"] - sem,
            curve["mean_probability"] + sem,
            color=colour,
            alpha=0.15,
        )
    axis.set_xlabel("context kept around the lesion (mm)")
    axis.set_ylabel("mean probability in Ω (± s.e.m.)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, frameon=False, loc="lower right")
    atomic_write_bytes(arguments.out, figure_png(figure, dpi=110), overwrite=arguments.overwrite)
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
