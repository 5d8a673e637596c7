"""Lesion-wise segmentation metrics as the paper reports them, and cohort evaluation.

- **nDSC**, the normalised Dice of Raina et al. (2023, "Tackling bias in the Dice similarity
  coefficient: introducing nDSC for white matter lesion segmentation"): false positives are scaled
  by ``k = (1 − r)·|G| / (r·(N − |G|))`` so that every subject is scored as if its lesion load
  ``|G| / N`` were the reference load ``r`` (default 0.001, as in their code); ``nDSC = 2·TP /
  (2·TP + k·FP + FN)`` over voxels, 1 when both masks are empty, and ``k = 1`` (plain Dice) when the
  reference is empty.
- **Lesion TPR / FNR**: the fraction of reference lesions (connected components, SPEC §1 rules)
  that a predicted lesion overlaps by at least one voxel / that none does (so TPR + FNR = 1).
- **Lesion FDR**: the fraction of predicted lesions overlapping no reference voxel.

Per subject, the prediction is the SPEC §1 lesion mask (probability ≥ threshold, components above
the minimum volume). Cohort figures are means over subjects (TPR/FNR over subjects with reference
lesions, FDR over subjects with predicted lesions), with pooled lesion counts beside them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from instasal.dataset import discover_dataset
from instasal.errors import ConfigurationError
from instasal.instances import lesion_components
from instasal.io import atomic_write_text, load_mask, read_subject, voxel_volume_mm3, write_nifti
from instasal.models.cards import card_of
from instasal.models.loaders import check_channels, load_model
from instasal.models.segmentation import predict_subject
from instasal.typing import Connectivity, PathLike, Progress

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

__all__ = [
    "REFERENCE_LESION_LOAD",
    "LesionMetrics",
    "detection_by_volume",
    "evaluate_cohort",
    "lesion_metrics",
    "normalised_dice",
    "summarise_metrics",
]

REFERENCE_LESION_LOAD = 0.001


def normalised_dice(
    reference: np.ndarray, prediction: np.ndarray, *, r: float = REFERENCE_LESION_LOAD
) -> float:
    """nDSC of a binary prediction against a binary reference (Raina et al. 2023).

    Examples
    --------
    >>> reference = np.zeros(1000, bool); reference[:10] = True
    >>> round(normalised_dice(reference, reference), 6)
    1.0
    """
    if not 0.0 < r < 1.0:
        raise ConfigurationError(f"r must be in (0, 1), got {r}")
    gt = np.asarray(reference) != 0
    seg = np.asarray(prediction) != 0
    if gt.shape != seg.shape:
        raise ConfigurationError(f"reference shape {gt.shape} differs from prediction {seg.shape}")
    n_reference = int(gt.sum())
    if n_reference + int(seg.sum()) == 0:
        return 1.0
    k = 1.0
    if n_reference > 0:
        k = (1.0 - r) * n_reference / (r * (gt.size - n_reference))
    tp = float(np.count_nonzero(seg & gt))
    fp = float(np.count_nonzero(seg & ~gt))
    fn = float(np.count_nonzero(~seg & gt))
    return 2.0 * tp / (2.0 * tp + k * fp + fn)


@dataclass(frozen=True)
class LesionMetrics:
    """Metrics of one subject.

    Attributes
    ----------
    ndsc, dice
        Normalised and plain voxel Dice of the lesion mask.
    tpr, fnr, fdr
        Lesion-wise rates (NaN where the denominator is 0: no reference / no predicted lesion).
    n_reference, n_predicted
        Reference and predicted lesion counts.
    n_detected
        Reference lesions overlapped by a predicted lesion.
    n_true_positive, n_false_positive
        Predicted lesions overlapping / not overlapping the reference.
    n_false_negative
        Reference lesions with no predicted voxel.
    """

    ndsc: float
    dice: float
    tpr: float
    fnr: float
    fdr: float
    n_reference: int
    n_predicted: int
    n_detected: int
    n_true_positive: int
    n_false_positive: int
    n_false_negative: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a flat dictionary (a table row)."""
        return asdict(self)


def lesion_metrics(
    reference: np.ndarray,
    probability: np.ndarray,
    affine: np.ndarray,
    *,
    threshold: float,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
    r: float = REFERENCE_LESION_LOAD,
) -> LesionMetrics:
    """Lesion-wise metrics of a probability map against a reference mask (module docstring).

    Parameters
    ----------
    reference
        Ground-truth lesion mask ``[X, Y, Z]``.
    probability
        Predicted lesion probability on the same grid (a binary mask works with any threshold
        in (0, 1]).
    affine
        Voxel-to-world matrix (voxel volume for the size rule).
    threshold, connectivity, min_volume_mm3
        The SPEC §1 lesion rules, applied to prediction and reference alike.
    r
        Reference lesion load of nDSC.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigurationError(f"threshold must be in [0, 1], got {threshold}")
    gt = np.asarray(reference) != 0
    probability = np.asarray(probability)
    if gt.shape != probability.shape:
        raise ConfigurationError(
            f"reference shape {gt.shape} differs from the probability's {probability.shape}"
        )
    voxel_volume = voxel_volume_mm3(affine)
    predicted, n_predicted = lesion_components(
        probability >= threshold, voxel_volume, connectivity, min_volume_mm3
    )
    references, n_reference = lesion_components(gt, voxel_volume, connectivity, min_volume_mm3)
    prediction_mask = predicted > 0
    overlapping_predicted = np.unique(predicted[gt])
    n_tp = int(np.count_nonzero(overlapping_predicted))
    n_fp = n_predicted - n_tp
    detected = np.unique(references[prediction_mask])
    n_detected = int(np.count_nonzero(detected))
    n_fn = n_reference - n_detected
    both = int(gt.sum()) + int(prediction_mask.sum())
    dice = 1.0 if both == 0 else 2.0 * int(np.count_nonzero(gt & prediction_mask)) / both
    return LesionMetrics(
        ndsc=normalised_dice(gt, prediction_mask, r=r),
        dice=dice,
        tpr=n_detected / n_reference if n_reference else math.nan,
        fnr=n_fn / n_reference if n_reference else math.nan,
        fdr=n_fp / n_predicted if n_predicted else math.nan,
        n_reference=n_reference,
        n_predicted=n_predicted,
        n_detected=n_detected,
        n_true_positive=n_tp,
        n_false_positive=n_fp,
        n_false_negative=n_fn,
    )


def detection_by_volume(
    reference: np.ndarray,
    probability: np.ndarray,
    affine: np.ndarray,
    *,
    threshold: float,
    edges_mm3: Sequence[float] = (5.0, 16.0, 40.0, 120.0, math.inf),
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
) -> list[tuple[float, float, int, int]]:
    """Reference lesions and detected ones per volume band ``(low, high]`` in mm³.

    Returns one ``(low, high, n_reference, n_detected)`` per band of consecutive ``edges_mm3``;
    detection is the non-zero-overlap rule of :func:`lesion_metrics`.
    """
    if len(edges_mm3) < 2 or any(b <= a for a, b in itertools.pairwise(edges_mm3)):
        raise ConfigurationError(f"edges_mm3 must increase, got {tuple(edges_mm3)}")
    voxel_volume = voxel_volume_mm3(affine)
    gt = np.asarray(reference) != 0
    predicted, _ = lesion_components(
        np.asarray(probability) >= threshold, voxel_volume, connectivity, min_volume_mm3
    )
    references, _ = lesion_components(gt, voxel_volume, connectivity, min_volume_mm3)
    volumes = np.bincount(references.ravel())[1:] * voxel_volume
    detected = np.zeros(len(volumes), bool)
    hit = np.unique(references[predicted > 0])
    detected[hit[hit > 0] - 1] = True
    bands = []
    for low, high in itertools.pairwise(edges_mm3):
        inside = (volumes > low) & (volumes <= high)
        bands.append((float(low), float(high), int(inside.sum()), int((inside & detected).sum())))
    return bands


def summarise_metrics(per_subject: Sequence[LesionMetrics]) -> dict[str, float]:
    """Cohort summary: means over subjects (NaN-aware) and pooled lesion-wise rates.

    Keys: ``ndsc``, ``dice``, ``tpr``, ``fnr``, ``fdr`` (means over subjects), ``ndsc_sd``,
    ``tpr_pooled``, ``fdr_pooled``, ``n_subjects``, ``n_reference``, ``n_predicted``,
    ``n_false_positive``, ``n_false_negative``.
    """
    if not per_subject:
        raise ConfigurationError("no subjects to summarise")

    def mean(name: str) -> float:
        values = np.array([getattr(m, name) for m in per_subject], dtype=float)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    n_reference = sum(m.n_reference for m in per_subject)
    n_predicted = sum(m.n_predicted for m in per_subject)
    n_detected = sum(m.n_detected for m in per_subject)
    n_false_positive = sum(m.n_false_positive for m in per_subject)
    return {
        "ndsc": mean("ndsc"),
        "ndsc_sd": float(np.std([m.ndsc for m in per_subject])),
        "dice": mean("dice"),
        "tpr": mean("tpr"),
        "fnr": mean("fnr"),
        "fdr": mean("fdr"),
        "tpr_pooled": n_detected / n_reference if n_reference else math.nan,
        "fdr_pooled": n_false_positive / n_predicted if n_predicted else math.nan,
        "n_subjects": float(len(per_subject)),
        "n_reference": float(n_reference),
        "n_predicted": float(n_predicted),
        "n_false_positive": float(n_false_positive),
        "n_false_negative": float(sum(m.n_false_negative for m in per_subject)),
    }


def evaluate_cohort(
    models: Sequence[str | nn.Module],
    cohort: PathLike,
    *,
    out: PathLike | None = None,
    threshold: float | None = None,
    overlap: float = 0.5,
    min_volume_mm3: float = 5.0,
    overwrite: bool = False,
    write_probabilities: bool = False,
    progress: Progress | None = None,
    trust_model_code: bool = False,
    ignore_channel_names: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment every labelled subject of a cohort with every model and score it.

    Parameters
    ----------
    models
        Built-in names, paths (anything :func:`instasal.load_model` takes) or loaded models.
    cohort
        A BIDS-like dataset folder (:func:`instasal.dataset.discover_dataset`) whose subjects have
        lesion masks (e.g. a phantom cohort).
    out
        Where to write ``metrics_per_subject.tsv`` and ``metrics_summary.tsv`` (atomically);
        ``None`` writes nothing.
    threshold
        Decision threshold for every model; default: each model card's own.
    overlap
        Sliding-window overlap.
    min_volume_mm3
        Reference and predicted components of at most this volume are not lesions (the
        deployed rule's 5 mm³ by default). Phantoms v2 state a 24 mm³ minimum for ground truth
        and evaluation (``instasal.phantoms.lesions_v2.MIN_LESION_MM3``, ``docs/phantoms.md``):
        evaluate v2 cohorts with it.
    overwrite
        Replace existing tables in ``out``.
    write_probabilities
        Also write each probability map as ``out/<model>/<subject>_prob.nii.gz``.
    progress
        Called after each (model, subject) as
        ``progress("segmentation of <model> <subject>", done, total)``.
    trust_model_code
        Let models given by path run code from their own files
        (:func:`instasal.models.load_model`).
    ignore_channel_names
        Take each subject's files as the model's channels even where their names say another
        order (:func:`instasal.channels.check_channel_files`); without it that is refused.

    Returns
    -------
    per_subject, summary
        One row per (model, subject) with :class:`LesionMetrics` fields; one row per model with
        :func:`summarise_metrics` keys and the threshold used.
    """

    subjects = [(s, s.lesion_mask) for s in discover_dataset(cohort) if s.lesion_mask is not None]
    if not subjects:
        raise ConfigurationError(f"{cohort}: no subject with a lesion mask to evaluate against")
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    total, done = len(models) * len(subjects), 0
    for entry in models:
        model = (
            load_model(entry, trust_code=trust_model_code)
            if isinstance(entry, str | Path)
            else entry
        )
        card = card_of(model)
        used = card.threshold if threshold is None else threshold
        results: list[LesionMetrics] = []
        for files, lesion_mask in subjects:
            subject = read_subject(files.images)
            check_channels(
                model, subject.channel_names, () if ignore_channel_names else subject.paths
            )
            probability = predict_subject(model, subject, overlap=overlap)
            if out is not None and write_probabilities:
                target = Path(out) / card.name / f"{files.subject_id}_prob.nii.gz"
                write_nifti(probability, subject.affine, target, overwrite=overwrite)
            reference = load_mask(lesion_mask, subject, role="reference lesion mask")
            metrics = lesion_metrics(
                reference,
                probability,
                subject.affine,
                threshold=used,
                min_volume_mm3=min_volume_mm3,
            )
            results.append(metrics)
            rows.append({"model": card.name, "subject": files.subject_id} | metrics.as_dict())
            done += 1
            if progress is not None:
                progress(f"segmentation of {card.name} {files.subject_id}", done, total)
        settings = {"model": card.name, "threshold": used, "min_volume_mm3": min_volume_mm3}
        summaries.append(settings | summarise_metrics(results))
    per_subject, summary = pd.DataFrame(rows), pd.DataFrame(summaries)
    if out is not None:
        folder = Path(out)
        for name, table in (("metrics_per_subject", per_subject), ("metrics_summary", summary)):
            text = table.to_csv(sep="\t", index=False, float_format="%.6g")
            atomic_write_text(folder / f"{name}.tsv", text, overwrite=overwrite)
    return per_subject, summary
