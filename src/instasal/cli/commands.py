"""The ``phantom``, ``explain`` and ``demo`` commands (SPEC §6): argument parsing only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from instasal.cli._app import (
    IgnoreChannelNamesOption,
    ImagesArgument,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustOption,
    app,
    check_model,
    console,
    output_path,
    require_channel_order,
    require_dataset_channel_order,
    require_files,
)
from instasal.errors import ConfigurationError
from instasal.pipeline.settings import DEFAULT_BUDGET_S, ExplainSettings
from instasal.progress import pipeline_progress
from instasal.saliency.config import GradCamConfig, SmoothGradConfig
from instasal.typing import Aggregation, Context, Executor, NoiseRange, SaliencyOf, TnPool

if TYPE_CHECKING:
    from instasal.pipeline.results import ExplainResult

__all__ = ["cohort", "demo", "explain", "phantom"]


@app.command()
def phantom(
    out: Annotated[
        Path,
        typer.Argument(parser=output_path, help="Folder of the new BIDS-like phantom cohort."),
    ],
    subjects: Annotated[
        int, typer.Option("--subjects", "-n", min=1, help="Number of subjects.")
    ] = 4,
    seed: Annotated[int, typer.Option(help="Cohort seed (subjects get derived seeds).")] = 0,
    resolution: Annotated[int, typer.Option(help="Voxel size in mm: 1 or 2.")] = 2,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing cohort (default: refuse to).")
    ] = False,
    generator: Annotated[
        str, typer.Option(help="Phantom generator: v1 (default) or v2 (docs/phantoms.md §v2).")
    ] = "v1",
) -> None:
    """Generate a phantom MS cohort with ground truth on MNI152 anatomy."""
    from instasal.phantoms import write_cohort

    if resolution not in (1, 2):
        raise ConfigurationError(f"--resolution must be 1 or 2, got {resolution}")
    if generator not in ("v1", "v2"):
        raise ConfigurationError(f"--generator must be v1 or v2, got {generator!r}")
    with pipeline_progress(console) as progress:
        written = write_cohort(
            out,
            subjects,
            seed=seed,
            resolution=1 if resolution == 1 else 2,
            overwrite=overwrite,
            progress=progress,
            generator="v2" if generator == "v2" else "v1",
        )
    console.print(f"wrote {len(written)} phantom subjects to [bold]{escape(str(out))}[/]")


GradcamLayerOption = Annotated[
    str | None,
    typer.Option(
        help="Grad-CAM++ layer, a name from the network's named_modules() (default: the model "
        "card's; the authors' U-Net layer is model.1.submodule.2.conv)."
    ),
]


ReportPanelsOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="At most this many per-domain panels in the HTML report, the largest domains first "
        "(every domain stays in the lesion table and keeps its maps).",
    ),
]


BudgetOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Refuse a subject whose saliency stage is estimated (measured before the first "
        "lesion) to take longer than this many hours, saying what would shorten it.",
    ),
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Go ahead whatever the estimate (no --budget-hours).")
]


def budget_seconds(hours: float, yes: bool) -> float | None:
    """The API's ``budget_s`` from ``--budget-hours`` and ``--yes``."""
    return None if yes else hours * 3600.0


MaxStrideOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="1: exact max aggregation. s > 1: a labelled approximation, the max over every s-th "
        "voxel of each domain along each axis (about s³ fewer rows; flagged in the report). Not "
        "quantitative: peaks fell to about half (docs/saliency.md).",
    ),
]
ContextOption = Annotated[
    Context | None,
    typer.Option(
        help="deployed (the prediction's own sliding window: the default where instasal "
        "reproduces it), patch (one patch around each lesion) or full (the whole volume in one "
        "pass; the default when the card states no patch size)."
    ),
]


@app.command()
def explain(
    images: ImagesArgument,
    out: OutOption,
    model: ModelOption = "unet",
    reference: Annotated[
        Path | None, typer.Option(help="Ground-truth lesion mask: TP/FP/FN/TN.")
    ] = None,
    tissue_mask: Annotated[
        Path | None,
        typer.Option(
            help="Mask where TN domains may lie (default: the non-zero voxels of the first "
            "channel, the brain of a skull-stripped image)."
        ),
    ] = None,
    regions: Annotated[
        Path | None,
        typer.Option(help="Region label map of this subject: each domain's region in the table."),
    ] = None,
    n_samples: Annotated[int, typer.Option(min=1, help="SmoothGrad noise samples N.")] = 50,
    noise_level: Annotated[
        float,
        typer.Option(help="Noise σ as a fraction of the intensity range (max − min), in [0, 1)."),
    ] = 0.05,
    noise_range: Annotated[
        NoiseRange,
        typer.Option(help="Range the noise σ is taken from: per_channel or first_channel."),
    ] = "per_channel",
    aggregation: Annotated[Aggregation, typer.Option(help="max (paper v3) or mean (v1).")] = "max",
    max_stride: MaxStrideOption = 1,
    context: ContextOption = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Probability threshold in (0, 1) (default: the model card's threshold)."),
    ] = None,
    max_lesions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Explain at most this many domains per type, drawn at random with --seed "
            "(default: all).",
        ),
    ] = None,
    n_true_negatives: Annotated[
        int, typer.Option(min=0, help="TN domains sampled in normal tissue (needs --reference).")
    ] = 10,
    gradcam: Annotated[bool, typer.Option(help="Also compute instance Grad-CAM++.")] = True,
    gradcam_layer: GradcamLayerOption = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of noise draws, TN sampling and --max-lesions.")
    ] = 0,
    no_tta: Annotated[
        bool, typer.Option("--no-tta", help="nnU-Net: no mirroring (as --disable_tta).")
    ] = False,
    saliency_of: Annotated[
        SaliencyOf,
        typer.Option(help="network, or tta (nnU-Net's mirrored average; --no-gradcam)."),
    ] = "network",
    trust: Annotated[
        bool,
        typer.Option(
            help="Also run the map checks of docs/trust.md per lesion (randomisation, "
            "deletion/insertion, radial profile TSV); several times slower."
        ),
    ] = False,
    overwrite: OverwriteOption = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
    report_panels: ReportPanelsOption = ExplainSettings.report_panels,
    budget_hours: BudgetOption = DEFAULT_BUDGET_S / 3600.0,
    yes: YesOption = False,
) -> None:
    """Segment one subject and explain each lesion: maps, lesion table, HTML report."""
    settings = ExplainSettings(
        SmoothGradConfig(
            n_samples=n_samples,
            noise_level=noise_level,
            noise_range=noise_range,
            aggregation=aggregation,
            seed=seed,
            max_stride=max_stride,
        ),
        GradCamConfig(layer=gradcam_layer) if gradcam else None,
        context=context,
        threshold=threshold,
        max_lesions=max_lesions,
        n_true_negatives=n_true_negatives,
        tta=not no_tta,
        saliency_of=saliency_of,
        trust=trust,
        report_panels=report_panels,
    )
    require_files(*images, reference, tissue_mask, regions)
    check_model(model)
    require_channel_order(images, [model], ignore_channel_names)
    from instasal.pipeline import explain_subject

    with pipeline_progress(console) as progress:
        result = explain_subject(
            images,
            model,
            out,
            reference=reference,
            tissue_mask=tissue_mask,
            regions=regions,
            settings=settings,
            overwrite=overwrite,
            progress=progress,
            trust_model_code=trust_model_code,
            ignore_channel_names=ignore_channel_names,
            budget_s=budget_seconds(budget_hours, yes),
        )
    _print_summary(result)


def _print_summary(result: ExplainResult) -> None:
    from instasal.pipeline.outputs import explained_disagrees

    table = result.table
    if len(table) == 0:
        console.print("no lesion found: nothing to explain (the report says so)")
    else:
        view = Table(title=f"{len(table)} domains explained", show_lines=False)
        channels = [c.removeprefix("peak_") for c in table.columns if c.startswith("peak_")]
        channels = [c for c in channels if not c.endswith("_voxel")]
        for column in ["id", "type", "volume_mm3", "prob_max", *[f"peak_{c}" for c in channels]]:
            view.add_column(column, justify="right")
        for record in table.to_dict("records"):
            view.add_row(
                str(record["id"]),
                str(record["type"]),
                f"{record['volume_mm3']:.0f}",
                f"{record['prob_max']:.2f}",
                *[f"{record[f'peak_{c}']:.3g}" for c in channels],
            )
        console.print(view)
    differing = [str(r["id"]) for r in table.to_dict("records") if explained_disagrees(r)]
    if differing:
        console.print(
            f"note: the forward pass the maps differentiate decides domain(s) "
            f"{', '.join(differing)} otherwise than the prediction (explained_detects in the "
            "table); the deployed context explains the prediction itself"
        )
    if result.reused_lesions:
        console.print(
            f"reused {result.reused_lesions} lesion(s) of an earlier run "
            "with the same inputs and settings"
        )
    console.print(f"lesion table: [bold]{escape(str(result.layout.table))}[/]")
    console.print(f"report: [bold]{escape(str(result.report))}[/]")


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", parser=output_path, help="Demo folder.")
    ] = Path("instasal-demo"),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the phantom subject.")] = 7,
    overwrite: Annotated[
        bool, typer.Option(help="Regenerate and recompute everything (default: reuse).")
    ] = False,
) -> None:
    """Explain a generated phantom subject with the bundled default model (reduced settings)."""
    from instasal.dataset import discover_dataset
    from instasal.models import available_models
    from instasal.phantoms import write_cohort
    from instasal.pipeline import DEMO_SETTINGS, explain_subject

    started = time.perf_counter()
    cohort = out / "phantom"
    model = available_models()[0]
    console.print(
        f"instasal demo: model [bold]{model}[/], phantom subject (seed {seed}, 2 mm) in {cohort}\n"
        f"reduced settings for speed: N = {DEMO_SETTINGS.smoothgrad.n_samples} noise samples "
        f"(paper: 50), at most {DEMO_SETTINGS.max_lesions} domains per type, "
        f"{DEMO_SETTINGS.n_true_negatives} TN domains"
    )
    if overwrite or not (cohort / "participants.tsv").exists():
        write_cohort(cohort, 1, seed=seed, resolution=2, overwrite=overwrite)
    (subject,) = discover_dataset(cohort)[:1]
    with pipeline_progress(console) as progress:
        result = explain_subject(
            subject.images,
            model,
            out / "explain",
            reference=subject.lesion_mask,
            tissue_mask=subject.wm_mask,
            regions=subject.regions,
            settings=DEMO_SETTINGS,
            overwrite=overwrite,
            progress=progress,
        )
    _print_summary(result)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


@app.command()
def cohort(
    dataset: Annotated[
        Path, typer.Argument(help="BIDS-like dataset (e.g. from instasal phantom).")
    ],
    out: OutOption,
    model: ModelOption = "unet",
    executor: Annotated[Executor, typer.Option(help="local (in-process) or ray.")] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (default: a local Ray instance; --executor ray)."),
    ] = None,
    with_mean: Annotated[
        bool, typer.Option(help="Also compute mean-aggregation maps (aggregation vs size).")
    ] = False,
    n_samples: Annotated[int, typer.Option(min=1, help="SmoothGrad noise samples N.")] = 50,
    max_stride: MaxStrideOption = 1,
    context: ContextOption = None,
    max_lesions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Explain at most this many domains per type, drawn at random with --seed "
            "(default: all).",
        ),
    ] = None,
    n_true_negatives: Annotated[
        int, typer.Option(min=0, help="TN domains sampled per subject in normal tissue.")
    ] = 10,
    gradcam: Annotated[bool, typer.Option(help="Also compute instance Grad-CAM++.")] = True,
    gradcam_layer: GradcamLayerOption = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Cohort seed (per-subject seeds derive from it).")
    ] = 0,
    subjects: Annotated[
        str | None,
        typer.Option(help="Only these subject ids, comma-separated (default: every subject)."),
    ] = None,
    tn_from: Annotated[
        TnPool,
        typer.Option(
            help="Where TN domains are drawn: wm (white matter, else the brain), gm (grey "
            "matter: brain outside white matter, FLAIR at least white matter's median) or brain."
        ),
    ] = "wm",
    trust: Annotated[
        bool,
        typer.Option(
            help="Also run the map checks of docs/trust.md per lesion (max aggregation; slow: "
            "use with --max-lesions); instasal analyse summarises them."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Recompute everything (default: resume, reuse finished subjects).")
    ] = False,
    trust_model_code: TrustOption = False,
    ignore_channel_names: IgnoreChannelNamesOption = False,
    report_panels: ReportPanelsOption = ExplainSettings.report_panels,
    budget_hours: BudgetOption = DEFAULT_BUDGET_S / 3600.0,
    yes: YesOption = False,
) -> None:
    """Explain every subject of a dataset (resumable) and gather one cohort lesion table."""
    require_files(dataset)
    check_model(model)
    settings = ExplainSettings(
        SmoothGradConfig(n_samples=n_samples, seed=seed, max_stride=max_stride),
        GradCamConfig(layer=gradcam_layer) if gradcam else None,
        context=context,
        max_lesions=max_lesions,
        n_true_negatives=n_true_negatives,
        trust=trust,
        report_panels=report_panels,
    )
    require_dataset_channel_order(dataset, [model], ignore_channel_names)
    from instasal.pipeline.cohort import run_cohort

    with pipeline_progress(console) as progress:
        result = run_cohort(
            dataset,
            model,
            out,
            settings=settings,
            executor=executor,
            address=address,
            with_mean=with_mean,
            overwrite=overwrite,
            subjects=subjects.split(",") if subjects else None,
            progress=progress,
            trust_model_code=trust_model_code,
            ignore_channel_names=ignore_channel_names,
            tn_from=tn_from,
            budget_s=budget_seconds(budget_hours, yes),
        )
    console.print(
        f"{len(result.done)} subject(s) done ({len(result.skipped)} reused), "
        f"{len(result.failed)} failed; {len(result.table)} domains in [bold]{result.table_path}[/]"
    )
    if result.pending:
        console.print(
            f"{len(result.pending)} subject(s) still being explained by another worker "
            f"({', '.join(result.pending)}); run again when it is done to gather them"
        )
    for subject_id, error in result.failed.items():
        console.print(f"[red]failed[/] {escape(f'{subject_id}: {error}')}")
    if result.failed:
        raise typer.Exit(1)
