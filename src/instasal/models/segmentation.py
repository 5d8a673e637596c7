"""Segmenting one subject: through the preparation stage, predict, write probability and mask.

The subject is mapped to the model's input space by :func:`instasal.prepare.prepare_subject`
(orientation, voxel size, normalisation). Where the voxel sizes differ, the normalised input is
resampled to the model's spacing (:func:`instasal.prepare.resample`), predicted there with the
sliding window, and the **logits** mapped back by the same rule as in the differentiated graph
(:class:`instasal.prepare.ResampledNetwork`) before the activation,
so the probability is that of the same logit saliency differentiates; outputs always lie on the
input's own grid, in its own orientation. An nnU-Net v2 folder is predicted by nnU-Net's own code
instead (:func:`instasal.models.nnunet_predict.predict_nnunet`: its preprocessing, sliding window
and, unless ``tta=False``, its test-time mirroring), so the lesions are those ``nnUNetv2_predict``
reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instasal.errors import OutputExistsError
from instasal.folders import output_folder_lock, plain_file_name, refuse_writing_over_inputs
from instasal.instances import find_instances
from instasal.io import Subject, read_subject
from instasal.models.cards import card_of
from instasal.models.inference import (
    check_finite_prediction,
    predict_logits,
    probability_from_logits,
)
from instasal.models.loaders import check_channels, with_model_channels
from instasal.models.nnunet_predict import nnunet_network, predict_nnunet
from instasal.prepare import PreparedSubject, ResampledNetwork, prepare_subject
from instasal.typing import BoolArray, FloatArray, PathLike

__all__ = ["SegmentationResult", "predict_prepared", "predict_subject", "segment_subject"]


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


def predict_prepared(
    prepared: PreparedSubject,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    tta: bool = True,
) -> FloatArray:
    """Target probability on a prepared subject's working grid (float32 ``[X, Y, Z]``).

    Sliding-window inference at the model's own voxel size; with a :class:`ResampledNetwork`
    the input is resampled to that size first and the stitched logits resampled back. An nnU-Net
    v2 folder is predicted as ``nnUNetv2_predict`` does on the native subject, with its mirroring
    test-time augmentation unless ``tta`` is false (``--disable_tta``); ``overlap`` and
    ``sw_batch_size`` then do not apply (nnU-Net's step 0.5).
    """
    network = prepared.network
    folder = nnunet_network(network)
    if folder is not None:
        native = predict_nnunet(network, prepared.native, tta=tta, device=device)
        check_finite_prediction(native, card_of(folder).name, "probabilities")
        return np.ascontiguousarray(prepared.to_working(native))
    if not isinstance(network, ResampledNetwork):
        logits = predict_logits(
            network, prepared.x, overlap=overlap, sw_batch_size=sw_batch_size, device=device
        )
        return probability_from_logits(logits, card_of(network))
    x = network.to_model_grid(prepared.x[None])[0]
    logits = predict_logits(
        network.network, x, overlap=overlap, sw_batch_size=sw_batch_size, device=device
    )
    back = network.from_model_grid(torch.from_numpy(logits)[None], prepared.working.shape)[0]
    return probability_from_logits(back.numpy(), card_of(network.network))


def predict_subject(
    model: nn.Module,
    subject: Subject,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    tta: bool = True,
) -> FloatArray:
    """Target probability of ``model`` on a raw (unnormalised) subject, on the subject's grid.

    ``tta`` applies to nnU-Net v2 folders (its mirroring; see :func:`predict_prepared`).

    Raises
    ------
    ModelError
        When the subject's channels are not the model's.
    """
    check_channels(model, subject.channel_names)
    prepared = prepare_subject(subject, model)
    probability = predict_prepared(
        prepared, overlap=overlap, sw_batch_size=sw_batch_size, device=device, tta=tta
    )
    return np.ascontiguousarray(prepared.to_native(np.clip(probability, 0.0, 1.0)))


def segment_subject(
    images: Subject | PathLike | Sequence[PathLike],
    model: nn.Module,
    out: PathLike,
    *,
    name: str | None = None,
    threshold: float | None = None,
    overlap: float = 0.5,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    tta: bool = True,
    ignore_channel_names: bool = False,
) -> SegmentationResult:
    """Segment one subject and write ``<name>_prob.nii.gz`` and ``<name>_mask.nii.gz`` in ``out``.

    The arguments come in the order of :func:`instasal.explain_subject`: images, model, out.

    Parameters
    ----------
    images
        A :class:`~instasal.io.Subject`, or its channel files in the model's order (FLAIR first).
    model
        A loaded model (:func:`instasal.load_model`).
    out
        Output folder (created if missing), locked for the run (a second run into it is refused
        while this one lives).
    name
        File name prefix, a plain file name (no folder part: the files stay in ``out``); default:
        the subject's name (first file's stem).
    threshold
        Decision threshold; default: the card's (chosen on validation).
    overlap
        Sliding-window overlap.
    overwrite
        Replace existing outputs; otherwise an existing output is refused before any work.
    device
        Where to run the network.
    tta
        nnU-Net v2 folders: mirroring test-time augmentation as ``nnUNetv2_predict`` does by
        default; ``False`` reproduces its ``--disable_tta``.
    ignore_channel_names
        Take the files as the model's channels in the order given even where their names say
        otherwise (:func:`instasal.channels.check_channel_files`); without it that is refused.

    Raises
    ------
    ConfigurationError
        When ``name`` is not a plain file name, or an output is one of the images (with or
        without ``overwrite``).
    OutputExistsError
        When an output exists and ``overwrite`` is false.
    OutputLockedError
        When another live run holds ``out``.
    ImageError, ModelError
        On unreadable images or channels that do not match the model.
    TypeError
        When ``images`` is a model (the order of releases before issue 26).

    Examples
    --------
    >>> model = instasal.load_model("unet")  # doctest: +SKIP
    >>> files = ["sub-001_FLAIR.nii.gz", "sub-001_T1w.nii.gz"]
    >>> segment_subject(files, model, "out")  # doctest: +SKIP
    """
    if isinstance(images, nn.Module):
        raise TypeError(
            "segment_subject(images, model, out): images is a model "
            f"({type(images).__name__}); pass the images first, as explain_subject takes them"
        )
    subject = images if isinstance(images, Subject) else read_subject(_as_list(images))
    card = card_of(model)
    subject = with_model_channels(model, subject, ignore_channel_names=ignore_channel_names)
    prefix = subject.name if name is None else plain_file_name(name, what="--name")
    folder = Path(out)
    probability_path = folder / f"{prefix}_prob.nii.gz"
    mask_path = folder / f"{prefix}_mask.nii.gz"
    used = card.threshold if threshold is None else threshold
    with output_folder_lock(out):
        refuse_writing_over_inputs((probability_path, mask_path), subject.paths)
        if not overwrite:
            for path in (probability_path, mask_path):
                if path.exists():
                    raise OutputExistsError(
                        f"{path}: exists already (pass overwrite=True / --overwrite)"
                    )
        probability = predict_subject(model, subject, overlap=overlap, device=device, tta=tta)
        lesions = find_instances(probability, subject.affine, threshold=used)
        mask = lesions.predicted_mask()
        subject.on_grid(probability).save(probability_path, overwrite=overwrite)
        subject.on_grid(mask).save(mask_path, overwrite=overwrite)
    return SegmentationResult(probability, mask, used, probability_path, mask_path)


def _as_list(images: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [images] if isinstance(images, str | os.PathLike) else list(images)
