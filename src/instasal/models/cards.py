"""Model cards: what a network expects, how it was trained, and how well it did.

A loaded model carries its card as a plain dictionary, ``model.card`` (SPEC §5); :class:`ModelCard`
is the validated, typed form of that dictionary, and :func:`card_of` reads it back from a module.
Built-in models ship their card as ``instasal/weights/<name>.json`` beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, get_args

from torch import nn

from instasal.errors import ModelError
from instasal.io import DEFAULT_CHANNELS
from instasal.typing import Normalisation, OutputActivation

__all__ = [
    "ModelCard",
    "Normalisation",
    "OutputActivation",
    "attach_card",
    "card_of",
    "read_card",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class ModelCard:
    """The description every loaded model carries (``model.card`` is :meth:`to_dict` of this).

    Attributes
    ----------
    name
        The model's name (built-in name, or the file/folder it was loaded from).
    architecture
        A built-in architecture (``"unet"``, ``"nnunet"``, ``"swinunetr"``) or the loader's kind
        (``"torchscript"``, ``"bundle"``, ``"module"``, ``"nnunetv2"``).
    hyperparameters
        Constructor arguments of the architecture (built-ins), else what the source declares.
    channel_names
        Input channels, in the order the network takes them (paper: FLAIR then T1w).
    out_channels
        Number of output channels ``K``.
    target_class
        The output channel explained and segmented (default 1, lesion).
    output_activation
        ``"softmax"`` over the K channels, or ``"sigmoid"`` per channel (K = 1 or region-based).
    spacing_mm
        Voxel size the network was trained at, per array axis (X, Y, Z); ``None`` if unknown.
    patch_size
        Training patch (the sliding-window size at inference); ``None`` means whole-volume forward.
    size_divisibility
        Each input side must be a multiple of this for one whole-volume forward pass.
    normalisation
        How inputs are normalised: ``"zscore_nonzero"`` (per channel over non-zero voxels, the
        paper's), ``"zscore"`` (over all voxels), ``"none"``, or ``"nnunet"`` (nnU-Net schemes,
        detailed in :attr:`preprocessing`).
    threshold
        Decision threshold on the target probability, chosen on validation data.
    gradcam_layer
        Default Grad-CAM++ layer, a name from ``model.named_modules()``.
    training
        Training data (phantom seeds and counts), configuration, time and hardware.
    metrics
        Lesion-wise metrics (validation, held-out test).
    trained_commit
        The git commit of the code that trained the weights.
    reproduce_command
        The command that reproduces the weights.
    source
        Where the model was loaded from (``"builtin"`` or a path).
    preprocessing
        Tool-specific preprocessing facts (nnU-Net: normalisation schemes, transpose, intensity
        properties).
    weights_dtype
        The dtype the weights were stored in.
    orientation
        Which voxel-array orientation the network was trained on: three axis codes (``"RAS"``,
        ``"LPS"``, …) meaning "the array reoriented to the closest canonical orientation with these
        codes" (an exact permutation and flips of the stored array), ``"stored"`` meaning the array
        as stored in the file (nnU-Net's readers), or ``None`` when the source does not say (the
        array is then used as stored, and a note says so).
    """

    name: str
    architecture: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    channel_names: tuple[str, ...] = DEFAULT_CHANNELS
    out_channels: int = 2
    target_class: int = 1
    output_activation: OutputActivation = "softmax"
    spacing_mm: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    size_divisibility: tuple[int, int, int] = (1, 1, 1)
    normalisation: Normalisation = "zscore_nonzero"
    threshold: float = 0.5
    gradcam_layer: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_commit: str | None = None
    reproduce_command: str | None = None
    source: str = "builtin"
    preprocessing: dict[str, Any] = field(default_factory=dict)
    weights_dtype: str = "float32"
    orientation: str | None = None

    def __post_init__(self) -> None:
        where = f"model card of {self.name!r}"
        if not self.channel_names:
            raise ModelError(f"{where}: channel_names is empty")
        if self.out_channels < 1:
            raise ModelError(f"{where}: out_channels must be >= 1, got {self.out_channels}")
        if not 0 <= self.target_class < self.out_channels:
            raise ModelError(
                f"{where}: target_class must be in [0, {self.out_channels}), "
                f"got {self.target_class}"
            )
        if self.output_activation not in get_args(OutputActivation):
            raise ModelError(
                f"{where}: output_activation must be softmax or sigmoid, "
                f"got {self.output_activation!r}"
            )
        if self.normalisation not in get_args(Normalisation):
            raise ModelError(
                f"{where}: normalisation must be one of {get_args(Normalisation)}, "
                f"got {self.normalisation!r}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ModelError(f"{where}: threshold must be in [0, 1], got {self.threshold}")
        for label, value in (("patch_size", self.patch_size), ("spacing_mm", self.spacing_mm)):
            if value is not None and (len(value) != 3 or min(value) <= 0):
                raise ModelError(f"{where}: {label} must be 3 positive numbers, got {value}")
        if self.orientation is not None and not _valid_orientation(self.orientation):
            raise ModelError(
                f"{where}: orientation must be 'stored' or three axis codes with one of L/R, "
                f"A/P and S/I each (e.g. 'RAS'), got {self.orientation!r}"
            )
        if len(self.size_divisibility) != 3 or min(self.size_divisibility) < 1:
            raise ModelError(
                f"{where}: size_divisibility must be 3 positive integers, "
                f"got {self.size_divisibility}"
            )

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return len(self.channel_names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (tuples become lists)."""
        payload: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any], *, where: str = "model card") -> ModelCard:
        """Validate and convert a card dictionary (as read from JSON).

        Raises
        ------
        ModelError
            On unknown or missing fields, or values out of range; the message names ``where``.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ModelError(f"{where}: unknown card field(s) {unknown}; known: {sorted(known)}")
        missing = sorted({"name", "architecture"} - set(payload))
        if missing:
            raise ModelError(f"{where}: missing card field(s) {missing}")
        values = dict(payload)
        for key in ("channel_names", "spacing_mm", "patch_size", "size_divisibility"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ModelError(f"{where}: {' '.join(str(error).split())}") from error

    def updated(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


def _valid_orientation(value: str) -> bool:
    if value == "stored":
        return True
    pairs = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
    return (
        isinstance(value, str)
        and len(value) == 3
        and all(sum(code in pair for code in value) == 1 for pair in pairs)
    )


def read_card(path: Path) -> ModelCard:
    """Read a card JSON file.

    Raises
    ------
    ModelError
        When the file is missing, not JSON, or not a valid card.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ModelError(f"{path}: model card not found") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not a readable JSON model card ({error})") from error
    if not isinstance(payload, dict):
        raise ModelError(
            f"{path}: a model card must be a JSON object, got {type(payload).__name__}"
        )
    return ModelCard.from_dict(payload, where=str(path))


def attach_card(model: ModuleT, card: ModelCard) -> ModuleT:
    """Set ``model.card`` to ``card``'s dictionary and return the model."""
    setattr(model, "card", card.to_dict())  # noqa: B010 (nn.Module types attributes as Tensor | Module)
    return model


def card_of(model: nn.Module) -> ModelCard:
    """The validated card of a loaded model (SPEC §5's ``model.card``), with :class:`ModelCard`'s
    defaults for the fields the dictionary leaves out (a hand-made card may give only some: its
    name is then the module's class name, its architecture ``"module"``).

    Raises
    ------
    ModelError
        When ``model`` has no ``card`` attribute (it was not made by :func:`instasal.load_model`).
    """
    payload = getattr(model, "card", None)
    if not isinstance(payload, dict):
        raise ModelError(
            f"{type(model).__name__} has no model card; load it with instasal.load_model or set "
            "model.card to a card dictionary (see instasal.models.ModelCard)"
        )
    named = {"name": type(model).__name__, "architecture": "module"} | payload
    return ModelCard.from_dict(named, where=f"card of {type(model).__name__}")
