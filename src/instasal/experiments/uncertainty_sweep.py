"""Missed lesions from uncertainty, explained by instance saliency (issue 8, open question Q3).

For every subject of a dataset with a reference: the model's voxel-wise uncertainty
(:mod:`instasal.models.uncertainty`), candidate domains where the signal is high away from any
predicted lesion, each typed as a found FN (it overlaps a reference lesion the model missed),
another lesion or a false alarm, and instance SmoothGrad (SPEC §2) on a seeded sample of them. The
candidate rule is swept over a few levels, giving a curve of FNs found against false alarms per
subject, and the ROC AUC of peak saliency tells whether saliency separates found FNs from false
alarms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from instasal.analyses.detection import error_detection
from instasal.errors import ConfigurationError
from instasal.experiments.options import ExperimentOptions, check_options
from instasal.experiments.results import (
    UncertaintyResult,
    context_fields,
    explained_domains,
)
from instasal.experiments.subjects import (
    ExperimentSubject,
    prepared_subjects,
    reference_subjects,
)
from instasal.instances import Instances, connected_components
from instasal.models.cards import ModelCard, card_of
from instasal.models.uncertainty import (
    Candidates,
    Uncertainty,
    UncertaintyMethod,
    UncertaintySignal,
    classify_candidates,
    find_candidates,
    voxel_uncertainty,
)
from instasal.prepare import ResampledNetwork
from instasal.saliency import InstanceSmoothGrad, SmoothGradConfig
from instasal.saliency.summaries import lesion_summary
from instasal.typing import Context, PathLike, Progress, check_choice

__all__ = ["EXPLAINED_KINDS", "default_levels", "run_uncertainty_experiment"]

EXPLAINED_KINDS: tuple[str, ...] = ("found_FN", "false_alarm")
_LESIONS_PER_CALL = 8


def default_levels(signal: UncertaintySignal, threshold: float) -> tuple[float, ...]:
    """The levels swept when none are given, fixed before any result was seen.

    For the probability signals (``"max"``, ``"mean"``) a quarter, a half, one and two times the
    model's threshold; for ``"sd"`` 0.01, 0.02, 0.05 and 0.1.
    """
    if signal == "sd":
        return (0.01, 0.02, 0.05, 0.1)
    return tuple(float(threshold * f) for f in (0.25, 0.5, 1.0, 2.0))


def _check_arguments(
    method: str,
    signal: str,
    levels: Sequence[float],
    max_subjects: int | None,
    max_explained: int,
) -> None:
    check_choice("method", method, UncertaintyMethod)
    check_choice("signal", signal, UncertaintySignal)
    if not levels or not all(np.isfinite(v) and v >= 0 for v in levels):
        raise ConfigurationError(
            f"levels must be one or more finite numbers >= 0, got {list(levels)}"
        )
    if max_subjects is not None and max_subjects < 1:
        raise ConfigurationError(f"max_subjects must be >= 1, got {max_subjects}")
    if max_explained < 0:
        raise ConfigurationError(f"max_explained must be >= 0, got {max_explained}")


def _candidate_rows(
    subject: str,
    level: float,
    candidates: Candidates,
    uncertainty: Uncertainty,
    probability: np.ndarray,
    domain_index: dict[Any, int],
) -> list[dict[str, Any]]:
    """One row per candidate; ``domain_index`` numbers identical domains alike across levels."""
    rows = []
    for record, kind, fn_ids in zip(
        candidates.domains, candidates.kinds, candidates.found_fn_ids, strict=True
    ):
        inside = candidates.domains.labels[record.slices] == record.id
        key = (record.bbox, inside.tobytes())
        rows.append(
            {
                "subject": subject,
                "level": level,
                "candidate_id": record.id,
                "domain": domain_index.setdefault(key, len(domain_index) + 1),
                "kind": kind,
                "found_fn_ids": ",".join(map(str, fn_ids)),
                "volume_mm3": record.volume_mm3,
                "n_voxels": record.n_voxels,
                "centroid_voxel": ",".join(f"{c:.1f}" for c in record.centroid_voxel),
                "max_probability": float(uncertainty.max[record.slices][inside].max()),
                "mean_probability": float(uncertainty.mean[record.slices][inside].mean()),
                "max_sd": float(uncertainty.sd[record.slices][inside].max()),
                "mean_sd": float(uncertainty.sd[record.slices][inside].mean()),
                "plain_max_probability": float(probability[record.slices][inside].max()),
            }
        )
    return rows


def _chosen_domains(rows: pd.DataFrame, max_explained: int, seed: int) -> list[int]:
    """Up to ``max_explained`` domains per level and kind, uniformly at random (seeded).

    Every domain gets one random priority, so a domain shared by several levels is chosen at all
    of them or none, and each level's choice is still a uniform sample within each kind.
    """
    if rows.empty or max_explained == 0:
        return []
    n_domains = int(rows["domain"].max())
    priority = np.random.default_rng(seed).permutation(n_domains)
    eligible = rows[rows["kind"].isin(EXPLAINED_KINDS)].assign(
        priority=lambda t: priority[t["domain"].to_numpy() - 1]
    )
    chosen = (
        eligible.sort_values("priority")
        .groupby(["level", "kind"], sort=False)
        .head(max_explained)["domain"]
    )
    return sorted(set(chosen.astype(int)))


def _explain(
    model: nn.Module,
    prepared: ExperimentSubject,
    masks: dict[int, np.ndarray],
    smoothgrad: SmoothGradConfig,
    progress: Progress | None,
) -> dict[int, dict[str, Any]]:
    """Lesion-table saliency columns (SPEC §2) of each domain's instance SmoothGrad map, of the
    subject's explained forward pass (:meth:`ExperimentSubject.explained`)."""
    method, explained = InstanceSmoothGrad(model, smoothgrad), prepared.explained(model)
    subject = prepared.files.subject_id
    total_rows = sum(int(m.sum()) for m in masks.values()) * smoothgrad.n_draws
    done = 0
    columns: dict[int, dict[str, Any]] = {}
    ids = list(masks)
    for start in range(0, len(ids), _LESIONS_PER_CALL):
        batch = {i: masks[i] for i in ids[start : start + _LESIONS_PER_CALL]}
        offset = done

        def report(_stage: str, rows: float, _total: float, offset: int = offset) -> None:
            if progress is not None:
                progress(f"saliency of {subject}", offset + rows, total_rows)

        maps = method.attribute(prepared.x, batch, explained, progress=report)
        done += sum(int(m.sum()) for m in batch.values()) * smoothgrad.n_draws
        for domain_id, saliency in maps.items():
            columns[domain_id] = lesion_summary(
                saliency.detach().cpu().numpy(),
                batch[domain_id],
                prepared.subject.spacing,
                prepared.subject.channel_names,
            )
    return columns


def _auc(table: pd.DataFrame, feature: str) -> tuple[float, int, int]:
    """ROC AUC of ``feature`` for found-FN against false-alarm rows (NaN with an empty class)."""

    result = error_detection(
        table.rename(columns={"kind": "type"}), feature, "found_FN", "false_alarm"
    )
    return result.auc, result.n_positive, result.n_negative


def _curve(
    table: pd.DataFrame,
    counts: pd.DataFrame,
    levels: Sequence[float],
    peak: str,
) -> pd.DataFrame:
    n_subjects = len(counts)
    n_fn = int(counts["n_FN"].sum())
    n_reference = int(counts["n_reference_lesions"].sum())
    rows = []
    for level in levels:
        at_level = table[table["level"] == level]
        found = sum(
            len({int(i) for ids in group["found_fn_ids"] for i in str(ids).split(",") if i})
            for _, group in at_level[at_level["kind"] == "found_FN"].groupby("subject")
        )
        explained = at_level[at_level[peak].notna()]
        auc_peak, n_found, n_false = _auc(explained, peak)
        auc_probability = _auc(explained, "max_probability")[0]
        rows.append(
            {
                "level": level,
                "n_subjects": n_subjects,
                "n_reference_lesions": n_reference,
                "n_FN": n_fn,
                "n_FN_found": found,
                "fraction_FN_found": found / n_fn if n_fn else np.nan,
                "sensitivity_before": 1 - n_fn / n_reference if n_reference else np.nan,
                "sensitivity_after": 1 - (n_fn - found) / n_reference if n_reference else np.nan,
                "n_candidates": len(at_level),
                "n_found_FN_candidates": int((at_level["kind"] == "found_FN").sum()),
                "n_other_lesion_candidates": int((at_level["kind"] == "other_lesion").sum()),
                "n_false_alarms": int((at_level["kind"] == "false_alarm").sum()),
                "false_alarms_per_subject": int((at_level["kind"] == "false_alarm").sum())
                / n_subjects,
                "n_explained_found_FN": n_found,
                "n_explained_false_alarm": n_false,
                f"auc_{peak}": auc_peak,
                "auc_max_probability": auc_probability,
            }
        )
    return pd.DataFrame(rows)


def run_uncertainty_experiment(
    dataset: PathLike,
    model: nn.Module,
    options: ExperimentOptions = ExperimentOptions(),
    *,
    method: UncertaintyMethod = "tta",
    signal: UncertaintySignal = "max",
    levels: Sequence[float] | None = None,
    ensemble: Sequence[nn.Module] = (),
    dropout_passes: int = 8,
    max_subjects: int | None = None,
    n_samples: int = 8,
    max_explained: int = 4,
    progress: Progress | None = None,
) -> UncertaintyResult:
    """Candidates for missed lesions from uncertainty, typed and explained, over a dataset.

    Parameters
    ----------
    dataset
        A BIDS-like dataset; subjects with a reference lesion mask are used.
    model
        The loaded model whose misses are sought (its card's threshold gives the prediction).
    options
        The run's seed (of MC dropout, of the sample of explained domains and of the SmoothGrad
        noise), the context the maps differentiate (resolved as ``explain`` resolves it,
        :func:`instasal.pipeline.context_choice.resolve_context`; ``None``: the prediction's
        own), and the channel-name check.
    method
        ``"tta"`` (8 flips), ``"mc_dropout"`` (``dropout_passes`` passes) or ``"ensemble"``
        (``model`` with the members ``ensemble``); see :mod:`instasal.models.uncertainty`.
    signal
        Which statistic the candidate rule thresholds: ``"max"`` probability over the passes (the
        default: some pass calls the voxel lesion), ``"mean"`` or ``"sd"``.
    levels
        The levels swept (:func:`instasal.models.uncertainty.find_candidates`); default
        :func:`default_levels`.
    max_subjects
        Use the first subjects only.
    n_samples
        SmoothGrad noise draws (paper: 50).
    max_explained
        Domains explained per subject, level and kind (found FN, false alarm), a seeded uniform
        sample; the other rows have no saliency columns.
    progress
        Called with each stage, rows done and rows in all.

    Returns
    -------
    UncertaintyResult
        The candidates and the per-level curve, written by
        :func:`~instasal.experiments.results.write_experiment` as
        ``uncertainty_candidates.tsv``, ``uncertainty_curve.tsv``, ``uncertainty_summary.json``
        and, given :func:`~instasal.experiments.figures.uncertainty_figure`, ``uncertainty.png``.
    """
    check_options(options)
    card = card_of(model)
    levels = tuple(
        float(v) for v in (default_levels(signal, card.threshold) if levels is None else levels)
    )
    _check_arguments(method, signal, levels, max_subjects, max_explained)
    seed = options.seed
    smoothgrad = SmoothGradConfig(n_samples=n_samples, seed=seed)
    plan = _SweepPlan(
        method, signal, levels, tuple(ensemble), dropout_passes, smoothgrad, max_explained, seed
    )
    n_total = len(reference_subjects(dataset, max_subjects))
    started = time.perf_counter()
    sweeps: list[_SubjectSweep] = []
    subjects = prepared_subjects(
        dataset,
        model,
        limit=max_subjects,
        context=options.context,
        ignore_channel_names=options.ignore_channel_names,
    )
    for index, prepared in enumerate(subjects):
        if progress is not None:
            progress("subjects", index, n_total)
        sweeps.append(_sweep_subject(prepared, index, plan, card.threshold, progress))
    if progress is not None:
        progress("subjects", n_total, n_total)
    table = pd.concat([s.table for s in sweeps], ignore_index=True) if sweeps else pd.DataFrame()
    if table.empty:
        raise ConfigurationError(
            f"{dataset}: no candidate domain at levels {list(levels)}; lower the levels"
        )
    return _result(table, sweeps, plan, card, started)


@dataclass(frozen=True)
class _SweepPlan:
    """The choices of the sweep: how uncertainty is measured, the levels, what is explained."""

    method: UncertaintyMethod
    signal: UncertaintySignal
    levels: tuple[float, ...]
    ensemble: tuple[nn.Module, ...]
    dropout_passes: int
    smoothgrad: SmoothGradConfig
    max_explained: int
    seed: int


@dataclass(frozen=True, eq=False)
class _SubjectSweep:
    """One subject's candidate rows (saliency columns for the explained sample), its counts and
    the time each part took."""

    table: pd.DataFrame
    counts: dict[str, Any]
    n_passes: int
    seconds: dict[str, float]
    context: tuple[Context, str | None]


def _sweep_subject(
    prepared: ExperimentSubject,
    index: int,
    plan: _SweepPlan,
    threshold: float,
    progress: Progress | None,
) -> _SubjectSweep:
    """The candidates of every level for one subject, typed, and a seeded sample explained."""
    subject = prepared.files.subject_id
    clock = time.perf_counter()
    uncertainty = voxel_uncertainty(
        prepared.network,
        prepared.x,
        plan.method,
        n_samples=plan.dropout_passes,
        seed=plan.seed,
        ensemble=_on_working_grid(plan.ensemble, prepared.network),
    )
    predicted = prepared.probability >= threshold
    domain_index: dict[Any, int] = {}
    rows: list[dict[str, Any]] = []
    found_at: dict[float, Instances] = {}
    for level in plan.levels:
        found_at[level] = find_candidates(
            uncertainty.signal(plan.signal), predicted, prepared.subject.affine, level=level
        )
        candidates = classify_candidates(found_at[level], prepared.instances, prepared.reference)
        rows += _candidate_rows(
            subject, level, candidates, uncertainty, prepared.probability, domain_index
        )
    seconds = {"uncertainty": time.perf_counter() - clock}
    table = pd.DataFrame(rows)
    clock = time.perf_counter()
    masks = {}
    for domain in _chosen_domains(table, plan.max_explained, plan.seed + index):
        first = table[table["domain"] == domain].iloc[0]
        masks[domain] = found_at[first["level"]].mask(int(first["candidate_id"]))
    saliency = _explain(prepared.network, prepared, masks, plan.smoothgrad, progress)
    seconds["saliency"] = time.perf_counter() - clock
    if saliency:
        columns = pd.DataFrame.from_dict(saliency, orient="index")
        table = table.join(columns, on="domain")
    counts = {
        "subject": subject,
        "n_reference_lesions": len(
            connected_components(prepared.reference, prepared.subject.affine)
        ),
        "n_FN": len(prepared.instances.of_kind("FN")),
    }
    context = (prepared.context, prepared.context_note)
    return _SubjectSweep(table, counts, uncertainty.n_passes, seconds, context)


def _result(
    table: pd.DataFrame,
    sweeps: Sequence[_SubjectSweep],
    plan: _SweepPlan,
    card: ModelCard,
    started: float,
) -> UncertaintyResult:
    """The per-level curve and the ROC AUC of the explained sample, with the sweep's counts."""
    peak = f"peak_{card.channel_names[0]}"
    if peak not in table:
        table[peak] = np.nan
    counts = [s.counts for s in sweeps]
    curve = _curve(table, pd.DataFrame(counts), plan.levels, peak)
    explained = explained_domains(table, peak)
    auc, n_found, n_false = _auc(explained, peak)
    seconds = {
        part: float(sum(s.seconds[part] for s in sweeps)) for part in ("uncertainty", "saliency")
    }
    return UncertaintyResult(
        candidates=table,
        curve=curve,
        method=plan.method,
        signal=plan.signal,
        levels=plan.levels,
        threshold=card.threshold,
        n_passes=sweeps[-1].n_passes,
        n_subjects=len(counts),
        n_reference_lesions=int(sum(c["n_reference_lesions"] for c in counts)),
        n_FN=int(sum(c["n_FN"] for c in counts)),
        **context_fields([s.context for s in sweeps]),
        n_samples=plan.smoothgrad.n_samples,
        max_explained=plan.max_explained,
        peak=peak,
        n_found_FN_domains=n_found,
        n_false_alarm_domains=n_false,
        auc_peak=auc,
        auc_max_probability=_auc(explained, "max_probability")[0],
        seconds={**seconds, "total": time.perf_counter() - started},
        seed=plan.seed,
    )


def _on_working_grid(members: Sequence[nn.Module], network: nn.Module) -> list[nn.Module]:
    """Ensemble members run like the explained network: resampled the same way when it is."""
    if not isinstance(network, ResampledNetwork):
        return list(members)
    return [ResampledNetwork(member, network.spacing) for member in members]
