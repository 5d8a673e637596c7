#!/usr/bin/env python
"""How close is the up-front estimate of the saliency stage to the time it takes?

For each model (a built-in name or a model path), ``explain_subject`` runs on phantom subjects of
a seed no model was trained on (default settings but ``--n-samples`` draws and ``--max-lesions``
domains of each type, deployed context, Grad-CAM++ on, no report; progress and the estimate are
logged) and its provenance gives the estimate made before the first lesion
(``timings.estimate_s``) beside the measured stage (``timings.saliency_s``).

Writes ``estimates.tsv`` in ``--out`` (one row per model and subject, appended as each finishes;
rows already there are skipped when run again) and prints the ratio actual / estimate.

Usage::

    python scripts/cost_estimate.py --out runs/cost_estimate [--subjects 1] [--seed 21]
        [--n-samples 2] [--max-lesions 2] [--models unet nnunet swinunetr]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from instasal.dataset import discover_dataset
from instasal.phantoms import write_cohort
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--n-samples", type=int, default=2)
    parser.add_argument("--max-lesions", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["unet", "nnunet", "swinunetr"])
    args = parser.parse_args()
    # the estimate and progress with the time left, as the run goes
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cohort = args.out / "cohort"
    if not cohort.exists():
        write_cohort(cohort, n_subjects=args.subjects, seed=args.seed)
    table_path = args.out / "estimates.tsv"
    done = pd.read_csv(table_path, sep="\t") if table_path.exists() else pd.DataFrame()
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=args.n_samples), max_lesions=args.max_lesions
    )
    for model in args.models:
        for subject in discover_dataset(cohort):
            if (
                len(done)
                and ((done["model"] == model) & (done["subject"] == subject.subject_id)).any()
            ):
                continue
            # a model path's last part (an absolute path joined whole would write into it)
            out = args.out / Path(model).name / subject.subject_id
            explain_subject(
                subject.images,
                model,
                out,
                reference=subject.lesion_mask,
                settings=settings,
                report=False,
                progress="auto",
                budget_s=None,
            )
            timings = json.loads((out / "provenance.json").read_text())["timings"]
            row = {
                "model": model,
                "subject": subject.subject_id,
                "estimate_s": timings["estimate_s"],
                "saliency_s": timings["saliency_s"],
                "actual_over_estimate": timings["saliency_s"] / timings["estimate_s"],
            }
            print(row, flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            args.out.mkdir(parents=True, exist_ok=True)
            done.to_csv(table_path, sep="\t", index=False)
    print(done.to_string(index=False))


if __name__ == "__main__":
    main()
