"""Sliding-window inference at the model's training patch size (MONAI, Gaussian blending).

``predict_logits`` stitches the network's logits over overlapping windows of the card's
``patch_size`` (MONAI ``sliding_window_inference``, Gaussian importance weights, σ = patch/8 as in
nnU-Net); ``predict_probability`` turns them into the target probability of SPEC's notation:
``softmax(logits)[target]``, or ``sigmoid(logits)[target]`` for single-output / region models.
A model without a patch size runs once on the whole volume, zero-padded to its size divisibility.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError, ModelError
from instasal.models.cards import ModelCard, card_of
from instasal.typing import FloatArray

__all__ = ["predict_logits", "predict_probability", "probability_from_logits"]


def predict_logits(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
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

    Raises
    ------
    ModelError
        When ``x`` has another number of channels than the card.
    ConfigurationError
        On ``overlap`` or ``sw_batch_size`` out of range, or ``x`` not 4D.
    """
    from monai.inferers import sliding_window_inference

    card = card_of(model)
    volume = _check_input(x, card)
    if not 0.0 <= overlap < 1.0:
        raise ConfigurationError(f"overlap must be >= 0 and < 1, got {overlap}")
    if sw_batch_size < 1:
        raise ConfigurationError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    target_device = torch.device(device) if device is not None else _model_device(model)
    batch = volume[None].to(target_device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if card.patch_size is None:
                stitched: object = _whole_volume(model, batch, card.size_divisibility)
            else:
                stitched = sliding_window_inference(
                    batch,
                    roi_size=card.patch_size,
                    sw_batch_size=sw_batch_size,
                    predictor=model,
                    overlap=overlap,
                    mode="gaussian",
                    sigma_scale=0.125,
                    padding_mode="constant",
                    cval=0.0,
                    sw_device=target_device,
                    device=torch.device("cpu"),
                )
    finally:
        model.train(was_training)
    if not isinstance(stitched, torch.Tensor):
        raise ModelError(
            f"model {card.name!r} must return one [B, K, X, Y, Z] tensor, "
            f"got {type(stitched).__name__}"
        )
    return stitched[0].detach().to("cpu", torch.float32).numpy()


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
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str | None = None,
) -> FloatArray:
    """Target probability ``[X, Y, Z]`` (float32): stitched logits through the card's activation.

    ``target`` defaults to the card's ``target_class``; the other arguments are those of
    :func:`predict_logits`.

    Examples
    --------
    >>> import instasal
    >>> model = instasal.load_model("unet")  # doctest: +SKIP
    >>> p = predict_probability(model, subject.normalised().data)  # doctest: +SKIP
    """
    logits = predict_logits(model, x, overlap=overlap, sw_batch_size=sw_batch_size, device=device)
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


def _whole_volume(
    model: nn.Module, batch: torch.Tensor, divisibility: tuple[int, int, int]
) -> torch.Tensor:
    shape = batch.shape[2:]
    padding: list[int] = []
    for size, factor in reversed(list(zip(shape, divisibility, strict=True))):
        padding += [0, (-size) % factor]
    output = model(F.pad(batch, padding))
    return output[:, :, : shape[0], : shape[1], : shape[2]].to("cpu")
