"""Type aliases shared across instasal."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # names for the aliases below; importing torch here would slow the CLI's start
    import torch
    from torch import nn

__all__ = [
    "Aggregation",
    "BoolArray",
    "Connectivity",
    "Context",
    "DomainLike",
    "EngineName",
    "FloatArray",
    "InputLike",
    "IntArray",
    "ModelLike",
    "NoiseRange",
    "PathLike",
    "Progress",
    "UncertaintyMethod",
    "UncertaintySignal",
]

PathLike: TypeAlias = str | os.PathLike[str]
FloatArray: TypeAlias = npt.NDArray[np.floating]
IntArray: TypeAlias = npt.NDArray[np.integer]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

InputLike: TypeAlias = "torch.Tensor | npt.NDArray[np.floating]"
"""One subject's network input ``[C, X, Y, Z]`` (floating point), as a tensor or an array."""
DomainLike: TypeAlias = "torch.Tensor | BoolArray | IntArray"
"""A domain Ω ``[X, Y, Z]``: boolean, or integers that are only 0 and 1."""
ModelLike: TypeAlias = "str | os.PathLike[str] | nn.Module"
"""A loaded model, or what :func:`instasal.load_model` loads one from (name or path)."""

Connectivity: TypeAlias = Literal[6, 18, 26]
Aggregation: TypeAlias = Literal["max", "mean"]
Context: TypeAlias = Literal["full", "patch"]
EngineName: TypeAlias = Literal["naive", "batched", "auto"]
NoiseRange: TypeAlias = Literal["per_channel", "first_channel"]
UncertaintyMethod: TypeAlias = Literal["tta", "mc_dropout", "ensemble"]
UncertaintySignal: TypeAlias = Literal["max", "mean", "sd"]


class Progress(Protocol):
    """The progress callback of every pipeline: ``progress(stage, done, total)``.

    ``stage`` says what is being done; stages sharing the words before `` of `` are one stage
    (``"saliency of lesion(s) 3, 4"`` and ``"saliency of lesion(s) 5"`` advance one bar), so the
    part after `` of `` names the item at hand. ``done`` of ``total`` units are finished.
    """

    def __call__(self, stage: str, done: float, total: float, /) -> None: ...
