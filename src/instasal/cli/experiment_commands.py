"""``instasal experiment NAME``: the paper's experiments over a dataset (issue 8)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, get_args

import typer

from instasal.cli._app import (
    IgnoreChannelNamesOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustOption,
    app,
    check_model,
    console,
    require_dataset_channel_order,
    require_files,
)
from instasal.cli.progress import pipeline_progress
from instasal.errors import ConfigurationError
from instasal.folders import output_folder_lock
from instasal.typing import UncertaintyMethod, UncertaintySignal

__all__ = ["experiment"]

EXPERIMENTS = ("context", "relocation", "patch-vs-full", "uncertainty")


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help="context, relocation, patch-vs-full or uncertainty.")],
    dataset: Annotated[Path, typer.Argument(help="BIDS-like dataset with reference masks.")],
    out: OutOption,
    model: ModelOption = "unet",
    max_lesions: Annotated[int, typer.Option(min=1, help="Lesions to use at most.")] = 40,
    band: Annotated[
        tuple[float, float],
        typer.Option(help="context: TP volume band in mm³, low then high (0 <= low < high)."),
    ] = (90.0, 120.0),
    seed: Annotated[
        int,
        typer.Option(min=0, help="Seed of relocation targets; uncertainty: dropout and samples."),
    ] = 0,
    method: Annotated[
        str, typer.Option(help=f"uncertainty: {', '.join(get_args(UncertaintyMethod))}.")
    ] = "tta",
    signal: Annotated[
        str,
        typer.Option(
            help=f"uncertainty: statistic thresholded, {', '.join(get_args(UncertaintySignal))}."
        ),
    ] = "max",
    level: Annotated[
        list[float] | None,
        typer.Option(
            help="uncertainty: a level (>= 0) of the candidate rule, in units of the signal "
            "(repeat; default 4)."
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            help="uncertainty, ensemble: other ensemble members (repeat; model names or paths)."
        ),
    ] = None,
    max_subjects: Annotated[
        int | None,
        typer.Option(min=1, help="uncertainty: use the first subjects only (default: all)."),
    ] = None,
    n_samples: Annotated[
        int, typer.Option(min=1, help="uncertainty: SmoothGrad noise samples N.")
    ] = 8,
    max_explained: Annotated[
        int,
        typer.Option(min=1, help="uncertainty: domains explained per subject, level and kind."),
    ] = 4,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Run one of the paper's experiments and write its table, summary and figure."""
    if name not in EXPERIMENTS:
        raise ConfigurationError(
            f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}"
        )
    if method not in get_args(UncertaintyMethod):
        raise ConfigurationError(
            f"--method must be one of {', '.join(get_args(UncertaintyMethod))}, got {method!r}"
        )
    if signal not in get_args(UncertaintySignal):
        raise ConfigurationError(
            f"--signal must be one of {', '.join(get_args(UncertaintySignal))}, got {signal!r}"
        )
    if not 0.0 <= band[0] < band[1]:
        raise ConfigurationError(f"--band must be two volumes 0 <= low < high, got {band}")
    if not all(math.isfinite(value) and value >= 0 for value in level or []):
        raise ConfigurationError(f"--level must be finite numbers >= 0, got {level}")
    require_files(dataset)
    for member in [model, *(models or [])]:
        check_model(member)
    require_dataset_channel_order(dataset, [model, *(models or [])], ignore_channel_names)
    from instasal.experiments.missed import run_uncertainty_experiment
    from instasal.experiments.runner import (
        run_context_experiment,
        run_patch_full_experiment,
        run_relocation_experiment,
    )
    from instasal.models import load_model

    network = load_model(model, trust_code=trust_model_code)
    with output_folder_lock(out), pipeline_progress(console) as progress:
        if name == "context":
            summary = run_context_experiment(
                dataset,
                network,
                out,
                volume_band_mm3=band,
                max_lesions=max_lesions,
                overwrite=overwrite,
                progress=progress,
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
                progress=progress,
                ignore_channel_names=ignore_channel_names,
            )
        elif name == "patch-vs-full":
            summary = run_patch_full_experiment(
                dataset,
                network,
                out,
                max_lesions=max_lesions,
                overwrite=overwrite,
                progress=progress,
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
                progress=progress,
                ignore_channel_names=ignore_channel_names,
            )
    for key, value in summary.items():
        console.print(f"{key}: {value}")
    console.print(f"results in [bold]{out}[/]")
