"""Explain one subject: segmentation → lesion instances → per-lesion saliency → outputs and report.

All validation (files, grids, model channels, the output folder's state) happens before any heavy
computation. Per-lesion results are written atomically as they complete and are reused when an
interrupted run with the same settings is started again; replacing results needs ``overwrite``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console
from torch import nn

from instasal.errors import ConfigurationError, ImageError, OutputExistsError
from instasal.folders import output_folder_lock, read_state_file
from instasal.instances import Instances, classify_instances, find_instances
from instasal.io import (
    Subject,
    atomic_write_json,
    load_image,
    load_mask,
    read_subject,
    write_nifti,
)
from instasal.pipeline.context_choice import check_full_context_cost, resolve_context
from instasal.pipeline.lesions import SubjectSpace, explain_lesions, table_columns
from instasal.pipeline.outputs import RunLayout, instances_lookup, subject_label, table_sidecar
from instasal.pipeline.results import ExplainResult
from instasal.pipeline.settings import ExplainSettings, file_sha256, run_key
from instasal.pipeline.trust_checks import with_trust
from instasal.prepare import PreparedSubject, prepare_subject
from instasal.provenance import software_versions
from instasal.typing import ModelLike, PathLike, Progress

__all__ = ["ExplainResult", "explain_subject", "model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (identifies the weights whatever the path)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _noop(stage: str, done: float, total: float) -> None:
    return None


def _load_subject(
    images: Sequence[PathLike] | Subject, channel_names: Sequence[str] | None
) -> Subject:
    if isinstance(images, Subject):
        return images
    return read_subject(images, channel_names)


def _optional_mask(path: PathLike | None, subject: Subject, role: str) -> np.ndarray | None:
    return None if path is None else load_mask(path, subject, role=role)


def _regions(path: PathLike | None, subject: Subject) -> np.ndarray | None:
    if path is None:
        return None
    data = np.asarray(load_image(path).dataobj)
    if data.shape != subject.shape:
        raise ImageError(f"{path}: region map shape {data.shape} differs from {subject.shape}")
    return data.astype(np.int16)


def _prepare_out(layout: RunLayout, key: str, overwrite: bool) -> bool:
    """Check the output folder; return True when a finished run with this key is already there.

    With ``overwrite`` an earlier run's files are removed unread, so that even a corrupt
    ``run.json`` is recovered from.
    """
    if layout.manifest.exists():
        if overwrite:
            for path in layout.owned_files():
                path.unlink()
            return False
        manifest = read_state_file(layout.manifest)
        same = manifest.get("run_key") == key
        if not same:
            raise OutputExistsError(
                f"{layout.root}: holds results of a run with other inputs or settings "
                f"(run key {manifest.get('run_key')}, now {key}); pass --overwrite to replace them"
            )
        return bool(manifest.get("complete", False))
    existing = [p for p in (layout.table, layout.probability, layout.report) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]}: exists already and was not written by a resumable run; "
            "pass --overwrite to replace it"
        )
    return False


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
        Replace results of an earlier run in ``out``; without it an interrupted run with the same
        inputs and settings resumes and one with other settings is refused.
    report
        Also write the self-contained HTML report.
    progress
        Called as ``progress(stage, done, total)``. ``"auto"`` (the default) shows progress bars
        with the time left when standard error is a terminal or in a Jupyter notebook, and nothing
        elsewhere; ``None`` shows nothing.
    trust_model_code
        Let a model given by path run code from its own files (see
        :func:`instasal.models.load_model`'s ``trust_code``).
    ignore_channel_names
        Take the images as the model's channels in the order given even where their file names
        say otherwise (BIDS suffixes such as ``_T1w``, nnU-Net numbers such as ``_0001``; see
        :func:`instasal.channels.check_channel_files`). Without it such a mismatch is refused.

    Returns
    -------
    ExplainResult

    Raises
    ------
    OutputLockedError
        When another live run holds ``out``; the message names its pid, host and start time.
    OutputExistsError
        When ``out`` holds results of other inputs or settings and ``overwrite`` is false.
    StateFileError
        When the earlier run's ``run.json`` is corrupt and ``overwrite`` is false.
    """
    if progress == "auto":
        console = Console(stderr=True)
        if not (console.is_terminal or console.is_jupyter):
            progress = None
        else:
            from instasal.cli.progress import pipeline_progress

            with pipeline_progress(console) as shown:
                return explain_subject(
                    images,
                    model,
                    out,
                    reference=reference,
                    tissue_mask=tissue_mask,
                    regions=regions,
                    settings=settings,
                    channel_names=channel_names,
                    overwrite=overwrite,
                    report=report,
                    progress=shown,
                    trust_model_code=trust_model_code,
                    ignore_channel_names=ignore_channel_names,
                )
    with output_folder_lock(out):
        return _explain_locked(
            images,
            model,
            Path(out),
            reference=reference,
            tissue_mask=tissue_mask,
            regions=regions,
            settings=settings or ExplainSettings(),
            channel_names=channel_names,
            overwrite=overwrite,
            report=report,
            progress=progress or _noop,
            trust_model_code=trust_model_code,
            ignore_channel_names=ignore_channel_names,
        )


def _explain_locked(
    images: Sequence[PathLike] | Subject,
    model: str | PathLike | Any,
    out: Path,
    *,
    reference: PathLike | None,
    tissue_mask: PathLike | None,
    regions: PathLike | None,
    settings: ExplainSettings,
    channel_names: Sequence[str] | None,
    overwrite: bool,
    report: bool,
    progress: ProgressCallback,
    trust_model_code: bool,
    ignore_channel_names: bool,
) -> ExplainResult:
    """:func:`explain_subject` once its output folder is held."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    subject = _load_subject(images, channel_names)
    reference_mask = _optional_mask(reference, subject, "reference lesion mask")
    tissue = _optional_mask(tissue_mask, subject, "tissue mask")
    region_map = _regions(regions, subject)
    from instasal.models import check_channels, load_model
    from instasal.models.segmentation import predict_prepared

    network = (
        model
        if isinstance(model, nn.Module)
        else load_model(os.fspath(model), trust_code=trust_model_code)
    )
    card: dict[str, Any] = dict(getattr(network, "card", {}))
    check_channels(network, subject.channel_names, () if ignore_channel_names else subject.paths)
    prepared = prepare_subject(subject, network)
    if settings.saliency_of == "tta":
        from instasal.models.nnunet_predict import with_mirrored_network

        prepared = with_mirrored_network(prepared)
    working_card: dict[str, Any] = dict(getattr(prepared.network, "card", {}))
    context = resolve_context(settings.context, working_card)
    threshold = settings.threshold if settings.threshold is not None else card.get("threshold", 0.3)
    target = int(card.get("target_class", 1))
    layer = working_card.get("gradcam_layer")
    if settings.gradcam_layer:
        prefix = "network." if prepared.resampled else ""
        layer = f"{prefix}{settings.gradcam_layer}"
    if settings.gradcam and not layer:
        raise ConfigurationError(
            "gradcam is on but neither settings.gradcam_layer nor the model card names a layer"
        )
    geometry = prepared.geometry()

    label = subject_label(subject.paths[0] if subject.paths else None)
    layout = RunLayout(out, label)
    inputs = [{"path": str(p), "sha256": file_sha256(p)} for p in subject.paths]
    extra_inputs = {
        name: {"path": str(p), "sha256": file_sha256(Path(p))}
        for name, p in (
            ("reference", reference),
            ("tissue_mask", tissue_mask),
            ("regions", regions),
        )
        if p is not None
    }
    if not subject.paths:
        inputs = [{"array_sha256": run_key({"data": subject.data.tobytes().hex()[:4096]})}]
    key = run_key(
        {
            "inputs": inputs,
            "extra": extra_inputs,
            "model": model_fingerprint(network),
            "settings": settings.as_dict(),
            "context": context,
            "threshold": threshold,
            "geometry": {k: v for k, v in geometry.items() if k != "notes"},
        }
    )
    already_complete = _prepare_out(layout, key, overwrite)
    if already_complete:
        progress("results complete already; reusing them", 1, 1)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.lesion_dir.mkdir(exist_ok=True)
    timings["validate_s"] = time.perf_counter() - started
    if not already_complete:
        atomic_write_json(
            layout.manifest,
            {"run_key": key, "complete": False, "started": _now(), "label": label},
            overwrite=True,
        )

    step = time.perf_counter()
    progress("segmenting", 0, 1)
    if layout.probability.exists():  # _prepare_out left only files of this run key
        stored = np.asarray(load_image(layout.probability).dataobj, dtype=np.float32)
        probability = np.ascontiguousarray(prepared.to_working(stored))
    else:
        probability = predict_prepared(prepared, tta=settings.tta)
        _write(prepared, probability, layout.probability)
    progress("segmenting", 1, 1)
    timings["segment_s"] = time.perf_counter() - step

    instances = _typed_instances(prepared, probability, threshold, settings, reference_mask, tissue)
    native, native_ids = prepared.native_instances(instances)
    _write(prepared, probability >= threshold, layout.mask)
    write_nifti(
        native.labels.astype(np.int16),
        subject.affine,
        layout.instances,
        header=subject.header,
        overwrite=True,
    )

    chosen = _choose(instances, settings.max_lesions)
    rows: list[dict[str, Any]] = []
    todo = []
    reused = 0
    for record in chosen:
        stored_record = layout.read_lesion_record(native_ids[record.id], key)
        if stored_record is None:
            todo.append(record)
        else:
            rows.append(stored_record["row"])
            reused += 1

    if settings.context is None and context == "full":
        check_full_context_cost(prepared, todo, settings, target, card)
    step = time.perf_counter()
    space = SubjectSpace(
        prepared,
        probability,
        instances,
        native,
        native_ids,
        None if region_map is None else prepared.to_working(region_map),
    )
    explain_lesions(
        todo,
        space,
        layout,
        key,
        settings,
        context=context,
        target=target,
        layer=layer,
        rows=rows,
        progress=progress,
    )
    timings["saliency_s"] = time.perf_counter() - step

    rows.sort(key=lambda row: int(row["id"]))
    table = (
        pd.DataFrame(rows, columns=table_columns(subject.channel_names))
        if rows
        else pd.DataFrame(columns=table_columns(subject.channel_names))
    )
    sidecar = table_sidecar(subject.channel_names)
    if settings.trust:
        progress("trust checks", 0, 1)
        table, sidecar = with_trust(
            table,
            sidecar,
            chosen,
            space,
            layout,
            settings,
            context=context,
            target=target,
            layer=layer,
        )
        progress("trust checks", 1, 1)
    layout.write_table(table, sidecar)
    explained_ids = {int(i) for i in table["id"]}
    layout.write_instances_lookup(instances_lookup(native, explained_ids, settings.max_lesions))
    timings["total_s"] = time.perf_counter() - started

    provenance = {
        "run_key": key,
        "finished": _now(),
        "subject": label,
        "inputs": inputs,
        "extra_inputs": extra_inputs,
        "model": {"fingerprint_sha256": model_fingerprint(network), "card": card},
        "settings": settings.as_dict(),
        "geometry": geometry,
        "resolved": {
            "context": context,
            "threshold": threshold,
            "target": target,
            "gradcam_layer": layer,
        },
        "counts": {kind: len(native.of_kind(kind)) for kind in ("lesion", "TP", "FP", "FN", "TN")},
        "explained": len(rows),
        "reused_lesions": reused,
        "timings": timings,
        "versions": software_versions(_PROVENANCE_DISTRIBUTIONS),
    }
    atomic_write_json(layout.provenance, provenance, overwrite=True)
    result = ExplainResult(layout.root, layout, table, native, settings, timings, reused)
    if report:
        from instasal.report import write_subject_report

        progress("writing report", 0, 1)
        write_subject_report(result, subject, provenance)
        progress("writing report", 1, 1)
    atomic_write_json(
        layout.manifest,
        {"run_key": key, "complete": True, "finished": _now(), "label": label},
        overwrite=True,
    )
    return result


def _write(prepared: PreparedSubject, working: np.ndarray, path: Path) -> None:
    """Write a working-grid volume on the subject's stored grid, with its affine and header."""
    native = prepared.native
    array = np.ascontiguousarray(prepared.to_native(working))
    write_nifti(array, native.affine, path, header=native.header, overwrite=True)


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
        seed=settings.seed,
    )


_PROVENANCE_DISTRIBUTIONS = ("torch", "monai", "numpy", "scipy", "nibabel", "pandas")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _choose(instances: Instances, max_lesions: int | None) -> list[Any]:
    if max_lesions is None:
        return list(instances)
    chosen = []
    for kind in ("lesion", "TP", "FP", "FN", "TN"):
        chosen += instances.of_kind(kind)[:max_lesions]
    return sorted(chosen, key=lambda r: r.id)
