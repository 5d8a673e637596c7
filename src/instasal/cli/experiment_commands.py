"""``instasal experiment NAME``: the paper's experiments over a dataset (issue 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instasal.cli._app import (
    IgnoreChannelNamesOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustOption,
    app,
    console,
    require_dataset_channel_order,
)
from instasal.cli.progress import pipeline_progress
from instasal.errors import ConfigurationError

__all__ = ["experiment"]

EXPERIMENTS = ("context", "relocation", "patch-vs-full", "uncertainty")


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help="context, relocation, patch-vs-full or uncertainty.")],
    dataset: Annotated[Path, typer.Argument(help="BIDS-like dataset with reference masks.")],
    out: OutOption,
    model: ModelOption = "unet",
    max_lesions: Annotated[int, typer.Option(help="Lesions to use at most.")] = 40,
    band: Annotated[tuple[float, float], typer.Option(help="context: TP volume band in mm³.")] = (
        90.0,
        120.0,
    ),
    seed: Annotated[
        int, typer.Option(help="Seed of relocation targets; uncertainty: dropout and samples.")
    ] = 0,
    method: Annotated[str, typer.Option(help="uncertainty: tta, mc_dropout or ensemble.")] = "tta",
    signal: Annotated[
        str, typer.Option(help="uncertainty: statistic thresholded, max, mean or sd.")
    ] = "max",
    level: Annotated[
        list[float] | None,
        typer.Option(help="uncertainty: a level of the candidate rule (repeat; default 4)."),
    ] = None,
    models: Annotated[
        list[str] | None, typer.Option(help="uncertainty: other ensemble members (repeat).")
    ] = None,
    max_subjects: Annotated[
        int | None, typer.Option(help="uncertainty: use the first subjects only.")
    ] = None,
    n_samples: Annotated[int, typer.Option(help="uncertainty: SmoothGrad noise draws.")] = 8,
    max_explained: Annotated[
        int, typer.Option(help="uncertainty: domains explained per subject, level and kind.")
    ] = 4,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Run one of the paper's experiments and write its table, summary and figure."""
    require_dataset_channel_order(dataset, [model, *(models or [])], ignore_channel_names)
    from instasal.experiments.missed import run_uncertainty_experiment
    from instasal.experiments.runner import (
        run_context_experiment,
        run_patch_full_experiment,
        run_relocation_experiment,
    )
    from instasal.models import load_model

    if name not in EXPERIMENTS:
        raise ConfigurationError(
            f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}"
        )
    network = load_model(model, trust_code=trust_model_code)
    with pipeline_progress(console) as progress:
        if name == "context":
            summary = run_context_experiment(
                dataset,
                network,
                out,
                volume_band_mm3=band,
                max_lesions=max_lesions,
                overwrite=overwrite,
                progress=progress,  # type: ignore[arg-type]
                ignore_channel_names=ignore_channel_names,
            )
        elif name == "relocation":
            summary = run_relocation_experiment(
                dataset,
                network,
                out,
                max_lesions=max_lesions,
                seed=seed,
                overwrite=overwrite,
                progress=progress,  # type: ignore[arg-type]
                ignore_channel_names=ignore_channel_names,
            )
        elif name == "patch-vs-full":
            summary = run_patch_full_experiment(
                dataset,
                network,
                out,
                max_lesions=max_lesions,
                overwrite=overwrite,
                progress=progress,  # type: ignore[arg-type]
                ignore_channel_names=ignore_channel_names,
            )
        else:
            summary = run_uncertainty_experiment(
                dataset,
                network,
                out,
                method=method,  # type: ignore[arg-type]
                signal=signal,  # type: ignore[arg-type]
                levels=level or None,
                ensemble=[load_model(m, trust_code=trust_model_code) for m in models or []],
                max_subjects=max_subjects,
                n_samples=n_samples,
                max_explained=max_explained,
                seed=seed,
                overwrite=overwrite,
                progress=progress,  # type: ignore[arg-type]
                ignore_channel_names=ignore_channel_names,
            )
    for key, value in summary.items():
        console.print(f"{key}: {value}")
    console.print(f"results in [bold]{out}[/]")
