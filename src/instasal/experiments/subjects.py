"""The subjects an experiment runs on, and which of their lesions it uses.

Each subject of a BIDS-like dataset with a reference is read, prepared for the model
(:mod:`instasal.prepare`), segmented and typed, and its context resolved as ``explain`` resolves
it (:func:`instasal.pipeline.context_choice.resolve_context`: by default the prediction's own
forward, ``deployed``). The context is the forward pass whose probability the context and
relocation experiments measure and whose maps the others compute: ``deployed`` the sliding-window
prediction (only the windows reaching the lesion are run), ``patch`` one patch around the lesion,
``full`` one pass over the whole volume. A cap on the lesions is drawn at random, never in raster
order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from instasal.dataset import SubjectFiles, discover_dataset
from instasal.errors import ConfigurationError
from instasal.instances import Instance, Instances, classify_instances, find_instances
from instasal.io import Subject, load_mask, read_subject
from instasal.models import with_model_channels
from instasal.models.cards import card_of
from instasal.models.inference import probability_from_logits
from instasal.models.segmentation import predict_prepared
from instasal.pipeline.cohort import subject_seed
from instasal.pipeline.context_choice import (
    deployed_obstacle,
    resolve_context,
    with_deployed_forward,
)
from instasal.pipeline.per_lesion import sample_domains
from instasal.prepare import prepare_subject
from instasal.saliency import ExplainedPass, explained_logits
from instasal.typing import Context, PathLike, check_choice

__all__ = [
    "ExperimentSubject",
    "context_record",
    "explained_probability",
    "prepared_subjects",
    "reference_subjects",
    "sample_lesions",
    "sampled_tp_lesions",
    "subject_quota",
]


@dataclass(frozen=True, eq=False)
class ExperimentSubject:
    """A subject ready for experiments, in the model's input space (:mod:`instasal.prepare`).

    Every array is on the working grid (the subject's voxels in the model's orientation), so the
    experiments' lesion ids and voxel positions refer to that grid; ``network`` is what runs on
    it (the model, or the model behind an in-graph resampling to its voxel size). ``context`` is
    the forward pass the experiment measures or explains, resolved for this model as ``explain``
    resolves it, with the note ``explain`` would print (``None``: nothing to note).
    """

    files: SubjectFiles
    subject: Subject
    x: torch.Tensor
    network: nn.Module
    probability: np.ndarray
    instances: Instances
    reference: np.ndarray
    brain_mask: np.ndarray
    wm_mask: np.ndarray
    context: Context
    context_note: str | None

    def explained(self, model: nn.Module) -> ExplainedPass:
        """The forward pass explained: this subject's context, ``model``'s target class (patch
        size and size divisibility from the prepared network's card, as ``explain`` takes
        them)."""
        return ExplainedPass(target=card_of(model).target_class, context=self.context)


def reference_subjects(dataset: PathLike, limit: int | None = None) -> list[SubjectFiles]:
    """The subjects of ``dataset`` that have a reference lesion mask (the first ``limit``).

    Raises
    ------
    ConfigurationError
        If there is none.
    """
    subjects = [s for s in discover_dataset(dataset) if s.lesion_mask is not None]
    if not subjects:
        raise ConfigurationError(f"{dataset}: no subject with a reference lesion mask")
    return subjects[:limit]


def prepared_subjects(
    dataset: PathLike,
    model: nn.Module,
    *,
    limit: int | None = None,
    context: Context | None = None,
    ignore_channel_names: bool = False,
) -> Iterator[ExperimentSubject]:
    """Read, prepare, segment and type each subject of ``dataset`` that has a reference mask.

    ``context`` is resolved per subject by :func:`instasal.pipeline.context_choice.resolve_context`
    (``None``: the prediction's own forward where it is reproduced). The experiments'
    ``ignore_channel_names`` is this one: take each subject's files as the model's channels even
    where their names say another order (:func:`instasal.channels.check_channel_files`); without
    it that is refused.

    Raises
    ------
    ConfigurationError
        On a context the model cannot run (``patch`` without a patch size, ``deployed`` where the
        prediction is not reproduced), before the first subject is segmented.
    """
    if context is not None:
        check_choice("context", context, Context)
    threshold = card_of(model).threshold
    for files in reference_subjects(dataset, limit):
        native = with_model_channels(
            model, read_subject(files.images), ignore_channel_names=ignore_channel_names
        )
        prepared = prepare_subject(native, model)
        resolved, note = resolve_context(
            context, dict(getattr(prepared.network, "card", {})), deployed_obstacle(prepared)
        )
        # an nnU-Net folder's deployed forward is its own predictor on this subject, mirrored as
        # predict_prepared predicts it
        prepared = with_deployed_forward(prepared, resolved, tta=True)
        subject = prepared.working
        probability = predict_prepared(prepared)
        assert files.lesion_mask is not None
        reference = prepared.to_working(
            load_mask(files.lesion_mask, native, role="reference lesion mask")
        )
        brain = (
            prepared.to_working(load_mask(files.brain_mask, native))
            if files.brain_mask
            else subject.data[0] > 0
        )
        wm = prepared.to_working(load_mask(files.wm_mask, native)) if files.wm_mask else brain
        predicted = find_instances(probability, subject.affine, threshold=threshold)
        instances = classify_instances(predicted, reference)
        yield ExperimentSubject(
            files,
            subject,
            prepared.x,
            prepared.network,
            probability,
            instances,
            reference,
            brain,
            wm,
            resolved,
            note,
        )


def context_record(seen: Sequence[tuple[Context, str | None]]) -> dict[str, Any]:
    """The context an experiment ran in, for its summary, from each subject's ``(context,
    context_note)``: the context (one name, or the names joined where subjects differ) and
    ``explain``'s notes on it (none: an empty list)."""
    names = sorted({context for context, _ in seen})
    notes = sorted({note for _, note in seen if note is not None})
    return {"context": ",".join(names), "context_notes": notes}


def explained_probability(
    prepared: ExperimentSubject, model: nn.Module, x: torch.Tensor, domain: np.ndarray
) -> np.ndarray:
    """The target probability of the forward pass of ``prepared``'s context on input ``x``, at
    ``domain``'s voxels (NaN elsewhere): what the context and relocation experiments measure.

    In the deployed context it is the prediction's, computed only by the windows that reach the
    domain (:func:`instasal.saliency.explained_logits`).
    """
    mask = torch.from_numpy(np.ascontiguousarray(domain))
    explained = prepared.explained(model)
    logits = explained_logits(prepared.network, x, {0: mask}, explained)[0].numpy()
    probability = np.full(domain.shape, np.nan, dtype=np.float32)
    probability[domain] = probability_from_logits(logits, card_of(model))
    return probability


def subject_quota(max_lesions: int | None, done: int, subjects_left: int) -> int | None:
    """The lesions the next subject may add to an experiment capped at ``max_lesions`` in all.

    What is left of the cap spread evenly over the ``subjects_left`` subjects (this one
    included), rounded up: a subject with fewer leaves the rest to those after it, and the first
    subjects do not fill the sample. ``None``: no cap.
    """
    if max_lesions is None:
        return None
    return max(0, -(-(max_lesions - done) // max(subjects_left, 1)))


def sample_lesions(
    prepared: ExperimentSubject, eligible: Sequence[Instance], quota: int | None, seed: int
) -> list[Instance]:
    """At most ``quota`` of the ``eligible`` domains of one subject, drawn at random, in id order.

    The draw is explain's (:func:`instasal.pipeline.per_lesion.sample_domains`: uniform without
    replacement per type), seeded by the run's seed and the subject id
    (:func:`instasal.pipeline.cohort.subject_seed`): never the raster-order prefix of the ids,
    which favours the first rows of the grid. ``None``: all of them.
    """
    chosen = Instances(prepared.instances.labels, prepared.instances.affine, tuple(eligible))
    return sample_domains(chosen, quota, subject_seed(seed, prepared.files.subject_id))


def sampled_tp_lesions(
    dataset: PathLike,
    model: nn.Module,
    *,
    eligible: Callable[[Instance], bool],
    max_lesions: int | None,
    seed: int,
    context: Context | None = None,
    ignore_channel_names: bool = False,
) -> Iterator[tuple[ExperimentSubject, list[Instance]]]:
    """Each subject of ``dataset`` with a reference (:func:`prepared_subjects`) and its sample of
    the TP lesions that are ``eligible``: the one loop of the lesion experiments.

    At most ``max_lesions`` lesions in all, drawn at random with ``seed`` within each subject
    (:func:`sample_lesions`), the cap spread over the subjects (:func:`subject_quota`); ``None``:
    every eligible lesion. A subject whose sample is empty is still yielded (its context counts).
    """
    n_subjects, done = len(reference_subjects(dataset)), 0
    subjects = prepared_subjects(
        dataset, model, context=context, ignore_channel_names=ignore_channel_names
    )
    for index, prepared in enumerate(subjects):
        candidates = [r for r in prepared.instances.of_kind("TP") if eligible(r)]
        quota = subject_quota(max_lesions, done, n_subjects - index)
        lesions = sample_lesions(prepared, candidates, quota, seed)
        done += len(lesions)
        yield prepared, lesions
