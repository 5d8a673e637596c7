"""Sliding-window inference at the model's training patch size (MONAI, Gaussian blending).

``predict_logits`` stitches the network's logits over overlapping windows of the card's
``patch_size`` (MONAI ``sliding_window_inference``, Gaussian importance weights, σ = patch/8 as in
nnU-Net); ``predict_probability`` turns them into the target probability of SPEC's notation:
``softmax(logits)[target]``, or ``sigmoid(logits)[target]`` for single-output / region models.
A model without a patch size runs once on the whole volume; every input the network sees, whole
volume or window, is zero-padded at the end of each axis to the card's size divisibility and its
output cropped back.

With ``region`` only the windows that overlap the region's bounding box run. Every window that
covers a region voxel is among them, so values there equal the whole-volume result; voxels that a
skipped window also covers would be blended wrongly and are returned as NaN. Experiments that read
the probability inside one lesion only (context, relocation) run several times faster this way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from instasal.errors import ConfigurationError, ModelError
from instasal.models.cards import ModelCard, card_of
from instasal.saliency.deployed import SLIDING_WINDOW_OVERLAP, SLIDING_WINDOW_SIGMA_SCALE
from instasal.typing import FloatArray

__all__ = [
    "check_finite_prediction",
    "predict_logits",
    "predict_probability",
    "probability_from_logits",
]


def predict_logits(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    overlap: float = SLIDING_WINDOW_OVERLAP,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    region: np.ndarray | None = None,
) -> FloatArray:
    """Logits ``[K, X, Y, Z]`` (float32) of ``model`` on one normalised subject ``x [C, X, Y, Z]``.

    Parameters
    ----------
    model
        A loaded model (with ``model.card``); put in eval mode for the call, its mode restored.
    x
        One subject, channels in the card's order, normalised as the card says.
    overlap
        Fraction of a window shared with its neighbour, in ``[0, 1)``.
    sw_batch_size
        Windows per forward pass.
    device
        Where windows are computed; default: the device of the model's parameters.
    region
        Optional boolean mask ``[X, Y, Z]``: compute only the windows overlapping its bounding
        box. Logits are exact inside ``region`` and NaN wherever a skipped window reaches.

    Raises
    ------
    ModelError
        When ``x`` has another number of channels than the card, or the network predicts NaN or
        infinite logits (:func:`check_finite_prediction`).
    ConfigurationError
        On ``overlap`` or ``sw_batch_size`` out of range, ``x`` not 4D, or a ``region`` that is
        empty or not on ``x``'s grid.
    """

    card = card_of(model)
    volume = _check_input(x, card)
    if not 0.0 <= overlap < 1.0:
        raise ConfigurationError(f"overlap must be >= 0 and < 1, got {overlap}")
    if sw_batch_size < 1:
        raise ConfigurationError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    target_device = torch.device(device) if device is not None else _model_device(model)
    batch = volume[None].to(target_device)
    network = _Padded(model, card.size_divisibility)
    windows = None
    if region is not None:
        mask = _checked_region(region, tuple(volume.shape[1:]))
        if card.patch_size is not None:
            windows = _RegionWindows(
                network, card.out_channels, mask, volume.shape[1:], card.patch_size
            )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if card.patch_size is None:
                stitched: object = network(batch)
            else:
                stitched = sliding_window_inference(
                    batch,
                    roi_size=card.patch_size,
                    sw_batch_size=sw_batch_size,
                    predictor=network if windows is None else windows,
                    overlap=overlap,
                    mode="gaussian",
                    sigma_scale=SLIDING_WINDOW_SIGMA_SCALE,
                    padding_mode="constant",
                    cval=0.0,
                    sw_device=target_device,
                    device=torch.device("cpu"),
                    with_coord=windows is not None,
                )
    finally:
        model.train(was_training)
    if not isinstance(stitched, torch.Tensor):
        raise ModelError(
            f"model {card.name!r} must return one [B, K, X, Y, Z] tensor, "
            f"got {type(stitched).__name__}"
        )
    logits = stitched[0].detach().to("cpu", torch.float32).numpy()
    check_finite_prediction(logits, card.name, "logits")
    if windows is not None:
        logits[:, windows.invalid()] = np.nan
    return logits


def check_finite_prediction(values: np.ndarray, model: str, what: str) -> None:
    """Refuse a prediction holding NaN or infinite values (it would read as "no lesion").

    Raises
    ------
    ModelError
        One line naming ``model``, how many of its ``what`` are not finite, and where to look.
    """
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ModelError(
            f"model {model!r} predicted {bad} NaN or infinite {what} of {values.size}; its "
            "weights or its arithmetic break on this input (check the model and the input's "
            "intensities), so no lesion could be decided"
        )


def probability_from_logits(
    logits: FloatArray, card: ModelCard, target: int | None = None
) -> FloatArray:
    """The target probability ``[X, Y, Z]`` from logits ``[K, X, Y, Z]`` (card's activation)."""
    index = card.target_class if target is None else target
    if not 0 <= index < logits.shape[0]:
        raise ConfigurationError(f"target must be in [0, {logits.shape[0]}), got {index}")
    tensor = torch.from_numpy(np.ascontiguousarray(logits))
    if card.output_activation == "sigmoid":
        probability = torch.sigmoid(tensor[index])
    else:
        probability = torch.softmax(tensor, dim=0)[index]
    return probability.numpy().astype(np.float32)


def predict_probability(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    target: int | None = None,
    overlap: float = SLIDING_WINDOW_OVERLAP,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
    region: np.ndarray | None = None,
) -> FloatArray:
    """Target probability ``[X, Y, Z]`` (float32): stitched logits through the card's activation.

    ``target`` defaults to the card's ``target_class``; the other arguments are those of
    :func:`predict_logits`.

    Examples
    --------
    >>> import instasal
    >>> model = instasal.load_model("unet")  # doctest: +SKIP
    >>> prepared = instasal.prepare_subject(subject, model)  # doctest: +SKIP
    >>> p = predict_probability(model, prepared.x)  # doctest: +SKIP
    """
    logits = predict_logits(
        model, x, overlap=overlap, sw_batch_size=sw_batch_size, device=device, region=region
    )
    return probability_from_logits(logits, card_of(model), target)


def _check_input(x: torch.Tensor | np.ndarray, card: ModelCard) -> torch.Tensor:
    volume = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
    if volume.ndim != 4:
        raise ConfigurationError(f"x must be [C, X, Y, Z], got shape {tuple(volume.shape)}")
    if volume.shape[0] != card.in_channels:
        raise ModelError(
            f"model {card.name!r} expects {card.in_channels} channel(s) "
            f"({', '.join(card.channel_names)}), got {volume.shape[0]}"
        )
    return volume


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


class _Padded:
    """``model`` on inputs zero-padded at the end of each axis to a multiple of
    ``divisibility``, its output cropped back to the input's size."""

    def __init__(self, model: nn.Module, divisibility: tuple[int, int, int]) -> None:
        self.model = model
        self.divisibility = divisibility

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = batch.shape[2:]
        padding: list[int] = []
        for size, factor in reversed(list(zip(shape, self.divisibility, strict=True))):
            padding += [0, (-size) % factor]
        if not any(padding):
            return self.model(batch)
        output = self.model(F.pad(batch, padding))
        return output[:, :, : shape[0], : shape[1], : shape[2]]


def _padding(shape: tuple[int, ...], patch: tuple[int, ...]) -> list[int]:
    """Lower padding per axis that MONAI applies to a volume smaller than the window."""
    return [max(p - n, 0) // 2 for n, p in zip(shape, patch, strict=True)]


def _checked_region(region: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``region`` as a boolean mask on the input grid, with at least one voxel."""
    mask = np.asarray(region, dtype=bool)
    if mask.shape != shape:
        raise ConfigurationError(f"region has shape {mask.shape}, the input grid is {shape}")
    if not mask.any():
        raise ConfigurationError("region is empty: no voxel to compute")
    return mask


def _region_box(
    mask: np.ndarray, shape: tuple[int, ...], patch: tuple[int, int, int]
) -> list[tuple[int, int]]:
    """A checked mask's bounding box ``[(low, high)]`` in MONAI's padded window coordinates."""
    voxels = np.argwhere(mask)
    lower = _padding(tuple(shape), patch)
    return [
        (int(voxels[:, a].min()) + lower[a], int(voxels[:, a].max()) + 1 + lower[a])
        for a in range(3)
    ]


class _RegionWindows:
    """A ``with_coord`` predictor that runs only the windows overlapping a box, zeros elsewhere.

    It records the skipped windows, whose zeros corrupt the blend wherever they reach.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        out_channels: int,
        region: np.ndarray,
        shape: tuple[int, ...],
        patch: tuple[int, int, int],
    ) -> None:
        self.network = network
        self.out_channels = out_channels
        self.shape = tuple(shape)
        self.patch = patch
        self.box = _region_box(region, self.shape, patch)
        self.skipped: list[tuple[slice, ...]] = []

    def _overlaps(self, window: tuple[slice, ...]) -> bool:
        return all(
            s.start < high and low < s.stop for s, (low, high) in zip(window, self.box, strict=True)
        )

    def __call__(self, patches: torch.Tensor, coordinates: list[list[slice]]) -> torch.Tensor:
        windows = [tuple(c[-3:]) for c in coordinates]
        keep = [i for i, w in enumerate(windows) if self._overlaps(w)]
        self.skipped += [w for i, w in enumerate(windows) if i not in keep]
        if len(keep) == len(windows):
            return self.network(patches)
        if not keep:
            return torch.zeros(
                (patches.shape[0], self.out_channels, *patches.shape[2:]),
                dtype=patches.dtype,
                device=patches.device,
            )
        computed = self.network(patches[keep])
        output = computed.new_zeros((patches.shape[0], *computed.shape[1:]))
        output[keep] = computed
        return output

    def invalid(self) -> np.ndarray:
        """Voxels ``[X, Y, Z]`` of the unpadded input that a skipped window reaches."""
        shape, lower = self.shape, _padding(self.shape, self.patch)
        padded = [n + max(p - n, 0) for n, p in zip(shape, self.patch, strict=True)]
        reached = np.zeros(padded, dtype=bool)
        for window in self.skipped:
            reached[window] = True
        return reached[tuple(slice(low, low + n) for low, n in zip(lower, shape, strict=True))]
