"""The ``train``, ``segment`` and ``evaluate`` commands: argument parsing and progress only."""

from __future__ import annotations

import shlex
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from instasal.cli._app import (
    IgnoreChannelNamesOption,
    ImagesArgument,
    ModelOption,
    OutOption,
    TrustOption,
    app,
    builtin_model_names,
    check_model,
    console,
    limit_torch_threads,
    output_path,
    require_channel_order,
    require_dataset_channel_order,
    require_files,
)
from instasal.errors import ConfigurationError, InstasalWarning
from instasal.folders import output_folder_lock, plain_file_name
from instasal.progress import pipeline_progress

__all__ = ["evaluate", "segment", "train"]


OverlapOption = Annotated[
    float, typer.Option(help="Sliding-window overlap, a fraction of the window in [0, 1).")
]


@app.command()
def train(
    training: Annotated[Path, typer.Argument(help="Labelled BIDS-like cohort to train on.")],
    validation: Annotated[
        Path, typer.Option("--val", help="Labelled cohort for validation (required).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", parser=output_path, help="Run folder: checkpoint, history (required)."
        ),
    ],
    architecture: Annotated[
        str,
        typer.Option(
            "--architecture", "-a", help=f"Network to train: {', '.join(builtin_model_names())}."
        ),
    ] = "unet",
    patch: Annotated[
        int,
        typer.Option(
            min=1,
            help="Cubic training patch side in voxels (a multiple of the network's "
            "down-sampling factor, e.g. 16 for unet).",
        ),
    ] = 48,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 20,
    iterations: Annotated[int, typer.Option(min=1, help="Steps per epoch.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1, help="Patches per step.")] = 2,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate (> 0).")] = 2e-3,
    positive_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of patches centred on a lesion."),
    ] = 0.5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every random choice.")] = 0,
    export: Annotated[
        Path | None,
        typer.Option(
            parser=output_path,
            help="Write the best model as <name>.pt + <name>.json into this folder "
            "(default: no export).",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Exported model name (default: the architecture's).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace exported files (default: refuse to).")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, hidden=True, help="Deprecated: use instasal --threads N train …"),
    ] = None,
) -> None:
    """Train a built-in architecture (resumes from OUT/checkpoint.pt when it exists).

    torch's CPU threads come from the global option: instasal --threads N train …
    """
    if architecture not in builtin_model_names():
        raise ConfigurationError(
            f"--architecture must be one of {', '.join(builtin_model_names())}, "
            f"got {architecture!r}"
        )
    if learning_rate <= 0:
        raise ConfigurationError(f"--lr must be > 0, got {learning_rate}")
    require_files(training, validation)
    if name is not None:
        plain_file_name(name, what="--name")
    if threads is not None:  # the shipped cards' reproduce commands give it after ``train``
        warnings.warn(
            InstasalWarning("train --threads is deprecated; use instasal --threads N train …"),
            stacklevel=1,
        )
        limit_torch_threads(threads)
    from instasal.dataset import discover_dataset

    training_cohort = discover_dataset(training)
    validation_cohort = discover_dataset(validation)
    import torch

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
        threads=torch.get_num_threads(),
    )
    training_subjects = load_training_subjects(training_cohort)
    validation_subjects = load_training_subjects(validation_cohort)
    with pipeline_progress(console) as progress:
        result = run_training(
            config,
            training_subjects,
            validation_subjects,
            out,
            progress=progress,
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
        console.print(escape(f"exported {paths[0]} and {paths[1]}"))


@app.command()
def segment(
    images: ImagesArgument,
    out: OutOption,
    model: ModelOption = "unet",
    threshold: Annotated[
        float | None,
        typer.Option(help="Decision threshold in (0, 1) (default: the model card's threshold)."),
    ] = None,
    overlap: OverlapOption = 0.5,
    name: Annotated[
        str | None,
        typer.Option(help="Output file prefix (default: the first image's subject name)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing outputs (default: refuse to).")
    ] = False,
    trust_model_code: TrustOption = False,
    no_tta: Annotated[
        bool, typer.Option("--no-tta", help="nnU-Net: no mirroring (as --disable_tta).")
    ] = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Write the lesion probability and mask of one subject (sliding window, Gaussian blending)."""
    _check_threshold_and_overlap(threshold, overlap)
    if name is not None:
        plain_file_name(name, what="--name")
    require_files(*images)
    check_model(model)
    require_channel_order(images, [model], ignore_channel_names)
    from instasal.models import load_model
    from instasal.models.segmentation import segment_subject

    result = segment_subject(
        list(images),
        load_model(model, trust_code=trust_model_code),
        out,
        name=name,
        threshold=threshold,
        overlap=overlap,
        overwrite=overwrite,
        tta=not no_tta,
        ignore_channel_names=ignore_channel_names,
    )
    console.print(escape(f"wrote {result.probability_path} and {result.mask_path}"))


@app.command()
def evaluate(
    cohort: Annotated[Path, typer.Argument(help="Labelled BIDS-like cohort (e.g. phantoms).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", parser=output_path, help="Folder for the TSV tables (required)."
        ),
    ],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help=f"Model to evaluate (repeat): a built-in ({', '.join(builtin_model_names())}) "
            "or a model path (default: every built-in).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Threshold in (0, 1) for every model (default: each card's threshold)."),
    ] = None,
    overlap: OverlapOption = 0.5,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing tables (default: refuse to).")
    ] = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Lesion-wise metrics (nDSC, TPR, FDR, FNR) of models on a labelled cohort."""
    _check_threshold_and_overlap(threshold, overlap)
    require_files(cohort)
    for name in model or []:
        check_model(name)
    require_dataset_channel_order(cohort, model or builtin_model_names(), ignore_channel_names)
    from instasal.models import available_models
    from instasal.models.metrics import evaluate_cohort

    held = nullcontext() if out is None else output_folder_lock(out)
    with held, pipeline_progress(console) as progress:
        _, summary = evaluate_cohort(
            model or available_models(),
            cohort,
            out=out,
            threshold=threshold,
            overlap=overlap,
            overwrite=overwrite,
            progress=progress,
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


def _check_threshold_and_overlap(threshold: float | None, overlap: float) -> None:
    """Refuse a threshold outside (0, 1) or an overlap outside [0, 1), in one line."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigurationError(f"--threshold must be in (0, 1), got {threshold}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigurationError(f"--overlap must be in [0, 1), got {overlap}")
