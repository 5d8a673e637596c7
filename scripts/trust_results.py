#!/usr/bin/env python
"""Run the trust checks of ``docs/trust.md`` on a labelled cohort and summarise them (resumable).

Example (a small, preliminary run)::

    nice -n 5 python scripts/trust_results.py runs/results_cohort --out runs/trust \\
        --subjects 2 --lesions 2 --samples 2 --steps 3

Per subject it writes ``<subject>_randomisation.tsv`` (the verdicts and every cascading step,
region and measure against the null), ``<subject>_faithfulness.tsv`` (deletion and insertion
numbers, the better-than-the-image verdicts, channel ablation and the saliency reliance it is
compared with, and the sign-pattern rings of the trained and the fully randomised SmoothGrad
maps) and ``<subject>_profiles.tsv`` to ``--out`` (a subject whose three files exist is
skipped, so a stopped run resumes), then ``summary.json`` with the cohort verdicts over every
subject there. At most ``--lesions`` TP lesions per subject are drawn at random, seeded by
``--seed`` and the subject id (``instasal.experiments.subjects.sample_lesions``, the draw of
``explain --max-lesions``; earlier runs took the largest first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

KINDS = ("randomisation", "faithfulness", "profiles")


def _subject_tables(prepared, args) -> dict[str, pd.DataFrame]:
    from instasal.experiments.subjects import sample_lesions
    from instasal.saliency import (
        ExplainedPass,
        GradCamConfig,
        InstanceGradCam,
        InstanceSmoothGrad,
        SmoothGradConfig,
    )
    from instasal.saliency.summaries import lesion_summary
    from instasal.trust import channel_ablation, deletion_insertion, radial_profile, randomisation

    card = prepared.network.card
    config = SmoothGradConfig(n_samples=args.samples, seed=0)
    patch = ExplainedPass(context="patch")
    layer = card.get("gradcam_layer")
    gradcam = GradCamConfig(layer) if layer else None
    spacing = prepared.subject.spacing
    eligible = prepared.instances.of_kind("TP")
    records = sample_lesions(prepared, eligible, args.lesions, args.seed)
    tables: dict[str, list[pd.DataFrame]] = {kind: [] for kind in KINDS}
    for record in records:
        omega = prepared.instances.mask(record.id)
        sanity = randomisation(
            prepared.network,
            prepared.x,
            omega,
            spacing=spacing,
            smoothgrad=config,
            gradcam=gradcam,
            explained=patch,
            steps=args.steps,
            modes=("cascading",),
        )
        rows = [{"method": m, **sanity.verdict(m)} for m in sorted(set(sanity.table["method"]))]
        verdicts = pd.DataFrame(rows).assign(lesion=record.id)
        tables["randomisation"].append(verdicts.merge(sanity.table, on="method"))
        method = InstanceSmoothGrad(prepared.network, config)
        smoothgrad = method.attribute(prepared.x, {0: omega}, patch)[0]
        maps = {"smoothgrad": smoothgrad.cpu().numpy()}
        if gradcam is not None:
            cam_method = InstanceGradCam(prepared.network, gradcam)
            cam = cam_method.attribute(prepared.x, {0: omega}, patch)[0]
            maps["gradcam"] = cam.cpu().numpy()
        faithful = deletion_insertion(
            prepared.network,
            prepared.x,
            omega,
            maps,
            spacing=spacing,
            tissue=prepared.brain_mask,
            explained=patch,
            n_random=args.random,
        )
        verdicts = {f"better_than_image_{k}": v for k, v in faithful.better_than_image.items()}
        names = prepared.subject.channel_names
        ablation = channel_ablation(
            prepared.network,
            prepared.x,
            omega,
            spacing=spacing,
            channel_names=names,
            tissue=prepared.brain_mask,
            explained=patch,
        )
        normal = ablation[ablation["fill"] == "tissue_mean"]
        shares = {
            f"ablation_share_{c}": share
            for c, share in zip(normal["channel"], normal["share"], strict=True)
        }
        summary = lesion_summary(maps["smoothgrad"], omega, spacing, names)
        reliance = {f"reliance_{c}": summary[f"reliance_{c}"] for c in names}
        rings = sanity.ring_columns("smoothgrad")
        row = {"lesion": record.id, "type": "TP", **faithful.numbers, **verdicts, **shares}
        row |= reliance | rings
        tables["faithfulness"].append(pd.DataFrame([row]))
        profile = radial_profile(
            maps["smoothgrad"], omega, spacing, channel_names=prepared.subject.channel_names
        )
        tables["profiles"].append(profile.assign(lesion=record.id, type="TP"))
    return {kind: pd.concat(parts) if parts else pd.DataFrame() for kind, parts in tables.items()}


def main(argv: list[str]) -> int:
    """Run the checks; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path, help="labelled BIDS-like cohort")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--model", default="unet", help="built-in model or weights folder")
    parser.add_argument("--subjects", type=int, default=None, help="at most this many subjects")
    parser.add_argument("--lesions", type=int, default=6, help="TP lesions per subject")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad noise samples")
    parser.add_argument("--steps", type=int, default=5, help="randomisation blocks")
    parser.add_argument("--random", type=int, default=3, help="random deletion orders")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draw of the lesions")
    args = parser.parse_args(argv)

    from instasal.analyses.trust_summary import (
        faithfulness_summary,
        negative_neighbourhood,
        randomisation_summary,
    )
    from instasal.experiments.subjects import prepared_subjects
    from instasal.io import atomic_write_json
    from instasal.models import load_model
    from instasal.trust import ablated_channels, ablation_agreement

    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    for prepared in prepared_subjects(args.cohort, model, limit=args.subjects):
        name = prepared.files.subject_id
        paths = {kind: args.out / f"{name}_{kind}.tsv" for kind in KINDS}
        if all(p.exists() for p in paths.values()):
            continue
        for kind, table in _subject_tables(prepared, args).items():
            partial = paths[kind].with_suffix(".tsv.part")
            table.assign(subject=name).to_csv(partial, sep="\t", index=False)
            partial.replace(paths[kind])
        print(f"{name}: done", flush=True)
    read = {
        kind: pd.concat([pd.read_csv(p, sep="\t") for p in sorted(args.out.glob(f"*_{kind}.tsv"))])
        for kind in KINDS
    }
    verdicts = read["randomisation"].drop_duplicates(["subject", "lesion", "method"])
    summary = {
        "randomisation": randomisation_summary(verdicts),
        "faithfulness": faithfulness_summary(read["faithfulness"]),
        "ablation": ablation_agreement(
            read["faithfulness"], ablated_channels(read["faithfulness"])
        ),
        "negative_neighbourhood": negative_neighbourhood(read["faithfulness"]),
        "settings": vars(args) | {"cohort": str(args.cohort), "out": str(args.out)},
    }
    atomic_write_json(args.out / "summary.json", summary, overwrite=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
