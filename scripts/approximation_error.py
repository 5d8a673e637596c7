#!/usr/bin/env python
"""Error of the labelled max-aggregation approximation (``--max-stride``) against the exact map.

Example (the measurement reported in ``docs/saliency.md``)::

    nice -n 5 python scripts/approximation_error.py runs/results_cohort --out runs/approximation \\
        --models unet nnunet swinunetr --subjects 2 --lesions 3 --samples 2

For each built-in model and labelled subject, ``--lesions`` predicted domains (TP and FP) are
drawn at random (``--seed``; explain's draw). Each gets the exact instance SmoothGrad map (max
aggregation over every voxel of the domain) and the approximate one at every ``--strides`` value,
with the same noise draws, in ``--context`` (default ``patch``). Per domain and stride it records:

- ``peak_ratio``: the approximate map's largest FLAIR value over the exact map's (the lesion
  table's ``peak_FLAIR``; the approximation can only lower it for a positive peak of the FLAIR
  map, since it maximises over fewer rows);
- ``correlation``: Pearson correlation of the two maps (all channels) over the domain and its
  5 mm neighbourhood, where the report draws them;
- ``max_error``: the largest absolute difference there over the exact map's largest magnitude;
- ``rows_exact``, ``rows_approximate``, ``seconds_exact``, ``seconds_approximate``.

One ``<model>_<subject>.tsv`` per model and subject (a finished one is skipped: the run resumes),
then ``summary.tsv``: per model, stride and size band the median and range of each measure.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

SIZE_BANDS_MM3 = (0.0, 100.0, 500.0, float("inf"))
"""Lesion volume bands of the summary (mm³): small, medium, large."""


def _domain_rows(prepared, model, args) -> pd.DataFrame:
    import torch

    from instasal.experiments.subjects import sample_lesions
    from instasal.saliency import InstanceSmoothGrad, SmoothGradConfig
    from instasal.trust import neighbourhood

    base = SmoothGradConfig(n_samples=args.samples, seed=args.seed, engine="batched")
    explained = replace(prepared.explained(model), context=args.context)
    exact_method = InstanceSmoothGrad(prepared.network, base)
    eligible = [*prepared.instances.of_kind("TP"), *prepared.instances.of_kind("FP")]
    spacing = prepared.subject.spacing
    flair = list(prepared.subject.channel_names).index("FLAIR")
    rows = []
    for record in sample_lesions(prepared, eligible, args.lesions, args.seed):
        omega = prepared.instances.mask(record.id)
        near = neighbourhood(omega, spacing)
        domain = {0: torch.from_numpy(omega)}
        started = time.perf_counter()
        exact = exact_method.attribute(prepared.x, domain, explained)[0].numpy()
        seconds_exact = time.perf_counter() - started
        rows_exact = exact_method.work(prepared.x, domain, explained).rows
        scale = float(np.abs(exact[:, near]).max())
        for stride in args.strides:
            method = InstanceSmoothGrad(prepared.network, replace(base, max_stride=stride))
            started = time.perf_counter()
            approx = method.attribute(prepared.x, domain, explained)[0].numpy()
            seconds = time.perf_counter() - started
            pair = np.stack([exact[:, near].ravel(), approx[:, near].ravel()])
            rows.append(
                {
                    "domain": record.id,
                    "type": record.kind,
                    "volume_mm3": record.n_voxels * float(np.prod(spacing)),
                    "stride": stride,
                    "peak_ratio": float(approx[flair].max() / exact[flair].max()),
                    "correlation": float(np.corrcoef(pair)[0, 1]),
                    "max_error": float(np.abs(pair[0] - pair[1]).max() / scale),
                    "rows_exact": rows_exact,
                    "rows_approximate": method.work(prepared.x, domain, explained).rows,
                    "seconds_exact": seconds_exact,
                    "seconds_approximate": seconds,
                }
            )
        print(f"  domain {record.id} ({record.kind}, {record.n_voxels} voxels) done", flush=True)
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    bands = pd.cut(table["volume_mm3"], SIZE_BANDS_MM3, right=False)
    grouped = table.assign(size_mm3=bands.astype(str)).groupby(
        ["model", "stride", "size_mm3"], observed=True
    )
    parts = {
        "domains": grouped.size(),
        "peak_ratio_median": grouped["peak_ratio"].median(),
        "peak_ratio_min": grouped["peak_ratio"].min(),
        "correlation_median": grouped["correlation"].median(),
        "correlation_min": grouped["correlation"].min(),
        "max_error_median": grouped["max_error"].median(),
        "max_error_max": grouped["max_error"].max(),
        "row_ratio": grouped["rows_exact"].sum() / grouped["rows_approximate"].sum(),
        "time_ratio": grouped["seconds_exact"].sum() / grouped["seconds_approximate"].sum(),
    }
    return pd.DataFrame(parts).reset_index()


def main(argv: list[str]) -> int:
    """Run the measurement; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path, help="labelled BIDS-like cohort")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--models", nargs="+", default=["unet", "nnunet", "swinunetr"])
    parser.add_argument("--subjects", type=int, default=2, help="at most this many subjects")
    parser.add_argument("--lesions", type=int, default=3, help="domains per type and subject")
    parser.add_argument("--samples", type=int, default=2, help="SmoothGrad noise draws N")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--context", default="patch", choices=["deployed", "patch", "full"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws of domains, noise")
    args = parser.parse_args(argv)

    from instasal.experiments.subjects import prepared_subjects
    from instasal.models import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        model = load_model(name)
        for prepared in prepared_subjects(args.cohort, model, limit=args.subjects):
            path = args.out / f"{name}_{prepared.files.subject_id}.tsv"
            if path.exists():
                continue
            print(f"{name} {prepared.files.subject_id}", flush=True)
            table = _domain_rows(prepared, model, args).assign(model=name)
            partial = path.with_suffix(".tsv.part")
            table.to_csv(partial, sep="\t", index=False)
            partial.replace(path)
    tables = [pd.read_csv(p, sep="\t") for p in sorted(args.out.glob("*_sub-*.tsv"))]
    summary = _summary(pd.concat(tables, ignore_index=True))
    summary.to_csv(args.out / "summary.tsv", sep="\t", index=False)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
