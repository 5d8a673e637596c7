"""Segmenting one subject: normalise as the card says, predict, write probability and mask NIfTIs.

Where the subject's voxel size differs from the card's ``spacing_mm`` by more than 5 % on an axis,
the normalised input is resampled (trilinear) to the model's spacing, predicted there, and the
probability resampled back, so outputs always lie on the input grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import OutputExistsError
from instasal.instances import find_instances
from instasal.io import Subject, read_subject, write_nifti, zscore_nonzero
from instasal.models.cards import ModelCard, card_of
from instasal.models.inference import predict_probability
from instasal.models.loaders import check_channels
from instasal.typing import BoolArray, FloatArray, PathLike

__all__ = ["SegmentationResult", "normalise_for_model", "predict_subject", "segment_subject"]

SPACING_TOLERANCE = 0.05


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """What :func:`segment_subject` produced.

    Attributes
    ----------
    probability
        Target probability on the input grid, float32 ``[X, Y, Z]``.
    mask
        Lesion mask (probability ≥ threshold, components above the SPEC §1 minimum volume).
    threshold
        The threshold used.
    probability_path, mask_path
        The written NIfTI files.
    """

    probability: FloatArray
    mask: BoolArray
    threshold: float
    probability_path: Path
    mask_path: Path


def normalise_for_model(data: FloatArray, card: ModelCard) -> FloatArray:
    """Normalise ``[C, X, Y, Z]`` the way the card says the model was trained.

    ``"nnunet"`` (non-z-score nnU-Net schemes such as CT) falls back to the masked z-score; the
    exact scheme is recorded in ``card.preprocessing``.
    """
    if card.normalisation == "none":
        return np.asarray(data, dtype=np.float32)
    if card.normalisation == "zscore":
        values = np.asarray(data, dtype=np.float64)
        axes = tuple(range(1, values.ndim))
        mean = values.mean(axis=axes, keepdims=True)
        std = values.std(axis=axes, keepdims=True)
        return ((values - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return zscore_nonzero(data)


def predict_subject(
    model: nn.Module,
    subject: Subject,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
) -> FloatArray:
    """Target probability of ``model`` on a raw (unnormalised) subject, on the subject's grid.

    Raises
    ------
    ModelError
        When the subject's channels are not the model's.
    """
    card = card_of(model)
    check_channels(model, subject.channel_names)
    x = torch.from_numpy(normalise_for_model(subject.data, card))
    target_shape = _model_grid(subject, card)
    if target_shape is not None:
        x = F.interpolate(x[None], size=target_shape, mode="trilinear", align_corners=False)[0]
    probability = predict_probability(
        model, x, overlap=overlap, sw_batch_size=sw_batch_size, device=device
    )
    if target_shape is not None:
        back = F.interpolate(
            torch.from_numpy(probability)[None, None],
            size=subject.shape,
            mode="trilinear",
            align_corners=False,
        )
        probability = back[0, 0].numpy()
    return np.clip(probability, 0.0, 1.0).astype(np.float32)


def _model_grid(subject: Subject, card: ModelCard) -> tuple[int, int, int] | None:
    """The grid shape at the model's spacing, or ``None`` when the subject's is close enough."""
    if card.spacing_mm is None:
        return None
    ratios = [have / want for have, want in zip(subject.spacing, card.spacing_mm, strict=True)]
    if all(abs(ratio - 1.0) <= SPACING_TOLERANCE for ratio in ratios):
        return None
    x, y, z = (
        max(1, round(size * ratio)) for size, ratio in zip(subject.shape, ratios, strict=True)
    )
    return (x, y, z)


def segment_subject(
    model: nn.Module,
    images: Subject | PathLike | list[PathLike],
    out: PathLike,
    *,
    name: str | None = None,
    threshold: float | None = None,
    overlap: float = 0.5,
    overwrite: bool = False,
    device: torch.device | str | None = None,
) -> SegmentationResult:
    """Segment one subject and write ``<name>_prob.nii.gz`` and ``<name>_mask.nii.gz`` in ``out``.

    Parameters
    ----------
    model
        A loaded model (:func:`instasal.load_model`).
    images
        A :class:`~instasal.io.Subject`, or its channel files in the model's order (FLAIR first).
    out
        Output folder (created if missing).
    name
        File name prefix; default: the subject's name (first file's stem).
    threshold
        Decision threshold; default: the card's (chosen on validation).
    overlap
        Sliding-window overlap.
    overwrite
        Replace existing outputs; otherwise an existing output is refused before any work.
    device
        Where to run the network.

    Raises
    ------
    OutputExistsError
        When an output exists and ``overwrite`` is false.
    ImageError, ModelError
        On unreadable images or channels that do not match the model.

    Examples
    --------
    >>> model = instasal.load_model("unet")  # doctest: +SKIP
    >>> files = ["sub-001_FLAIR.nii.gz", "sub-001_T1w.nii.gz"]
    >>> segment_subject(model, files, "out")  # doctest: +SKIP
    """
    subject = images if isinstance(images, Subject) else read_subject(_as_list(images))
    card = card_of(model)
    prefix = name or subject.name.removesuffix("_FLAIR")
    folder = Path(out)
    probability_path = folder / f"{prefix}_prob.nii.gz"
    mask_path = folder / f"{prefix}_mask.nii.gz"
    if not overwrite:
        for path in (probability_path, mask_path):
            if path.exists():
                raise OutputExistsError(
                    f"{path}: exists already (pass overwrite=True / --overwrite)"
                )
    used = card.threshold if threshold is None else threshold
    probability = predict_subject(model, subject, overlap=overlap, device=device)
    lesions = find_instances(probability, subject.affine, threshold=used)
    mask = lesions.labels > 0
    write_nifti(
        probability, subject.affine, probability_path, header=subject.header, overwrite=overwrite
    )
    write_nifti(mask, subject.affine, mask_path, header=subject.header, overwrite=overwrite)
    return SegmentationResult(probability, mask, used, probability_path, mask_path)


def _as_list(images: PathLike | list[PathLike]) -> list[PathLike]:
    return list(images) if isinstance(images, list) else [images]
