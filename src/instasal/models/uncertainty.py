"""Voxel-wise uncertainty of a segmentation model and the candidate domains it points to.

The paper's open question Q3 (issue 8): can uncertainty find lesions the model missed, and can
instance saliency then tell a real missed lesion from a false alarm? Three estimates of the
spread of the lesion probability ``p`` (SPEC notation) over several passes:

- ``"tta"``: test-time augmentation by the 8 flip combinations of the 3 spatial axes (flip the
  input, predict, flip the probability back);
- ``"mc_dropout"``: Monte Carlo dropout, the model's dropout modules sampling in train mode while
  everything else (BatchNorm included) stays in eval mode;
- ``"ensemble"``: several models with the same channels, normalisation and voxel size.

Each gives, per voxel, the mean, the maximum and the standard deviation (``ddof=0``: the spread of
the passes themselves) of ``p`` over the passes. :func:`find_candidates` turns one of these into
candidate domains outside the predicted lesions, and :func:`classify_candidates` types them against
a reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from instasal.errors import ConfigurationError, ModelError
from instasal.instances import Instances, connected_components, label_components
from instasal.models import attach_card, card_of, predict_probability
from instasal.saliency.inputs import as_input
from instasal.saliency.model_state import inference_state, model_device
from instasal.typing import (
    BoolArray,
    CandidateKind,
    Connectivity,
    FloatArray,
    UncertaintyMethod,
    UncertaintySignal,
    check_choice,
)

__all__ = [
    "CandidateKind",
    "Candidates",
    "Uncertainty",
    "UncertaintyMethod",
    "UncertaintySignal",
    "classify_candidates",
    "dropout_modules",
    "ensemble_uncertainty",
    "find_candidates",
    "flip_uncertainty",
    "mc_dropout_uncertainty",
    "voxel_uncertainty",
]


_DROPOUT_TYPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass(frozen=True, eq=False)
class Uncertainty:
    """Per-voxel statistics of the lesion probability over several passes.

    Attributes
    ----------
    mean, sd, max
        Mean, standard deviation (``ddof=0``) and maximum of ``p`` over the passes, ``[X, Y, Z]``
        float32 arrays.
    method
        ``"tta"``, ``"mc_dropout"`` or ``"ensemble"``.
    n_passes
        Number of probability maps the statistics are taken over.
    """

    mean: FloatArray
    sd: FloatArray
    max: FloatArray
    method: UncertaintyMethod
    n_passes: int

    def signal(self, name: UncertaintySignal) -> FloatArray:
        """The statistic ``name`` (``"max"``, ``"mean"`` or ``"sd"``)."""
        check_choice("signal", name, UncertaintySignal)
        return {"max": self.max, "mean": self.mean, "sd": self.sd}[name]


class _RunningStatistics:
    """Mean, sd and max over maps added one at a time (float64 sums; memory of three maps)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None
        self.maximum: np.ndarray | None = None

    def add(self, probability: np.ndarray) -> None:
        values = np.asarray(probability, dtype=np.float64)
        if self.total is None or self.squares is None or self.maximum is None:
            self.total, self.squares, self.maximum = values.copy(), values**2, values.copy()
        else:
            self.total += values
            self.squares += values**2
            np.maximum(self.maximum, values, out=self.maximum)
        self.count += 1

    def result(self, method: UncertaintyMethod) -> Uncertainty:
        assert self.total is not None and self.squares is not None and self.maximum is not None
        mean = self.total / self.count
        variance = np.clip(self.squares / self.count - mean**2, 0.0, None)
        return Uncertainty(
            mean=mean.astype(np.float32),
            sd=np.sqrt(variance).astype(np.float32),
            max=self.maximum.astype(np.float32),
            method=method,
            n_passes=self.count,
        )


def flip_uncertainty(
    model: nn.Module, x: torch.Tensor | np.ndarray, *, target: int | None = None
) -> Uncertainty:
    """Test-time augmentation over the 8 flip combinations of the three spatial axes.

    Each pass flips ``x`` along a subset of its spatial axes, runs
    :func:`instasal.models.predict_probability` and flips the probability back; the first pass
    (no flip) is the plain prediction, so ``max >= p`` everywhere.

    Parameters
    ----------
    model
        A loaded model (with ``.card``).
    x
        One normalised subject ``[C, X, Y, Z]``; not modified.
    target
        Output channel; default the card's target class.

    Examples
    --------
    >>> uncertainty = flip_uncertainty(instasal.load_model("unet"), x)  # doctest: +SKIP
    >>> uncertainty.n_passes  # doctest: +SKIP
    8
    """

    volume = as_input(x).float()
    statistics = _RunningStatistics()
    for count in range(4):
        for axes in itertools.combinations((0, 1, 2), count):
            flipped = torch.flip(volume, dims=[a + 1 for a in axes]) if axes else volume
            probability = predict_probability(model, flipped, target=target)
            statistics.add(np.flip(probability, axis=axes) if axes else probability)
    return statistics.result("tta")


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` (``torch.nn`` dropout classes) with drop rate ``p > 0``."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and float(m.p) > 0]


class _SamplingDropout(nn.Module):
    """Runs ``network`` with its dropout modules in train mode, whatever mode it was put in.

    :func:`instasal.models.predict_logits` puts a model in eval mode for its call; this wrapper
    switches the dropout modules back on at every forward pass, leaving BatchNorm in eval mode.
    """

    def __init__(self, network: nn.Module, dropouts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.network = network
        self._dropouts = list(dropouts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._dropouts:
            module.train()
        output: torch.Tensor = self.network(x)
        return output


def mc_dropout_uncertainty(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    n_samples: int = 8,
    seed: int = 0,
    target: int | None = None,
) -> Uncertainty:
    """Monte Carlo dropout: ``n_samples`` predictions with dropout sampling, BatchNorm in eval.

    The dropout masks come from torch's generator seeded with ``seed`` inside
    :func:`torch.random.fork_rng`, so the result is reproducible and the caller's random state is
    left as it was. Every module's train/eval flag is restored afterwards, also after an error.

    Raises
    ------
    ConfigurationError
        When the model has no dropout module with ``p > 0`` (the built-in U-Net is trained with
        dropout 0.0), or ``n_samples < 1``.
    """

    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigurationError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    card = card_of(model)
    dropouts = dropout_modules(model)
    if not dropouts:
        present = [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES)]
        declared = card.hyperparameters.get("dropout")
        raise ConfigurationError(
            f"model {card.name!r} has no dropout to sample for MC dropout: "
            + (f"its {len(present)} dropout module(s) all have p = 0" if present else "no module")
            + (f" (trained with dropout {declared})" if declared is not None else "")
            + "; use method 'tta' or 'ensemble'"
        )
    volume = as_input(x).float()
    sampler = attach_card(_SamplingDropout(model, dropouts), card)
    device = model_device(model)
    statistics = _RunningStatistics()
    with (
        inference_state(model),
        torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []),
    ):
        torch.manual_seed(seed)
        for _ in range(n_samples):
            statistics.add(predict_probability(sampler, volume, target=target))
    return statistics.result("mc_dropout")


def ensemble_uncertainty(
    models: Sequence[nn.Module], x: torch.Tensor | np.ndarray, *, target: int | None = None
) -> Uncertainty:
    """Mean, sd and max of the probabilities of several models on the same input.

    Parameters
    ----------
    models
        At least two loaded models with the same channels (names and order), normalisation and
        voxel size, so that one normalised ``x`` is right for all.
    x
        One normalised subject ``[C, X, Y, Z]``.
    target
        Output channel for every model; default each card's target class.

    Raises
    ------
    ConfigurationError
        With fewer than two models.
    ModelError
        When a model's channels, normalisation or voxel size differ from the first model's.
    """

    if len(models) < 2:
        raise ConfigurationError(f"an ensemble needs at least 2 models, got {len(models)}")
    cards = [card_of(m) for m in models]
    first = cards[0]
    for card in cards[1:]:
        for field in ("channel_names", "normalisation", "spacing_mm"):
            if getattr(card, field) != getattr(first, field):
                raise ModelError(
                    f"ensemble model {card.name!r} has {field} {getattr(card, field)}, "
                    f"model {first.name!r} has {getattr(first, field)}; members must agree"
                )
    volume = as_input(x).float()
    statistics = _RunningStatistics()
    for model in models:
        statistics.add(predict_probability(model, volume, target=target))
    return statistics.result("ensemble")


def voxel_uncertainty(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    method: UncertaintyMethod = "tta",
    *,
    n_samples: int = 8,
    seed: int = 0,
    ensemble: Sequence[nn.Module] = (),
    target: int | None = None,
) -> Uncertainty:
    """Uncertainty of ``model`` on ``x`` by ``method``; ``ensemble`` are the other members.

    ``n_samples`` and ``seed`` apply to MC dropout only (TTA always has 8 passes); with
    ``method="ensemble"`` the members are ``model`` followed by ``ensemble``.
    """
    check_choice("method", method, UncertaintyMethod)
    if ensemble and method != "ensemble":
        raise ConfigurationError(f"ensemble models are given but method is {method!r}")
    if method == "tta":
        return flip_uncertainty(model, x, target=target)
    if method == "mc_dropout":
        return mc_dropout_uncertainty(model, x, n_samples=n_samples, seed=seed, target=target)
    return ensemble_uncertainty([model, *ensemble], x, target=target)


def find_candidates(
    signal: FloatArray,
    predicted: BoolArray,
    affine: np.ndarray,
    *,
    level: float,
    connectivity: Connectivity = 18,
    min_volume_mm3: float = 5.0,
) -> Instances:
    """Candidate domains: uncertain places that the prediction did not call a lesion.

    The rule: take the voxels where ``signal >= level``; join them with the predicted lesion
    voxels and find the connected components (``connectivity``, SPEC §1); a candidate is a
    component that holds no predicted voxel, i.e. a component of the uncertain voxels that neither
    overlaps nor touches (under ``connectivity``) a predicted lesion. Components of volume
    ``<= min_volume_mm3`` are dropped and ids run 1..n in raster order, as for lesions (SPEC §1).

    Parameters
    ----------
    signal
        A per-voxel uncertainty statistic ``[X, Y, Z]`` (e.g. :attr:`Uncertainty.max`).
    predicted
        The model's lesion mask: plain probability ``>=`` the card's threshold.
    affine
        Voxel-to-world matrix of the grid.
    level
        Voxels with ``signal >= level`` are uncertain.

    Returns
    -------
    Instances
        The candidates, of kind ``"lesion"``; type them with :func:`classify_candidates`.

    Examples
    --------
    >>> signal = np.zeros((8, 8, 8)); signal[1:3, 1:3, 1:3] = 0.2; signal[5:7, 5:7, 5:7] = 0.2
    >>> predicted = np.zeros((8, 8, 8), bool); predicted[6, 6, 6] = True
    >>> [r.n_voxels for r in find_candidates(signal, predicted, np.eye(4), level=0.1)]
    [8]
    """
    signal = np.asarray(signal)
    predicted = np.asarray(predicted, dtype=bool)
    if signal.ndim != 3:
        raise ConfigurationError(f"signal must be a 3D map [X, Y, Z], got shape {signal.shape}")
    if predicted.shape != signal.shape:
        raise ConfigurationError(
            f"predicted mask has shape {predicted.shape}, the signal {signal.shape}"
        )
    if not np.isfinite(level):
        raise ConfigurationError(f"level must be a finite number, got {level}")
    labels, _ = label_components((signal >= level) | predicted, connectivity)
    touched = np.unique(labels[predicted])
    candidates = (labels > 0) & ~np.isin(labels, touched)
    return connected_components(
        candidates, affine, connectivity=connectivity, min_volume_mm3=min_volume_mm3
    )


@dataclass(frozen=True, eq=False)
class Candidates:
    """Candidate domains typed against a reference.

    Attributes
    ----------
    domains
        The candidates (:func:`find_candidates`).
    kinds
        One per record, in id order: ``"found_FN"`` when it overlaps an FN domain (a reference
        lesion the prediction missed), ``"other_lesion"`` when it overlaps reference voxels but no
        FN domain (a lesion the prediction found, or one below the size rule), else
        ``"false_alarm"``.
    found_fn_ids
        Per record, the ids of the FN domains it overlaps (in the typed instances' numbering).
    """

    domains: Instances
    kinds: tuple[CandidateKind, ...]
    found_fn_ids: tuple[tuple[int, ...], ...]

    def count(self, kind: CandidateKind) -> int:
        """How many candidates are of ``kind``."""
        return sum(k == kind for k in self.kinds)

    @property
    def found_fns(self) -> set[int]:
        """The FN domains found by at least one candidate."""
        return {i for ids in self.found_fn_ids for i in ids}


def classify_candidates(domains: Instances, typed: Instances, reference: BoolArray) -> Candidates:
    """Type candidates as found FN, other lesion or false alarm (see :class:`Candidates`).

    Parameters
    ----------
    domains
        Candidates from :func:`find_candidates`.
    typed
        The subject's instances typed by :func:`instasal.instances.classify_instances`, whose FN
        domains are the missed reference lesions.
    reference
        The reference lesion mask on the same grid.
    """
    reference = np.asarray(reference) != 0
    for name, shape in (("typed instances", typed.labels.shape), ("reference", reference.shape)):
        if shape != domains.labels.shape:
            raise ConfigurationError(
                f"{name} have shape {shape}, the candidates {domains.labels.shape}"
            )
    fn_ids = np.asarray([r.id for r in typed.of_kind("FN")], dtype=np.int64)
    kinds: list[CandidateKind] = []
    found: list[tuple[int, ...]] = []
    for record in domains:
        inside = domains.labels[record.slices] == record.id
        overlapped = np.unique(typed.labels[record.slices][inside])
        hits = tuple(int(i) for i in overlapped[np.isin(overlapped, fn_ids)])
        found.append(hits)
        if hits:
            kinds.append("found_FN")
        elif reference[record.slices][inside].any():
            kinds.append("other_lesion")
        else:
            kinds.append("false_alarm")
    return Candidates(domains, tuple(kinds), tuple(found))
