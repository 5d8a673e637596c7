#!/usr/bin/env python
"""Does the explained forward pass detect the lesion the prediction found? Per context, per model.

For each built-in model and each subject of a phantom cohort of a seed no model was trained on,
the prediction (instasal's sliding window, as ``explain`` runs it) is thresholded at the card's
threshold into lesions (18-connectivity, > 5 mm³, as ``explain``). For every lesion Ω it records
the deployed prediction's mean probability over Ω and that of the forward pass each context
differentiates (``explained_logits``): ``deployed`` (the prediction's own sliding window),
``patch`` (one patch centred on Ω) and ``full`` (the whole volume in one pass). "Detected" means
at least half of Ω's voxels at or above the threshold in that forward pass.

It also times instance SmoothGrad per lesion in each context (``--timed`` lesions per model, one
noise draw, max aggregation; seconds per lesion and per Jacobian row, on this machine's threads).

Writes ``lesions.tsv``, ``timing.tsv``, ``summary.md`` and ``context_fidelity.png`` in ``--out``;
each model's rows are written as soon as that model is done, and a model whose rows exist is
skipped when the script is run again (resume).

Usage::

    python scripts/context_fidelity.py --out runs/context_fidelity [--subjects 3] [--seed 21]
        [--timed 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from instasal.dataset import discover_dataset
from instasal.instances import find_instances
from instasal.io import read_subject
from instasal.models import card_of, load_model
from instasal.models.inference import probability_from_logits
from instasal.models.segmentation import predict_prepared
from instasal.phantoms import write_cohort
from instasal.prepare import prepare_subject
from instasal.saliency import (
    ExplainedPass,
    InstanceSmoothGrad,
    SmoothGradConfig,
    explained_logits,
)

MODELS = ("unet", "nnunet", "swinunetr")
CONTEXTS = ("deployed", "patch", "full")


def _subject_paths(cohort: Path) -> list[list[Path]]:
    return [list(subject.images) for subject in discover_dataset(cohort)]


def _lesion_rows(model_name: str, cohort: Path, timed: int) -> tuple[list[dict], list[dict]]:
    model = load_model(model_name)
    card = card_of(model)
    lesion_rows: list[dict] = []
    timing_rows: list[dict] = []
    for subject_index, paths in enumerate(_subject_paths(cohort)):
        prepared = prepare_subject(read_subject(paths), model)
        probability = predict_prepared(prepared)
        instances = find_instances(probability, prepared.working.affine, threshold=card.threshold)
        domains = {record.id: instances.mask(record.id) for record in instances}
        if not domains:
            continue
        per_context = {
            context: explained_logits(
                prepared.network,
                prepared.x,
                domains,
                ExplainedPass(target=card.target_class, context=context),  # type: ignore[arg-type]
            )
            for context in CONTEXTS
        }
        for domain_id, mask in domains.items():
            row: dict = {
                "model": model_name,
                "subject": subject_index,
                "lesion": domain_id,
                "n_voxels": int(mask.sum()),
                "prob_mean": float(probability[mask].mean()),
            }
            for context, logits in per_context.items():
                values = logits[domain_id].numpy().astype(np.float32)[:, :, None, None]
                explained = probability_from_logits(values, card).reshape(-1)
                row[f"{context}_prob_mean"] = float(explained.mean())
                row[f"{context}_detects"] = bool((explained >= card.threshold).mean() >= 0.5)
            lesion_rows.append(row)
        if subject_index == 0:
            timing_rows += _timings(model_name, prepared, domains, card.target_class, timed)
    return lesion_rows, timing_rows


def _timings(
    model_name: str, prepared, domains: dict[int, np.ndarray], target: int, timed: int
) -> list[dict]:
    chosen = sorted(domains)[:timed]
    rows = []
    method = InstanceSmoothGrad(prepared.network, SmoothGradConfig(n_samples=1))
    for context in CONTEXTS:
        explained = ExplainedPass(target=target, context=context)  # type: ignore[arg-type]
        for domain_id in chosen:
            started = time.perf_counter()
            method.attribute(prepared.x, {domain_id: domains[domain_id]}, explained)
            seconds = time.perf_counter() - started
            voxels = int(domains[domain_id].sum())
            rows.append(
                {
                    "model": model_name,
                    "context": context,
                    "lesion": domain_id,
                    "n_voxels": voxels,
                    "seconds": seconds,
                    "seconds_per_row": seconds / voxels,
                }
            )
            print(f"{model_name} {context} lesion {domain_id}: {seconds:.1f} s ({voxels} rows)")
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    if path.exists():
        frame = pd.concat([pd.read_csv(path, sep="\t"), frame], ignore_index=True)
    partial = path.with_suffix(".partial")
    frame.to_csv(partial, sep="\t", index=False)
    partial.replace(path)


def _summary(lesions: pd.DataFrame, timing: pd.DataFrame) -> str:
    lines = [
        "| model | lesions | context | explained forward detects it | median / max of "
        "\\|mean p explained − deployed prediction\\| |",
        "|---|---|---|---|---|",
    ]
    for model_name, rows in lesions.groupby("model", sort=False):
        for context in CONTEXTS:
            gap = (rows[f"{context}_prob_mean"] - rows["prob_mean"]).abs()
            detected = int(rows[f"{context}_detects"].astype(bool).sum())
            lines.append(
                f"| {model_name} | {len(rows)} | {context} | {detected} of {len(rows)} | "
                f"{gap.median():.3g} / {gap.max():.3g} |"
            )
    lines += ["", "| model | context | lesions timed | s per lesion | s per row | vs patch |"]
    lines.append("|---|---|---|---|---|---|")
    for model_name, rows in timing.groupby("model", sort=False):
        patch = rows[rows["context"] == "patch"]["seconds"].sum()
        for context in CONTEXTS:
            chosen = rows[rows["context"] == context]
            lines.append(
                f"| {model_name} | {context} | {len(chosen)} | {chosen['seconds'].mean():.1f} | "
                f"{chosen['seconds'].sum() / chosen['n_voxels'].sum():.3f} | "
                f"{chosen['seconds'].sum() / patch:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def _figure(lesions: pd.DataFrame, path: Path) -> None:
    figure, axes = plt.subplots(1, len(CONTEXTS), figsize=(12, 3.6), sharey=True)
    for axis, context in zip(axes, CONTEXTS, strict=True):
        for model_name, rows in lesions.groupby("model", sort=False):
            axis.scatter(rows["prob_mean"], rows[f"{context}_prob_mean"], s=12, label=model_name)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        axis.set_title(f"{context} forward")
        axis.set_xlabel("deployed prediction: mean p in lesion")
    axes[0].set_ylabel("explained forward: mean p in lesion")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--timed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cohort = args.out / "phantoms"
    if not cohort.exists():
        write_cohort(cohort, args.subjects, seed=args.seed, resolution=2)
    lesion_path, timing_path = args.out / "lesions.tsv", args.out / "timing.tsv"
    done = set(pd.read_csv(lesion_path, sep="\t")["model"]) if lesion_path.exists() else set()
    for model_name in MODELS:
        if model_name in done:
            continue
        lesion_rows, timing_rows = _lesion_rows(model_name, cohort, args.timed)
        _append(timing_path, timing_rows)
        _append(lesion_path, lesion_rows)
        print(f"{model_name}: {len(lesion_rows)} lesions")
    lesions = pd.read_csv(lesion_path, sep="\t")
    timing = pd.read_csv(timing_path, sep="\t")
    summary = _summary(lesions, timing)
    (args.out / "summary.md").write_text(summary)
    _figure(lesions, args.out / "context_fidelity.png")
    print(summary)


if __name__ == "__main__":
    main()
