"""Training the built-in architectures on a phantom (or any labelled BIDS-like) cohort.

Patches of the model's size are drawn with lesion oversampling (a fraction of patches centred on a
random lesion voxel, the rest on a random brain voxel, as nnU-Net's foreground oversampling),
augmented with MONAI transforms (flips on every axis, intensity scale and shift, Gaussian noise)
and fitted with MONAI's Dice + cross-entropy loss (deep supervision for ``"nnunet"``, weights
halving per level as nnU-Net) by AdamW with nnU-Net's polynomial learning-rate decay. After every
epoch the model segments the validation subjects (sliding window) and lesion-wise metrics are
computed for a grid of thresholds; the epoch and threshold with the best mean nDSC on validation
are kept.

Every random choice comes from one :class:`numpy.random.Generator` seeded by the configuration
(MONAI transforms are re-seeded from it for every patch; the network is initialised inside
``torch.random.fork_rng``), and its state is saved in the checkpoint after every epoch: an
interrupted run resumed from its checkpoint gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch import nn

from instasal.dataset import SubjectFiles
from instasal.errors import ConfigurationError, ModelError
from instasal.io import atomic_write_json, load_mask, read_subject, zscore_nonzero
from instasal.models.architectures import (
    ARCHITECTURES,
    build_network,
    default_gradcam_layer,
    default_hyperparameters,
    size_divisibility,
)
from instasal.models.cards import ModelCard, attach_card
from instasal.models.export import git_commit, hardware_description, save_atomic
from instasal.models.inference import predict_probability
from instasal.models.metrics import lesion_metrics, summarise_metrics
from instasal.prepare import reorient_subject, reorientation_for
from instasal.typing import BoolArray, FloatArray, PathLike, Progress, check_seed

__all__ = [
    "CHECKPOINT_NAME",
    "EpochRecord",
    "TrainingConfig",
    "TrainingResult",
    "TrainingSubject",
    "load_training_subjects",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainingConfig:
    """How to train one built-in architecture (validated at construction).

    Attributes
    ----------
    architecture
        ``"unet"``, ``"nnunet"`` or ``"swinunetr"``.
    patch_size
        Training patch (voxels); also the sliding-window size at inference.
    spacing_mm
        Voxel size of the training data (mm), recorded in the card.
    hyperparameters
        Overrides of :func:`~instasal.models.architectures.default_hyperparameters`.
    batch_size, epochs, iterations_per_epoch
        Patches per step, epochs, steps per epoch.
    learning_rate, weight_decay
        AdamW settings; the rate decays as ``(1 − step/steps)^0.9``.
    positive_fraction
        Fraction of patches centred on a lesion voxel.
    seed
        Seed of every random choice, from 0 to 2**63 - 1 (:data:`instasal.typing.MAX_SEED`).
    threads
        torch CPU threads during training.
    validation_overlap
        Sliding-window overlap at validation.
    thresholds
        Thresholds tried on validation.
    """

    architecture: str = "unet"
    patch_size: tuple[int, int, int] = (48, 48, 48)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 2
    epochs: int = 20
    iterations_per_epoch: int = 50
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    positive_fraction: float = 0.5
    seed: int = 0
    threads: int = 2
    validation_overlap: float = 0.25
    thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigurationError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"
            )
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigurationError(
                f"patch_size must be 3 positive integers, got {self.patch_size}"
            )
        divisor = size_divisibility(self.architecture, self.network_hyperparameters())
        if any(p % d for p, d in zip(self.patch_size, divisor, strict=True)):
            raise ConfigurationError(
                f"patch_size {self.patch_size} must be a multiple of {tuple(divisor)} "
                f"for {self.architecture}"
            )
        for name in ("batch_size", "epochs", "iterations_per_epoch", "threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ConfigurationError(
                f"positive_fraction must be in [0, 1], got {self.positive_fraction}"
            )
        if self.learning_rate <= 0:
            raise ConfigurationError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ConfigurationError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        check_seed(self.seed)

    def network_hyperparameters(self) -> dict[str, Any]:
        """The defaults for this architecture and patch, updated with :attr:`hyperparameters`."""
        defaults = default_hyperparameters(
            self.architecture, patch_size=self.patch_size, spacing=self.spacing_mm
        )
        return defaults | dict(self.hyperparameters)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in checkpoints and cards)."""
        payload = asdict(self)
        payload["hyperparameters"] = dict(self.hyperparameters)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in payload.items()}


@dataclass(frozen=True, eq=False)
class TrainingSubject:
    """One labelled subject in memory.

    Attributes
    ----------
    name
        Subject id.
    image
        Normalised channels ``[C, X, Y, Z]`` (z-score over non-zero voxels).
    label
        Lesion mask ``[X, Y, Z]``.
    sampling_mask
        Where negative patch centres are drawn (the brain).
    affine
        Voxel-to-world matrix.
    """

    name: str
    image: FloatArray
    label: BoolArray
    sampling_mask: BoolArray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.image.shape[1:] != self.label.shape:
            raise ConfigurationError(
                f"{self.name}: image {self.image.shape} and label {self.label.shape} disagree"
            )
        if self.sampling_mask.shape != self.label.shape or not self.sampling_mask.any():
            raise ConfigurationError(f"{self.name}: sampling mask is empty or on another grid")


@dataclass(frozen=True)
class EpochRecord:
    """Validation after one epoch: mean loss, the best threshold and its cohort metrics."""

    epoch: int
    loss: float
    threshold: float
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """The model with the best validation nDSC, its card, and the history."""

    model: nn.Module
    card: ModelCard
    history: tuple[EpochRecord, ...]
    checkpoint: Path


def load_training_subjects(files: Sequence[SubjectFiles]) -> list[TrainingSubject]:
    """Read subjects found by :func:`instasal.dataset.discover_dataset` (they need lesion masks).

    Each is reoriented to the closest canonical RAS array (exact; the orientation the trained
    card states, so that the preparation stage gives the network the same arrays at inference).

    Raises
    ------
    ConfigurationError
        When a subject has no lesion mask.
    """
    subjects = []
    for entry in files:
        if entry.lesion_mask is None:
            raise ConfigurationError(f"{entry.subject_id}: no lesion mask; cannot train on it")
        stored = read_subject(entry.images)
        reorientation = reorientation_for(stored, TRAINING_ORIENTATION)
        subject = reorient_subject(stored, reorientation)
        label = reorientation.to_working(load_mask(entry.lesion_mask, stored))
        brain = (
            reorientation.to_working(load_mask(entry.brain_mask, stored))
            if entry.brain_mask is not None
            else subject.data[0] != 0
        )
        subjects.append(
            TrainingSubject(
                entry.subject_id, zscore_nonzero(subject.data), label, brain, subject.affine
            )
        )
    return subjects


TRAINING_ORIENTATION = "RAS"


def train(
    config: TrainingConfig,
    training: Sequence[TrainingSubject],
    validation: Sequence[TrainingSubject],
    out: PathLike,
    *,
    resume: bool = True,
    progress: Progress | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainingResult:
    """Train ``config.architecture`` and keep the best epoch on validation.

    Parameters
    ----------
    config
        What to train and how.
    training, validation
        Labelled subjects (:func:`load_training_subjects`).
    out
        Run folder: ``checkpoint.pt`` (written atomically after every epoch) and
        ``history.json``.
    resume
        Continue from ``out/checkpoint.pt`` when it exists (its configuration must match
        ``config``); ``False`` refuses to overwrite an existing checkpoint.
    progress
        Called with ``(phase, done, total)`` after every step (``"train"``) and every validation
        subject (``"validate"``); ``done``/``total`` count steps over the whole run.
    on_epoch_end
        Called with each epoch's record after its checkpoint is written.

    Returns
    -------
    TrainingResult
        The best model (eval mode, with a card holding the chosen threshold and validation
        metrics) and the per-epoch history.
    """
    if not training or not validation:
        raise ConfigurationError("training needs at least one training and one validation subject")
    folder = Path(out)
    checkpoint_path = folder / CHECKPOINT_NAME
    if checkpoint_path.exists() and not resume:
        raise ConfigurationError(f"{checkpoint_path}: exists; resume it or choose another folder")
    run = _start_run(config, training, validation, checkpoint_path)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for epoch in range(run.start_epoch, config.epochs):
            began = time.perf_counter()
            loss = _train_epoch(run, epoch, config, training, progress)
            threshold, metrics = _validate(run.network, validation, config, progress)
            record = EpochRecord(epoch + 1, loss, threshold, metrics, time.perf_counter() - began)
            _end_epoch(run, record, config, folder)
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        torch.set_num_threads(previous_threads)
    return _best_model(run, checkpoint_path)


@dataclass(eq=False)
class _TrainingRun:
    """What a training run carries from epoch to epoch (and its checkpoint stores)."""

    network: nn.Module
    card: ModelCard
    optimiser: torch.optim.Optimizer
    loss_function: Callable[..., torch.Tensor]
    rng: np.random.Generator
    history: list[EpochRecord]
    best: dict[str, Any]
    start_epoch: int


def _start_run(
    config: TrainingConfig,
    training: Sequence[TrainingSubject],
    validation: Sequence[TrainingSubject],
    checkpoint_path: Path,
) -> _TrainingRun:
    """Build the seeded network and optimiser, restored from the checkpoint when there is one."""
    hyperparameters = config.network_hyperparameters()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        network = build_network(config.architecture, hyperparameters)
    card = _initial_card(config, hyperparameters, training, validation)
    attach_card(network, card)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    run = _TrainingRun(
        network,
        card,
        optimiser,
        _loss(config.architecture, hyperparameters),
        np.random.default_rng(config.seed),
        [],
        {"score": -math.inf, "epoch": 0, "threshold": 0.5, "model": None},
        0,
    )
    if checkpoint_path.exists():
        state = _read_checkpoint(checkpoint_path, config)
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        run.rng.bit_generator.state = state["rng"]
        run.history = [EpochRecord(**record) for record in state["history"]]
        run.best = state["best"]
        run.start_epoch = int(state["epoch"])
    return run


def _train_epoch(
    run: _TrainingRun,
    epoch: int,
    config: TrainingConfig,
    training: Sequence[TrainingSubject],
    progress: Progress | None,
) -> float:
    """One epoch of optimiser steps on sampled patches (polynomial learning-rate decay over the
    whole run); the mean loss."""
    total_steps = config.epochs * config.iterations_per_epoch
    run.network.train()
    losses = []
    for iteration in range(config.iterations_per_epoch):
        step = epoch * config.iterations_per_epoch + iteration
        for group in run.optimiser.param_groups:
            group["lr"] = config.learning_rate * (1 - step / total_steps) ** 0.9
        images, labels = _sample_batch(training, config, run.rng)
        run.optimiser.zero_grad(set_to_none=True)
        loss = run.loss_function(run.network(images), labels)
        loss.backward()
        run.optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress("train", step + 1, total_steps)
    return float(np.mean(losses))


def _end_epoch(
    run: _TrainingRun, record: EpochRecord, config: TrainingConfig, folder: Path
) -> None:
    """Keep the epoch's weights when they are the best so far; write the checkpoint and history."""
    run.history.append(record)
    if record.metrics["ndsc"] > run.best["score"]:
        run.best = {
            "score": record.metrics["ndsc"],
            "epoch": record.epoch,
            "threshold": record.threshold,
            "model": copy.deepcopy(run.network.state_dict()),
        }
    save_atomic(
        folder / CHECKPOINT_NAME,
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.as_dict(),
            "epoch": record.epoch,
            "model": run.network.state_dict(),
            "optimizer": run.optimiser.state_dict(),
            "rng": run.rng.bit_generator.state,
            "history": [asdict(r) for r in run.history],
            "best": run.best,
        },
    )
    atomic_write_json(folder / "history.json", [asdict(r) for r in run.history], overwrite=True)


def _best_model(run: _TrainingRun, checkpoint_path: Path) -> TrainingResult:
    """The best epoch's weights in eval mode, with a card holding its threshold and metrics."""
    network, card, history, best = run.network, run.card, run.history, run.best
    if best["model"] is not None:
        network.load_state_dict(best["model"])
    best_record = next((r for r in history if r.epoch == best["epoch"]), history[-1])
    final_card = card.updated(
        threshold=float(best["threshold"]),
        metrics={"validation": best_record.metrics | {"epoch": best_record.epoch}},
        training=card.training
        | {
            "epochs_run": len(history),
            "best_epoch": int(best["epoch"]),
            "seconds": round(sum(r.seconds for r in history), 1),
        },
    )
    attach_card(network.eval(), final_card)
    return TrainingResult(network, final_card, tuple(history), checkpoint_path)


def _initial_card(
    config: TrainingConfig,
    hyperparameters: dict[str, Any],
    training: Sequence[TrainingSubject],
    validation: Sequence[TrainingSubject],
) -> ModelCard:
    return ModelCard(
        name=config.architecture,
        architecture=config.architecture,
        hyperparameters=hyperparameters,
        spacing_mm=config.spacing_mm,
        patch_size=config.patch_size,
        orientation=TRAINING_ORIENTATION,
        size_divisibility=_triple(size_divisibility(config.architecture, hyperparameters)),
        gradcam_layer=default_gradcam_layer(config.architecture, hyperparameters),
        training={
            "config": config.as_dict(),
            "training_subjects": [s.name for s in training],
            "validation_subjects": [s.name for s in validation],
            "hardware": hardware_description(config.threads),
        },
        trained_commit=git_commit(),
    )


def _triple(values: Sequence[int]) -> tuple[int, int, int]:
    first, second, third = (int(v) for v in values)
    return (first, second, third)


def _loss(architecture: str, hyperparameters: Mapping[str, Any]) -> Callable[..., torch.Tensor]:

    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    deep = architecture == "nnunet" and bool(hyperparameters.get("deep_supervision"))

    def loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not deep:
            return dice_ce(output, labels)
        heads = output.unbind(dim=1)
        weights = torch.tensor([0.5**i for i in range(len(heads))])
        weights = weights / weights.sum()
        return sum(
            (w * dice_ce(h, labels) for w, h in zip(weights, heads, strict=True)), torch.zeros(())
        )

    return loss


def _sample_batch(
    subjects: Sequence[TrainingSubject], config: TrainingConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` augmented patches (lesion oversampling), all randomness from ``rng``."""
    transform = _augmentation()
    images, labels = [], []
    for _ in range(config.batch_size):
        subject = subjects[int(rng.integers(len(subjects)))]
        positive = rng.random() < config.positive_fraction and subject.label.any()
        candidates = subject.label if positive else subject.sampling_mask
        voxels = np.flatnonzero(candidates)
        centre = np.unravel_index(voxels[int(rng.integers(len(voxels)))], candidates.shape)
        image, label = _crop(subject, centre, config.patch_size)
        transform.set_random_state(seed=int(rng.integers(2**31)))
        item = transform({"image": image, "label": label[None].astype(np.float32)})
        images.append(torch.as_tensor(item["image"]))
        labels.append(torch.as_tensor(item["label"]))
    return torch.stack(images).float(), torch.stack(labels).float()


def _augmentation() -> Any:

    keys = ["image", "label"]
    return Compose(
        [
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            RandGaussianNoised("image", prob=0.2, std=0.05),
        ],
        lazy=False,
    )


def _crop(
    subject: TrainingSubject, centre: tuple[Any, ...], patch: tuple[int, int, int]
) -> tuple[FloatArray, BoolArray]:
    """The patch around ``centre``, shifted inside the volume, zero-padded where it is smaller."""
    shape = subject.label.shape
    starts = [
        min(max(int(c) - p // 2, 0), max(s - p, 0))
        for c, p, s in zip(centre, patch, shape, strict=True)
    ]
    box = tuple(slice(b, b + p) for b, p in zip(starts, patch, strict=True))
    image = subject.image[(slice(None), *box)]
    label = subject.label[box]
    padding = [(0, p - n) for p, n in zip(patch, label.shape, strict=True)]
    if any(after for _, after in padding):
        image = np.pad(image, [(0, 0), *padding])
        label = np.pad(label, padding)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def _validate(
    network: nn.Module,
    validation: Sequence[TrainingSubject],
    config: TrainingConfig,
    progress: Progress | None,
) -> tuple[float, dict[str, float]]:
    """Segment every validation subject; the threshold with the best mean nDSC and its metrics."""
    probabilities = []
    for done, subject in enumerate(validation, start=1):
        probabilities.append(
            predict_probability(network, subject.image, overlap=config.validation_overlap)
        )
        if progress is not None:
            progress("validate", done, len(validation))
    best_threshold, best_metrics = config.thresholds[0], {"ndsc": -math.inf}
    for threshold in config.thresholds:
        per_subject = [
            lesion_metrics(s.label, p, s.affine, threshold=threshold)
            for s, p in zip(validation, probabilities, strict=True)
        ]
        metrics = summarise_metrics(per_subject)
        if metrics["ndsc"] > best_metrics["ndsc"]:
            best_threshold, best_metrics = threshold, metrics
    return best_threshold, best_metrics


def _read_checkpoint(path: Path, config: TrainingConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types on a corrupt file
        raise ModelError(f"{path}: corrupt training checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an instasal training checkpoint")
    saved, current = dict(state["config"]), config.as_dict()
    for free in ("epochs", "threads"):  # neither changes what a finished epoch computed
        saved.pop(free, None)
        current.pop(free, None)
    if saved != current:
        changed = sorted(k for k in current if saved.get(k) != current[k])
        raise ConfigurationError(
            f"{path}: checkpoint was trained with another configuration (differs in {changed}); "
            "use another output folder"
        )
    return state
