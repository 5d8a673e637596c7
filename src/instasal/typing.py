"""Type aliases shared across instasal."""

from __future__ import annotations

import os
from typing import Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "Aggregation",
    "BoolArray",
    "Connectivity",
    "Context",
    "EngineName",
    "FloatArray",
    "IntArray",
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
