#!/usr/bin/env python
"""Evaluate the built-in models on a held-out labelled cohort; optionally record it in their cards.

Example (the table of ``docs/models.md``)::

    nice -n 5 python scripts/evaluate_models.py runs/phantoms_v2/test --out runs/evaluation \\
        --update-cards

prints a Markdown table (nDSC, lesion TPR / FDR / FNR, counts, beside the paper's values), writes
``metrics_per_subject.tsv`` and ``metrics_summary.tsv`` to ``--out`` and, with ``--update-cards``,
stores each model's summary as ``metrics["test"]`` in ``src/instasal/weights/<name>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

PAPER = {  # Spagnolo et al., test set: nDSC, lesion TPR, FDR, FNR
    "unet": (0.71, 0.79, 0.37, 0.20),
    "nnunet": (0.78, 0.78, 0.38, 0.22),
    "swinunetr": (0.80, 0.85, 0.36, 0.14),
}


def main(argv: list[str]) -> int:
    """Run the evaluation; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path, help="labelled BIDS-like cohort (held-out phantoms)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the TSV tables")
    parser.add_argument("--model", action="append", help="model(s); default: every built-in")
    parser.add_argument("--update-cards", action="store_true", help="write metrics into cards")
    parser.add_argument("--overwrite", action="store_true", help="replace existing tables")
    args = parser.parse_args(argv)

    from instasal.io import atomic_write_json
    from instasal.models import available_models, read_card
    from instasal.models.export import cohort_description
    from instasal.models.loaders import weights_folder
    from instasal.models.metrics import evaluate_cohort

    names = args.model or available_models()
    _, summary = evaluate_cohort(
        names, args.cohort, out=args.out, overwrite=args.overwrite, write_probabilities=True
    )
    header = ["model", "threshold", "nDSC", "TPR", "FDR", "FNR", "lesions (ref / pred)"]
    print("| " + " | ".join([*header, "paper nDSC / TPR / FDR / FNR"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summary.to_dict("records"):
        paper = PAPER.get(str(row["model"]))
        paper_text = (
            f"{paper[0]:.2f} / {paper[1]:.0%} / {paper[2]:.0%} / {paper[3]:.0%}" if paper else "–"
        )
        print(
            f"| {row['model']} | {row['threshold']:.2f} | {row['ndsc']:.2f} ± {row['ndsc_sd']:.2f} "
            f"| {row['tpr']:.0%} | {row['fdr']:.0%} | {row['fnr']:.0%} "
            f"| {int(row['n_reference'])} / {int(row['n_predicted'])} | {paper_text} |"
        )
    _print_detection_by_volume(args.cohort, args.out, summary.to_dict("records"))
    if args.update_cards:
        cohort = cohort_description(args.cohort)
        for row in summary.to_dict("records"):
            path = weights_folder() / f"{row['model']}.json"
            card = read_card(path)
            test = {k: v for k, v in row.items() if k != "model"} | {"cohort": cohort}
            updated = card.updated(metrics=card.metrics | {"test": test})
            atomic_write_json(path, updated.to_dict(), overwrite=True)
            print(f"updated {path}", file=sys.stderr)
    return 0


def _print_detection_by_volume(cohort: Path, out: Path, rows: list[dict[str, object]]) -> None:
    """Lesion TPR per reference volume band, from the probability maps just written."""
    from instasal.dataset import discover_dataset
    from instasal.io import load_mask, read_subject
    from instasal.models.metrics import detection_by_volume

    edges = (5.0, 8.0, 24.0, 64.0, 200.0, float("inf"))
    references = {}
    for files in discover_dataset(cohort):
        if files.lesion_mask is not None:
            subject = read_subject(files.images)
            references[files.subject_id] = (load_mask(files.lesion_mask, subject), subject.affine)
    bands = [f"{low:g}–{high:g}" for low, high in itertools.pairwise(edges)]
    print()
    print("| model | " + " | ".join(f"TPR {band} mm³" for band in bands) + " |")
    print("|---|" + "---|" * len(bands))
    for row in rows:
        counts = np.zeros((len(bands), 2), dtype=int)
        for subject_id, (reference, affine) in references.items():
            image = nib.load(out / str(row["model"]) / f"{subject_id}_prob.nii.gz")
            probability = np.asarray(image.dataobj)
            for k, (_, _, n_ref, n_det) in enumerate(
                detection_by_volume(
                    reference,
                    probability,
                    affine,
                    threshold=float(row["threshold"]),
                    edges_mm3=edges,
                )
            ):
                counts[k] += (n_ref, n_det)
        cells = [f"{det / ref:.0%} ({det}/{ref})" if ref else "–" for ref, det in counts]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
