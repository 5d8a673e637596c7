"""``instasal experiment NAME``: the paper's experiments over a dataset, one sub-command each.

Each sub-command has only its own options; all write a table, a summary JSON and a figure under
``--out``, and take ``--context`` as ``explain`` does (the forward pass measured or explained;
recorded in the outputs). Options are checked before torch is imported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.markup import escape

from instasal.cli._app import (
    CommandGroup,
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
from instasal.cli.commands import ContextOption
from instasal.errors import ConfigurationError
from instasal.folders import output_folder_lock
from instasal.progress import pipeline_progress
from instasal.typing import Context, UncertaintyMethod, UncertaintySignal

if TYPE_CHECKING:
    from instasal.experiments.options import ExperimentOptions

__all__ = ["experiment_app"]

experiment_app = typer.Typer(
    help="The paper's experiments over a dataset with reference masks: a table, a summary and a "
    "figure each.",
    no_args_is_help=True,
    cls=CommandGroup,
)
app.add_typer(experiment_app, name="experiment")

DatasetArgument = Annotated[Path, typer.Argument(help="BIDS-like dataset with reference masks.")]
MaxLesionsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Lesions to use at most, in all: drawn at random (--seed) within each subject, "
        "spread over the subjects.",
    ),
]
SampleSeedOption = Annotated[int, typer.Option(min=0, help="Seed of the lesions drawn.")]


def _check_inputs(dataset: Path, models: list[str], ignore_channel_names: bool) -> None:
    """The dataset and every model exist, and the file names agree with the models' channels."""
    require_files(dataset)
    for member in models:
        check_model(member)
    require_dataset_channel_order(dataset, models, ignore_channel_names)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    for key, value in summary.items():
        console.print(escape(f"{key}: {value}"))
    console.print(f"results in [bold]{escape(str(out))}[/]")


def _run(
    name: str,
    dataset: Path,
    model: str,
    out: Path,
    options: ExperimentOptions,
    *,
    overwrite: bool,
    trust_model_code: bool,
    **parameters: Any,
) -> None:
    """Load the model, hold ``out`` (the experiment's files refused before any work unless
    ``overwrite``), run experiment ``name`` with progress, draw its figure, write the result and
    print its summary."""
    from instasal.experiments.catalogue import EXPERIMENTS
    from instasal.experiments.results import refuse_existing, write_experiment
    from instasal.models import load_model

    experiment = EXPERIMENTS[name]
    network = load_model(model, trust_code=trust_model_code)
    with output_folder_lock(out):
        refuse_existing(experiment.outputs, out, overwrite)
        with pipeline_progress(console) as progress:
            result = experiment.run(dataset, network, options, progress=progress, **parameters)
        figure = None if experiment.figure is None else experiment.figure(result)
        write_experiment(result, out, figure, overwrite=overwrite)
    _print_summary(result.summary(), out)


@experiment_app.command("context")
def context(
    dataset: DatasetArgument,
    out: OutOption,
    model: ModelOption = "unet",
    max_lesions: MaxLesionsOption = 40,
    band: Annotated[
        tuple[float, float],
        typer.Option(help="TP volume band in mm³, low then high (0 <= low < high)."),
    ] = (90.0, 120.0),
    seed: SampleSeedOption = 0,
    context: ContextOption = None,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Perilesional context: how much healthy tissue around a lesion the model needs to find it."""
    if not 0.0 <= band[0] < band[1]:
        raise ConfigurationError(f"--band must be two volumes 0 <= low < high, got {band}")
    _check_inputs(dataset, [model], ignore_channel_names)
    from instasal.experiments.options import ExperimentOptions

    options = ExperimentOptions(
        seed=seed, context=context, ignore_channel_names=ignore_channel_names
    )
    _run(
        "context",
        dataset,
        model,
        out,
        options,
        overwrite=overwrite,
        trust_model_code=trust_model_code,
        volume_band_mm3=band,
        max_lesions=max_lesions,
    )


@experiment_app.command("relocation")
def relocation(
    dataset: DatasetArgument,
    out: OutOption,
    model: ModelOption = "unet",
    max_lesions: MaxLesionsOption = 40,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the lesions drawn and of their new places.")
    ] = 0,
    context: ContextOption = None,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Relocation: a lesion copied into white matter, out of the brain, and out with its rim."""
    _check_inputs(dataset, [model], ignore_channel_names)
    from instasal.experiments.options import ExperimentOptions

    options = ExperimentOptions(
        seed=seed, context=context, ignore_channel_names=ignore_channel_names
    )
    _run(
        "relocation",
        dataset,
        model,
        out,
        options,
        overwrite=overwrite,
        trust_model_code=trust_model_code,
        max_lesions=max_lesions,
    )


@experiment_app.command("patch-vs-full")
def patch_vs_full(
    dataset: DatasetArgument,
    out: OutOption,
    model: ModelOption = "unet",
    max_lesions: MaxLesionsOption = 40,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the lesions drawn and of the noise.")
    ] = 0,
    context: Annotated[
        Context,
        typer.Option(help="The context compared with full: patch (the authors') or deployed."),
    ] = "patch",
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Patch (or deployed) against full context: each lesion's SmoothGrad map in both."""
    if context == "full":
        raise ConfigurationError("--context is the one compared with full: patch or deployed")
    _check_inputs(dataset, [model], ignore_channel_names)
    from instasal.experiments.options import ExperimentOptions

    options = ExperimentOptions(
        seed=seed, context=context, ignore_channel_names=ignore_channel_names
    )
    _run(
        "patch-vs-full",
        dataset,
        model,
        out,
        options,
        overwrite=overwrite,
        trust_model_code=trust_model_code,
        max_lesions=max_lesions,
    )


@experiment_app.command("uncertainty")
def uncertainty(
    dataset: DatasetArgument,
    out: OutOption,
    model: ModelOption = "unet",
    method: Annotated[
        str,
        typer.Option(help=f"Uncertainty from: {', '.join(get_args(UncertaintyMethod))}."),
    ] = "tta",
    signal: Annotated[
        str,
        typer.Option(help=f"Statistic thresholded: {', '.join(get_args(UncertaintySignal))}."),
    ] = "max",
    level: Annotated[
        list[float] | None,
        typer.Option(
            help="A level (>= 0) of the candidate rule, in units of the signal (repeat; default 4)."
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(help="ensemble: other ensemble members (repeat; model names or paths)."),
    ] = None,
    max_subjects: Annotated[
        int | None, typer.Option(min=1, help="Use the first subjects only (default: all).")
    ] = None,
    n_samples: Annotated[int, typer.Option(min=1, help="SmoothGrad noise samples N.")] = 8,
    max_explained: Annotated[
        int, typer.Option(min=1, help="Domains explained per subject, level and kind.")
    ] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of dropout and of the samples.")] = 0,
    context: ContextOption = None,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
) -> None:
    """Missed lesions from uncertainty: candidates where the model hesitates, typed, explained."""
    if method not in get_args(UncertaintyMethod):
        raise ConfigurationError(
            f"--method must be one of {', '.join(get_args(UncertaintyMethod))}, got {method!r}"
        )
    if signal not in get_args(UncertaintySignal):
        raise ConfigurationError(
            f"--signal must be one of {', '.join(get_args(UncertaintySignal))}, got {signal!r}"
        )
    if not all(math.isfinite(value) and value >= 0 for value in level or []):
        raise ConfigurationError(f"--level must be finite numbers >= 0, got {level}")
    _check_inputs(dataset, [model, *(models or [])], ignore_channel_names)
    from instasal.experiments.options import ExperimentOptions
    from instasal.models import load_model

    options = ExperimentOptions(
        seed=seed, context=context, ignore_channel_names=ignore_channel_names
    )
    _run(
        "uncertainty",
        dataset,
        model,
        out,
        options,
        overwrite=overwrite,
        trust_model_code=trust_model_code,
        method=method,
        signal=signal,
        levels=level or None,
        ensemble=[load_model(m, trust_code=trust_model_code) for m in models or []],
        max_subjects=max_subjects,
        n_samples=n_samples,
        max_explained=max_explained,
    )
