"""The ``train``, ``segment`` and ``evaluate`` commands: argument parsing and progress only."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from instasal.cli._app import (
    IgnoreChannelNamesOption,
    TrustOption,
    app,
    builtin_model_names,
    console,
    require_channel_order,
    require_dataset_channel_order,
    require_files,
)
from instasal.cli.progress import pipeline_progress

__all__ = ["evaluate", "segment", "train"]


@app.command()
def train(
    training: Annotated[Path, typer.Argument(help="Labelled BIDS-like cohort to train on.")],
    validation: Annotated[Path, typer.Option("--val", help="Labelled cohort for validation.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoint, history).")],
    architecture: Annotated[
        str, typer.Option("--architecture", "-a", help="unet, nnunet or swinunetr.")
    ] = "unet",
    patch: Annotated[int, typer.Option(help="Cubic training patch side (voxels).")] = 48,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 20,
    iterations: Annotated[int, typer.Option(help="Steps per epoch.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 2,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-3,
    positive_fraction: Annotated[
        float, typer.Option(help="Fraction of patches centred on a lesion.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    export: Annotated[
        Path | None,
        typer.Option(help="Write the best model as <name>.pt + <name>.json into this folder."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Exported model name.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace exported files.")] = False,
) -> None:
    """Train a built-in architecture (resumes from OUT/checkpoint.pt when it exists)."""
    from instasal.dataset import discover_dataset
    from instasal.models.export import cohort_description, export_weights
    from instasal.training import TrainingConfig, load_training_subjects
    from instasal.training import train as run_training

    config = TrainingConfig(
        architecture=architecture,
        patch_size=(patch, patch, patch),
        epochs=epochs,
        iterations_per_epoch=iterations,
        batch_size=batch_size,
        learning_rate=learning_rate,
        positive_fraction=positive_fraction,
        seed=seed,
        threads=threads,
    )
    training_subjects = load_training_subjects(discover_dataset(training))
    validation_subjects = load_training_subjects(discover_dataset(validation))
    with pipeline_progress(console) as progress:
        result = run_training(
            config,
            training_subjects,
            validation_subjects,
            out,
            progress=progress,  # type: ignore[arg-type]
        )
    for record in result.history:
        metrics = record.metrics
        console.print(
            f"epoch {record.epoch}: loss {record.loss:.3f}, threshold {record.threshold}, "
            f"nDSC {metrics['ndsc']:.3f}, TPR {metrics['tpr']:.2f}, FDR {metrics['fdr']:.2f}"
        )
    if export is not None:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        paths = export_weights(
            result.model,
            result.card,
            export,
            name=name,
            reproduce_command=command,
            training_data={
                "training_cohort": cohort_description(training),
                "validation_cohort": cohort_description(validation),
            },
            overwrite=overwrite,
        )
        console.print(f"exported {paths[0]} and {paths[1]}")


@app.command()
def segment(
    images: Annotated[
        list[Path], typer.Argument(help="One NIfTI per channel in the model's order (FLAIR first).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name or model path.")
    ] = "unet",
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold (default: the model card's).")
    ] = None,
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap.")] = 0.5,
    name: Annotated[str | None, typer.Option(help="Output file prefix.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    trust_model_code: TrustOption = False,
    no_tta: Annotated[
        bool, typer.Option("--no-tta", help="nnU-Net: no mirroring (as --disable_tta).")
    ] = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Write the lesion probability and mask of one subject (sliding window, Gaussian blending)."""
    require_files(*images)
    require_channel_order(images, [model], ignore_channel_names)
    from instasal.models import load_model
    from instasal.models.segmentation import segment_subject

    result = segment_subject(
        load_model(model, trust_code=trust_model_code),
        list(images),
        out,
        name=name,
        threshold=threshold,
        overlap=overlap,
        overwrite=overwrite,
        tta=not no_tta,
        ignore_channel_names=ignore_channel_names,
    )
    console.print(f"wrote {result.probability_path} and {result.mask_path}")


@app.command()
def evaluate(
    cohort: Annotated[Path, typer.Argument(help="Labelled BIDS-like cohort (e.g. phantoms).")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model to evaluate (repeat); default: all built-ins."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for TSV tables.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Threshold for every model (default: each card's).")
    ] = None,
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap.")] = 0.5,
    overwrite: Annotated[bool, typer.Option(help="Replace existing tables.")] = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Lesion-wise metrics (nDSC, TPR, FDR, FNR) of models on a labelled cohort."""
    require_dataset_channel_order(cohort, model or builtin_model_names(), ignore_channel_names)
    from instasal.metrics import evaluate_cohort
    from instasal.models import available_models

    with pipeline_progress(console) as progress:
        _, summary = evaluate_cohort(
            model or available_models(),
            cohort,
            out=out,
            threshold=threshold,
            overlap=overlap,
            overwrite=overwrite,
            progress=lambda done, total, label: progress(f"segmentation of {label}", done, total),  # type: ignore[operator]
            trust_model_code=trust_model_code,
            ignore_channel_names=ignore_channel_names,
        )
    table = Table("model", "threshold", "nDSC", "TPR", "FDR", "FNR", "lesions", title=str(cohort))
    for row in summary.to_dict("records"):
        table.add_row(
            str(row["model"]),
            f"{float(row['threshold']):.2f}",
            f"{float(row['ndsc']):.3f}",
            f"{100 * float(row['tpr']):.0f} %",
            f"{100 * float(row['fdr']):.0f} %",
            f"{100 * float(row['fnr']):.0f} %",
            f"{int(row['n_reference'])}",
        )
    Console().print(table)
