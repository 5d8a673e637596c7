"""Explain one subject: segmentation → lesion instances → per-lesion saliency → outputs and report.

All validation (files, grids, model channels, the output folder's state) happens before any heavy
computation. Per-lesion results are written atomically as they complete and are reused when an
interrupted run with the same settings is started again; replacing results needs ``overwrite``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from torch import nn

from instasal.errors import ConfigurationError, InstasalWarning
from instasal.folders import model_files, output_folder_lock
from instasal.instances import Instance, Instances, classify_instances, find_instances
from instasal.io import (
    Subject,
    atomic_write_json,
    load_image,
    load_labels,
    load_mask,
    read_subject,
)
from instasal.models import ModelCard, card_of, load_model, with_model_channels
from instasal.models.nnunet_predict import with_mirrored_network
from instasal.models.segmentation import predict_prepared
from instasal.pipeline.context_choice import (
    deployed_obstacle,
    patch_hint,
    resolve_context,
    with_deployed_forward,
)
from instasal.pipeline.cost import CostEstimate, check_budget, estimate_cost
from instasal.pipeline.outputs import (
    RunLayout,
    instances_lookup,
    prepare_run_folder,
    table_sidecar,
)
from instasal.pipeline.per_lesion import (
    LesionPlan,
    SubjectSpace,
    explain_lesions,
    sample_domains,
    table_columns,
)
from instasal.pipeline.results import ExplainResult
from instasal.pipeline.settings import DEFAULT_BUDGET_S, ExplainSettings, file_sha256, run_key
from instasal.pipeline.trust_checks import with_trust
from instasal.prepare import PreparedSubject, prepare_subject
from instasal.progress import logged_progress, pipeline_progress, silent_progress
from instasal.provenance import software_versions
from instasal.report import write_subject_report
from instasal.saliency import ExplainedPass, GradCamConfig, SmoothGradConfig
from instasal.saliency.gradcam import capture_obstacle
from instasal.saliency.summaries import saliency_columns
from instasal.typing import ModelLike, PathLike, Progress

__all__ = ["ExplainResult", "explain_subject", "model_fingerprint"]

LOG = logging.getLogger("instasal")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (identifies the weights whatever the path)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_subject(
    images: Sequence[PathLike] | Subject, channel_names: Sequence[str] | None
) -> Subject:
    if isinstance(images, Subject):
        return images
    return read_subject(images, channel_names)


def _optional_mask(path: PathLike | None, subject: Subject, role: str) -> np.ndarray | None:
    return None if path is None else load_mask(path, subject, role=role)


def _regions(path: PathLike | None, subject: Subject) -> np.ndarray | None:
    return None if path is None else load_labels(path, subject, role="region map")


def explain_subject(
    images: Sequence[PathLike] | Subject,
    model: ModelLike,
    out: PathLike,
    *,
    reference: PathLike | None = None,
    tissue_mask: PathLike | None = None,
    regions: PathLike | None = None,
    settings: ExplainSettings | None = None,
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    report: bool = True,
    progress: Progress | Literal["auto"] | None = "auto",
    trust_model_code: bool = False,
    ignore_channel_names: bool = False,
    budget_s: float | None = DEFAULT_BUDGET_S,
    mean_out: PathLike | None = None,
) -> ExplainResult:
    """Segment a subject, find its lesions, and explain each one (SPEC §1–§3; issue 6).

    Parameters
    ----------
    images
        One NIfTI per channel in the model's order (FLAIR first), one 4D NIfTI, or a
        :class:`~instasal.io.Subject` (raw intensities; normalised here as the card says).
    model
        A built-in name, a path :func:`instasal.load_model` understands, or a loaded module.
    out
        Output folder (created). It is locked for the whole run: a second run into it is
        refused while this one lives; temporaries left there by killed runs are removed.
    reference
        Ground-truth lesion mask: domains are then typed TP/FP/FN and TN domains sampled.
    tissue_mask
        Where TN domains may lie (white matter); default: the non-zero voxels of the first channel.
    regions
        Optional region label map (1 periventricular, 2 juxtacortical, 3 deep WM,
        4 infratentorial) for the table's ``region`` column.
    settings
        :class:`ExplainSettings`; default: the paper's settings.
    overwrite
        Replace results of an earlier run in ``out`` (this subject's files and those of the subject
        its ``run.json`` names); without it an interrupted run with the same inputs and settings
        resumes, a finished one is returned as it is (no file rewritten), one with other settings
        is refused, and so is a folder holding any file the run would write. No run writes over
        one of its inputs (images, masks, the model's files), with or without ``overwrite``.
    report
        Also write the self-contained HTML report.
    progress
        Called as ``progress(stage, done, total)``. ``"auto"`` (the default) shows progress bars
        with the time left when standard error is a terminal or in a Jupyter notebook, and
        elsewhere writes progress lines with the time left to the ``instasal`` logger at INFO
        (``logging.basicConfig(level=logging.INFO)`` shows them); ``None`` shows nothing.
    trust_model_code
        Let a model given by path run code from its own files (see
        :func:`instasal.models.load_model`'s ``trust_code``).
    ignore_channel_names
        Take the images as the model's channels in the order given even where their file names
        say otherwise (BIDS suffixes such as ``_T1w``, nnU-Net numbers such as ``_0001``; see
        :func:`instasal.channels.check_channel_files`). Without it such a mismatch is refused.
    budget_s
        Before the first lesion the saliency stage is counted and timed on this network and
        input (:func:`instasal.pipeline.cost.estimate_cost`; logged to the ``instasal`` logger and
        kept in the provenance); a stage estimated over ``budget_s`` seconds is refused with the
        choices that shorten it. ``None``: no budget (the command line's ``--yes``).
    mean_out
        Also explain the same domains with mean aggregation into this folder (its own run, with
        its own key and tables; SmoothGrad only: no Grad-CAM++, trust checks or report), over
        this run's prediction and domains rather than segmenting the subject again.

    Returns
    -------
    ExplainResult
        The run in ``out`` (with ``mean_out``, not the mean run: its table is written there).

    Raises
    ------
    ConfigurationError
        When a file the run would write or remove is one of its inputs.
    OutputLockedError
        When another live run holds ``out``; the message names its pid, host and start time.
    OutputExistsError
        When ``out`` holds results of other inputs or settings and ``overwrite`` is false.
    StateFileError
        When the earlier run's ``run.json`` is corrupt and ``overwrite`` is false.
    """
    settings = settings or ExplainSettings()
    with _resolved_progress(progress) as progress, output_folder_lock(out):
        started = time.perf_counter()
        inputs = read_inputs(images, channel_names, reference, tissue_mask, regions)
        space = enter_model_space(inputs, model, settings, trust_model_code, ignore_channel_names)
        options = RunOptions(overwrite, report, budget_s, (*inputs.files, *model_files(model)))
        result, found = explain_in_space(
            inputs, space, settings, Path(out), options, progress, started
        )
        if mean_out is not None:
            mean_settings, mean_space = with_mean_aggregation(settings, space)
            mean_options = replace(options, report=False)
            with output_folder_lock(mean_out):
                explain_in_space(
                    inputs,
                    mean_space,
                    mean_settings,
                    Path(mean_out),
                    mean_options,
                    progress,
                    time.perf_counter(),
                    found,
                )
        return result


@dataclass(frozen=True)
class RunOptions:
    """How one run treats its folder and budget (the arguments of :func:`explain_subject`)."""

    overwrite: bool
    report: bool
    budget_s: float | None
    files: tuple[Path, ...]
    """The run's input files (images, masks, the model's files), never written over."""


def with_mean_aggregation(
    settings: ExplainSettings, space: ModelSpace
) -> tuple[ExplainSettings, ModelSpace]:
    """The settings and model space of the mean-aggregation run beside a max run: SmoothGrad
    with mean aggregation, no Grad-CAM++ and no trust checks, the same prepared subject."""
    settings = replace(
        settings,
        smoothgrad=replace(settings.smoothgrad, aggregation="mean"),
        gradcam=None,
        trust=False,
    )
    space = replace(
        space,
        smoothgrad=replace(space.smoothgrad, aggregation="mean"),
        gradcam=None,
        gradcam_skipped=None,
    )
    return settings, space


def explain_in_space(
    inputs: SubjectInputs,
    space: ModelSpace,
    settings: ExplainSettings,
    out: Path,
    options: RunOptions,
    progress: Progress,
    started: float,
    segmented: Segmentation | None = None,
) -> tuple[ExplainResult, Segmentation]:
    """Stages 3–8 of :func:`explain_subject` in ``out`` (locked by the caller), timed from
    ``started``; with ``segmented`` (another run's domains of this subject in this space)
    nothing is predicted, its probability and domains are written here."""
    timings: dict[str, float] = {}
    run = identify_run(inputs, space, settings, out)
    complete = open_run(run, options.overwrite, progress, options.files)
    timings["validate_s"] = time.perf_counter() - started

    step = time.perf_counter()
    if segmented is None:
        probability = segment(space.prepared, run.layout, settings, progress)
        progress("finding domains", 0, 1)
        found = find_domains(probability, space, inputs, run.layout, settings)
        progress("finding domains", 1, 1)
    else:
        found = segmented
        write_segmentation(found, space.prepared, inputs.subject, run.layout)
    timings["segment_s"] = time.perf_counter() - step
    resumed = resume(found, run, settings.max_lesions, settings.smoothgrad.seed)
    if complete:  # a finished run is left untouched
        table = run.layout.read_table()
        result = ExplainResult(
            run.layout.root, run.layout, table, found.native, settings, {}, len(table), space.notes
        )
        return result, found

    estimate = estimate_saliency(
        space, found, resumed, settings, options.budget_s, run.label, progress
    )
    timings["estimate_s"] = estimate.total_s
    step = time.perf_counter()
    lesions = found.lesion_space(space.prepared, inputs.regions)
    plan = LesionPlan(
        space.smoothgrad,
        space.gradcam,
        space.explained,
        run.layout,
        run.key,
        space.threshold,
        space.card,
    )
    rows = [*resumed.rows, *explain_lesions(resumed.todo, lesions, plan, progress)]
    timings["saliency_s"] = time.perf_counter() - step

    table = write_tables(rows, resumed.chosen, lesions, space, run.layout, settings, progress)
    timings["total_s"] = time.perf_counter() - started
    notes = (*space.notes, *found.notes)
    provenance = write_provenance(
        run, space, found, settings, len(rows), resumed.reused, timings, notes
    )
    result = ExplainResult(
        run.layout.root,
        run.layout,
        table,
        found.native,
        settings,
        timings,
        resumed.reused,
        notes,
    )
    if options.report:
        write_report(result, space.prepared.native, provenance, progress)
    _write_manifest(run, complete=True)
    return result, found


@contextmanager
def _resolved_progress(progress: Progress | Literal["auto"] | None) -> Iterator[Progress]:
    """The run's progress callback: the one given; for ``"auto"`` progress bars where standard
    error is a terminal or a notebook, elsewhere progress lines to the ``instasal`` logger
    (shown where the script configures logging); for ``None`` one that shows nothing."""
    if progress != "auto":
        yield progress or silent_progress
        return
    console = Console(stderr=True)
    if not (console.is_terminal or console.is_jupyter):
        yield logged_progress(LOG)
        return
    with pipeline_progress(console) as shown:
        yield shown


@dataclass(frozen=True, eq=False)
class SubjectInputs:
    """Stage 1, validate: the subject and its optional masks, read and checked on its grid."""

    subject: Subject
    reference: np.ndarray | None
    tissue: np.ndarray | None
    regions: np.ndarray | None
    paths: dict[str, PathLike]
    """The optional inputs given, by role (``reference``, ``tissue_mask``, ``regions``)."""

    @property
    def files(self) -> list[Path]:
        """Every file read: the channels and the optional inputs (no run writes over them)."""
        return [*self.subject.paths, *(Path(p) for p in self.paths.values())]


def read_inputs(
    images: Sequence[PathLike] | Subject,
    channel_names: Sequence[str] | None,
    reference: PathLike | None,
    tissue_mask: PathLike | None,
    regions: PathLike | None,
) -> SubjectInputs:
    """Read the channels and the optional masks, refusing any that are not on one grid."""
    subject = _load_subject(images, channel_names)
    given = {"reference": reference, "tissue_mask": tissue_mask, "regions": regions}
    return SubjectInputs(
        subject,
        _optional_mask(reference, subject, "reference lesion mask"),
        _optional_mask(tissue_mask, subject, "tissue mask"),
        _regions(regions, subject),
        {role: path for role, path in given.items() if path is not None},
    )


@dataclass(frozen=True, eq=False)
class ModelSpace:
    """Stage 2, prepare: the subject in the model's input space and the choices resolved there.

    ``card`` is the loaded model's card; ``threshold`` the settings' or else the card's;
    ``smoothgrad`` and ``gradcam`` the methods' settings (the Grad-CAM layer named inside the
    prepared network) and ``explained`` the forward pass their maps are of (target class from the
    card, context from the settings or the card), as every later stage receives them.
    """

    network: nn.Module
    prepared: PreparedSubject
    card: ModelCard
    fingerprint: str
    """SHA-256 of the network's weights (:func:`model_fingerprint`), computed once."""
    threshold: float
    smoothgrad: SmoothGradConfig
    gradcam: GradCamConfig | None
    explained: ExplainedPass
    geometry: dict[str, Any]
    gradcam_skipped: str | None = None
    """Why Grad-CAM++ was asked for but cannot run on this model (``None``: it runs or was off)."""
    context_note: str | None = None
    """Why the maps by default are not of the prediction's own forward (``None``: they are)."""

    @property
    def notes(self) -> tuple[str, ...]:
        """One-line notes on what the run could not do for this model."""
        notes = [] if self.context_note is None else [self.context_note]
        if self.gradcam_skipped is not None:
            notes.append(f"Grad-CAM++ {self.gradcam_skipped}")
        return tuple(notes)


def enter_model_space(
    inputs: SubjectInputs,
    model: ModelLike,
    settings: ExplainSettings,
    trust_model_code: bool,
    ignore_channel_names: bool,
) -> ModelSpace:
    """Load the model, check the subject's channels against it and prepare the subject
    (their file names too, unless ``ignore_channel_names``)."""
    network = (
        model
        if isinstance(model, nn.Module)
        else load_model(os.fspath(model), trust_code=trust_model_code)
    )
    card = card_of(network)
    subject = with_model_channels(
        network, inputs.subject, ignore_channel_names=ignore_channel_names
    )
    prepared = prepare_subject(subject, network)
    if settings.saliency_of == "tta":
        prepared = with_mirrored_network(prepared)
    working_card: dict[str, Any] = dict(getattr(prepared.network, "card", {}))
    context, context_note = resolve_context(
        settings.context, working_card, deployed_obstacle(prepared)
    )
    prepared = with_deployed_forward(prepared, context, settings.tta)
    threshold = card.threshold if settings.threshold is None else settings.threshold
    gradcam, skipped = _gradcam_layer(settings, network, prepared)
    space = ModelSpace(
        network,
        prepared,
        card,
        model_fingerprint(network),
        threshold,
        settings.smoothgrad,
        gradcam,
        ExplainedPass(target=card.target_class, context=context),
        prepared.geometry(),
        skipped,
        context_note,
    )
    for note in space.notes:
        warnings.warn(note, InstasalWarning, stacklevel=2)
    return space


def _gradcam_layer(
    settings: ExplainSettings, network: nn.Module, prepared: PreparedSubject
) -> tuple[GradCamConfig | None, str | None]:
    """The run's Grad-CAM config (its layer named inside the prepared network); or ``None`` and
    why it is skipped: no layer named, or none a forward hook can record (TorchScript)."""
    if settings.gradcam is None:
        return None, None
    skipped = f"skipped for model {card_of(network).name!r}: {{}}; its table columns are empty"
    obstacle = capture_obstacle(network, None)
    if obstacle is not None:
        return None, skipped.format(obstacle)
    config = settings.gradcam
    if config.layer and prepared.resampled:  # the prepared network wraps the model
        config = replace(config, layer=f"network.{config.layer}")
    try:
        layer = config.layer_of(prepared.network)
    except ConfigurationError:  # neither the settings nor the card name one: skip, not fail
        return None, skipped.format(
            "its card names no layer (pass --gradcam-layer / GradCamConfig(layer=...))"
        )
    obstacle = capture_obstacle(prepared.network, layer)
    if obstacle is not None:
        return None, skipped.format(obstacle)
    return replace(config, layer=layer), None


def estimate_saliency(
    space: ModelSpace,
    found: Segmentation,
    resumed: Resumed,
    settings: ExplainSettings,
    budget_s: float | None,
    where: str,
    progress: Progress,
) -> CostEstimate:
    """Count and time the saliency stage on this network and input, log it, and refuse it over
    ``budget_s`` (:mod:`instasal.pipeline.cost`); ``progress`` shows the measurement."""
    masks = {r.id: torch.from_numpy(found.instances.mask(r.id)) for r in resumed.todo}
    network, x = space.prepared.network, space.prepared.x
    estimate = estimate_cost(
        network, x, masks, space.smoothgrad, space.gradcam, space.explained, progress
    )
    if estimate.domains:
        LOG.info("%s: saliency stage: %s", where, estimate.line())
    full = space.explained.context == "full" and space.card.patch_size is None
    also = (patch_hint(space.card.to_dict()),) if full else ()
    check_budget(estimate, budget_s, space.smoothgrad, settings.max_lesions, where, also)
    return estimate


@dataclass(frozen=True, eq=False)
class RunIdentity:
    """Stage 3, key: where the run writes, and the key of its inputs, model and settings."""

    layout: RunLayout
    key: str
    label: str
    inputs: list[dict[str, str]]
    extra_inputs: dict[str, dict[str, str]]


def identify_run(
    inputs: SubjectInputs, space: ModelSpace, settings: ExplainSettings, out: Path
) -> RunIdentity:
    """Name the run's files and hash everything its results depend on into its key."""
    subject = inputs.subject
    label = subject.name
    files = [{"path": str(p), "sha256": file_sha256(p)} for p in subject.paths]
    extra = {
        role: {"path": str(p), "sha256": file_sha256(Path(p))} for role, p in inputs.paths.items()
    }
    if not subject.paths:
        files = [{"array_sha256": run_key({"data": subject.data.tobytes().hex()[:4096]})}]
    key = run_key(
        {
            "inputs": files,
            "extra": extra,
            "model": space.fingerprint,
            "settings": settings.as_dict(),
            "context": space.explained.context,
            "threshold": space.threshold,
            "geometry": {k: v for k, v in space.geometry.items() if k != "notes"},
        }
    )
    return RunIdentity(RunLayout(out, label), key, label, files, extra)


def open_run(run: RunIdentity, overwrite: bool, progress: Progress, inputs: Sequence[Path]) -> bool:
    """Check the output folder against the run's ``inputs``
    (:func:`~instasal.pipeline.outputs.prepare_run_folder`), create it and mark the run started;
    True when a finished run of this key is there already."""
    layout = run.layout
    already_complete = prepare_run_folder(layout, run.key, overwrite, inputs)
    if already_complete:
        progress("results complete already; reusing them", 1, 1)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.lesion_dir.mkdir(exist_ok=True)
    if not already_complete:
        _write_manifest(run, complete=False)
    return already_complete


def _write_manifest(run: RunIdentity, *, complete: bool) -> None:
    when = "finished" if complete else "started"
    atomic_write_json(
        run.layout.manifest,
        {"run_key": run.key, "complete": complete, when: _now(), "label": run.label},
        overwrite=True,
    )


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Stage 4, segment: the probability and the typed domains on both grids.

    ``probability`` and ``instances`` are on the working grid; ``native`` holds the same domains
    on the stored grid, and ``native_ids`` maps a working id to its stored id.
    """

    probability: np.ndarray
    instances: Instances
    native: Instances
    native_ids: dict[int, int]
    notes: tuple[str, ...] = ()
    """One-line notes on domains asked for and not found (also issued as warnings)."""

    def lesion_space(self, prepared: PreparedSubject, regions: np.ndarray | None) -> SubjectSpace:
        """What the per-lesion stage needs, the region map moved to the working grid."""
        working_regions = None if regions is None else prepared.to_working(regions)
        return SubjectSpace(
            prepared,
            self.probability,
            self.instances,
            self.native,
            self.native_ids,
            working_regions,
        )


def segment(
    prepared: PreparedSubject, layout: RunLayout, settings: ExplainSettings, progress: Progress
) -> np.ndarray:
    """Stage 4, segment: the target probability on the working grid, written on the stored grid.

    A probability this run wrote already (:func:`~instasal.pipeline.outputs.prepare_run_folder`
    leaves only files of this run's key) is read back instead of predicted again.
    """
    progress("segmenting", 0, 1)
    if layout.probability.exists():
        stored = np.asarray(load_image(layout.probability).dataobj, dtype=np.float32)
        probability = np.ascontiguousarray(prepared.to_working(stored))
    else:
        probability = predict_prepared(prepared, tta=settings.tta)
        prepared.native_image(probability).save(layout.probability, overwrite=True)
    progress("segmenting", 1, 1)
    return probability


def find_domains(
    probability: np.ndarray,
    space: ModelSpace,
    inputs: SubjectInputs,
    layout: RunLayout,
    settings: ExplainSettings,
) -> Segmentation:
    """Stage 4, segment: the typed domains on both grids; writes the mask and the instance map."""
    prepared = space.prepared
    instances = _typed_instances(
        prepared, probability, space.threshold, settings, inputs.reference, inputs.tissue
    )
    native, native_ids = prepared.native_instances(instances)
    notes = _true_negative_shortfall(instances, settings.n_true_negatives, inputs)
    for note in notes:
        warnings.warn(note, InstasalWarning, stacklevel=2)
    found = Segmentation(probability, instances, native, native_ids, notes)
    write_segmentation(found, prepared, inputs.subject, layout, probability=False)
    return found


def write_segmentation(
    found: Segmentation,
    prepared: PreparedSubject,
    subject: Subject,
    layout: RunLayout,
    *,
    probability: bool = True,
) -> None:
    """Write the probability (unless ``probability`` is false), the mask and the instance map
    on the stored grid where this run's key has not written them yet (a resumed or finished
    run keeps its files)."""
    if probability and not layout.probability.exists():
        prepared.native_image(found.probability).save(layout.probability, overwrite=True)
    if not layout.mask.exists():
        subject.on_grid(found.native.predicted_mask()).save(layout.mask)
    if not layout.instances.exists():
        subject.on_grid(found.native.labels.astype(np.int16)).save(layout.instances)


def _true_negative_shortfall(
    instances: Instances, asked: int, inputs: SubjectInputs
) -> tuple[str, ...]:
    """A note when fewer TN domains than asked fit where they may lie (none without a note)."""
    if inputs.reference is None or asked == 0:
        return ()
    found = len(instances.of_kind("TN"))
    if found >= asked:
        return ()
    where = (
        f"the tissue mask {inputs.paths['tissue_mask']}"
        if "tissue_mask" in inputs.paths
        else "the non-zero voxels of the first channel"
    )
    return (
        f"{found} of the {asked} TN domains asked for fit in {where} (every TN voxel at least "
        f"3 mm from any lesion); the table holds {found}",
    )


@dataclass(frozen=True, eq=False)
class Resumed:
    """Stage 5, resume: the domains to explain, and which of them a stopped run finished."""

    chosen: list[Instance]
    todo: list[Instance]
    rows: list[dict[str, Any]]
    """Table rows of the finished domains, read back from their records."""

    @property
    def reused(self) -> int:
        return len(self.rows)


def resume(found: Segmentation, run: RunIdentity, max_lesions: int | None, seed: int) -> Resumed:
    """Choose the domains to explain (:func:`~instasal.pipeline.per_lesion.sample_domains` with
    the run's seed); keep the rows of those this run's key finished already."""
    chosen = sample_domains(found.instances, max_lesions, seed)
    rows: list[dict[str, Any]] = []
    todo = []
    for record in chosen:
        stored_record = run.layout.read_lesion_record(found.native_ids[record.id], run.key)
        if stored_record is None:
            todo.append(record)
        else:
            rows.append(stored_record["row"])
    return Resumed(chosen, todo, rows)


def write_tables(
    rows: list[dict[str, Any]],
    chosen: list[Instance],
    lesions: SubjectSpace,
    space: ModelSpace,
    layout: RunLayout,
    settings: ExplainSettings,
    progress: Progress,
) -> pd.DataFrame:
    """Stage 7, write: the lesion table (trust columns too when asked) and the instance lookup."""
    progress("writing tables", 0, 1)
    channels = lesions.prepared.native.channel_names
    rows = sorted(rows, key=lambda row: int(row["id"]))
    table = (
        pd.DataFrame(rows, columns=table_columns(channels))
        if rows
        else pd.DataFrame(columns=table_columns(channels))
    )
    sidecar = table_sidecar(channels)
    if space.gradcam_skipped is not None:
        for column in ("gradcam_peak", "gradcam_peak_voxel"):
            sidecar[column]["Description"] += f" (empty: Grad-CAM++ {space.gradcam_skipped})"
    if space.smoothgrad.approximate:
        stride = space.smoothgrad.max_stride
        for column in saliency_columns(channels):
            sidecar[column]["Description"] += (
                f" (APPROXIMATE: max aggregation over every {stride}th voxel of the domain along "
                "each axis, not every voxel; docs/saliency.md gives its error)"
            )
    if settings.trust:
        progress("trust checks", 0, 1)
        table, sidecar = with_trust(
            table,
            sidecar,
            chosen,
            lesions,
            layout,
            space.smoothgrad,
            space.gradcam,
            space.explained,
        )
        progress("trust checks", 1, 1)
    layout.write_table(table, sidecar)
    explained_ids = {int(i) for i in table["id"]}
    lookup = instances_lookup(lesions.native, explained_ids, settings.max_lesions)
    layout.write_instances_lookup(lookup)
    progress("writing tables", 1, 1)
    return table


def _gradcam_context(space: ModelSpace) -> str | None:
    """The window Grad-CAM++ ran in: the patch window where the maps are deployed (a layer's
    activation belongs to one window; docs/method.md)."""
    if space.gradcam is None:
        return None
    return "patch" if space.explained.context == "deployed" else space.explained.context


def write_provenance(
    run: RunIdentity,
    space: ModelSpace,
    found: Segmentation,
    settings: ExplainSettings,
    n_explained: int,
    reused: int,
    timings: dict[str, float],
    notes: Sequence[str],
) -> dict[str, Any]:
    """Stage 7, write: what ran on what, and how long it took (``<subject>_provenance.json``)."""
    provenance = {
        "run_key": run.key,
        "finished": _now(),
        "subject": run.label,
        "inputs": run.inputs,
        "extra_inputs": run.extra_inputs,
        "model": {
            "fingerprint_sha256": space.fingerprint,
            "card": space.card.to_dict(),
        },
        "settings": settings.as_dict(),
        "geometry": space.geometry,
        "resolved": {
            "context": space.explained.context,
            "threshold": space.threshold,
            "target": space.explained.target,
            "gradcam_layer": space.gradcam.layer if space.gradcam else None,
            "gradcam_context": _gradcam_context(space),
            "gradcam_skipped": space.gradcam_skipped,
        },
        "notes": list(notes),
        "counts": {
            kind: len(found.native.of_kind(kind)) for kind in ("lesion", "TP", "FP", "FN", "TN")
        },
        "explained": n_explained,
        "report": {
            "panels_cap": settings.report_panels,
            "panels_shown": min(settings.report_panels, n_explained),
            "panels_left_out": max(n_explained - settings.report_panels, 0),
        },
        "reused_lesions": reused,
        "timings": timings,
        "versions": software_versions(_PROVENANCE_DISTRIBUTIONS),
    }
    atomic_write_json(run.layout.provenance, provenance, overwrite=True)
    return provenance


def write_report(
    result: ExplainResult, subject: Subject, provenance: dict[str, Any], progress: Progress
) -> None:
    """Stage 8, report: the self-contained HTML report of the run."""
    progress("writing report", 0, 1)
    write_subject_report(result, subject, provenance, progress)
    progress("writing report", 1, 1)


def _typed_instances(
    prepared: PreparedSubject,
    probability: np.ndarray,
    threshold: float,
    settings: ExplainSettings,
    reference: np.ndarray | None,
    tissue: np.ndarray | None,
) -> Instances:
    """Lesion domains on the working grid, typed TP/FP/FN with TN sampled where a reference is."""
    working = prepared.working
    predicted = find_instances(
        probability,
        working.affine,
        threshold=threshold,
        connectivity=settings.connectivity,
        min_volume_mm3=settings.min_volume_mm3,
    )
    if reference is None:
        return predicted
    tissue_region = prepared.to_working(tissue) if tissue is not None else working.data[0] > 0
    return classify_instances(
        predicted,
        prepared.to_working(reference),
        connectivity=settings.connectivity,
        min_volume_mm3=settings.min_volume_mm3,
        tissue_mask=tissue_region,
        n_true_negatives=settings.n_true_negatives,
        seed=settings.smoothgrad.seed,
    )


_PROVENANCE_DISTRIBUTIONS = ("torch", "monai", "numpy", "scipy", "nibabel", "pandas")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
