"""Type aliases shared across instasal."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

from instasal.errors import ConfigurationError

if TYPE_CHECKING:  # names for the aliases below; importing torch here would slow the CLI's start
    import torch
    from torch import nn

__all__ = [
    "MAX_SEED",
    "Aggregation",
    "AnatomyChoice",
    "ArchitectureName",
    "BoolArray",
    "CamVariant",
    "CandidateKind",
    "Condition",
    "Connectivity",
    "Context",
    "ContrastArm",
    "DeletionBaseline",
    "DomainLike",
    "EngineName",
    "ExactEngine",
    "Executor",
    "FloatArray",
    "Generator",
    "Growth",
    "InputLike",
    "InstanceKind",
    "IntArray",
    "LesionRegion",
    "MemoryFormat",
    "Metric",
    "ModelLike",
    "ModelSourceKind",
    "NoiseRange",
    "Normalisation",
    "OutputActivation",
    "PathLike",
    "Progress",
    "RandomisationMode",
    "Resolution",
    "SaliencyOf",
    "TnPool",
    "UncertaintyMethod",
    "UncertaintySignal",
    "Verdict",
    "check_choice",
    "check_seed",
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
SaliencyOf: TypeAlias = Literal["network", "tta"]
Verdict: TypeAlias = Literal[
    "reproduced", "not reproduced", "not testable", "not testable at this n"
]
RandomisationMode: TypeAlias = Literal["cascading", "independent"]
DeletionBaseline: TypeAlias = Literal["local_mean", "blur"]
Aggregation: TypeAlias = Literal["max", "mean"]
Context: TypeAlias = Literal["deployed", "full", "patch"]
EngineName: TypeAlias = Literal["naive", "batched", "auto"]
NoiseRange: TypeAlias = Literal["per_channel", "first_channel"]
Executor: TypeAlias = Literal["local", "ray"]
TnPool: TypeAlias = Literal["wm", "gm", "brain"]
UncertaintyMethod: TypeAlias = Literal["tta", "mc_dropout", "ensemble"]
UncertaintySignal: TypeAlias = Literal["max", "mean", "sd"]
InstanceKind: TypeAlias = Literal["lesion", "TP", "FP", "FN", "TN"]
"""A domain Ω's type: a predicted lesion without a reference, or its confusion-matrix cell."""
MemoryFormat: TypeAlias = Literal["contiguous", "channels_last"]
CamVariant: TypeAlias = Literal["gradcam++", "gradcam"]
ExactEngine: TypeAlias = Literal["naive", "batched"]
"""The engines :data:`EngineName` ``"auto"`` chooses between."""
Normalisation: TypeAlias = Literal["zscore_nonzero", "zscore", "none", "nnunet"]
OutputActivation: TypeAlias = Literal["softmax", "sigmoid"]
ArchitectureName: TypeAlias = Literal["unet", "nnunet", "swinunetr"]
CandidateKind: TypeAlias = Literal["found_FN", "other_lesion", "false_alarm"]
Condition: TypeAlias = Literal["white_matter", "outside", "outside_with_shell"]
"""Where the relocation experiment moves a lesion."""
Metric: TypeAlias = Literal["peak", "trough", "inside_mean", "ring_mean", "reliance"]
"""The saliency number the error-mode analysis compares between domain types."""
Growth: TypeAlias = Literal["linear", "nearest"]
"""How :func:`instasal.prepare.resample` interpolates: images linearly, label maps nearest."""
Generator: TypeAlias = Literal["v1", "v2"]
"""The phantom generator."""
ContrastArm: TypeAlias = Literal["standard", "swapped"]
AnatomyChoice: TypeAlias = Literal["drawn", "mni152", "colin27"]
Resolution: TypeAlias = Literal[1, 2]
"""A phantom's voxel size in mm."""
LesionRegion: TypeAlias = Literal["periventricular", "juxtacortical", "deep", "infratentorial"]
ModelSourceKind: TypeAlias = Literal[
    "builtin", "factory", "bundle", "nnunet", "exported", "torchscript"
]
"""What a model name or path refers to (:func:`instasal.model_sources.model_source`)."""


class Progress(Protocol):
    """The progress callback of every pipeline: ``progress(stage, done, total)``.

    ``stage`` says what is being done; stages sharing the words before `` of `` are one stage
    (``"saliency of lesion(s) 3, 4"`` and ``"saliency of lesion(s) 5"`` advance one bar), so the
    part after `` of `` names the item at hand. ``done`` of ``total`` units are finished.
    """

    def __call__(self, stage: str, done: float, total: float, /) -> None: ...


def check_choice(name: str, value: object, choices: Any) -> None:
    """Refuse ``value`` unless it is one of the ``Literal`` type ``choices``' values.

    The allowed values are read from the ``Literal`` itself (:func:`typing.get_args`), so each
    option's choices are written once.

    Raises
    ------
    ConfigurationError
        Naming the option, its allowed values and the value given.

    Examples
    --------
    >>> check_choice("aggregation", "max", Aggregation)
    >>> check_choice("aggregation", "median", Aggregation)
    Traceback (most recent call last):
    ...
    instasal.errors.ConfigurationError: aggregation must be one of ('max', 'mean'), got 'median'
    """
    allowed = get_args(choices)
    if isinstance(value, bool) or value not in allowed:
        raise ConfigurationError(f"{name} must be one of {allowed}, got {value!r}")


MAX_SEED = 2**63 - 1
"""The largest seed: seeds derived from it by adding an index (one per lesion or subject) still
fit the 64 bits of ``torch.Generator.manual_seed``."""


def check_seed(seed: object) -> None:
    """Refuse a seed that is not a whole number from 0 to :data:`MAX_SEED`.

    Raises
    ------
    ConfigurationError
        Naming the range and the value given.

    Examples
    --------
    >>> check_seed(7)
    >>> check_seed(2**64)
    Traceback (most recent call last):
    ...
    instasal.errors.ConfigurationError: seed must be a whole number from 0 to 2**63 - 1 \
(9223372036854775807), got 18446744073709551616
    """
    if (
        isinstance(seed, bool)
        or not isinstance(seed, int | np.integer)
        or not 0 <= seed <= MAX_SEED
    ):
        raise ConfigurationError(
            f"seed must be a whole number from 0 to 2**63 - 1 ({MAX_SEED}), got {seed!r}"
        )
