"""The settings of each saliency method, as one validated, frozen object (SPEC §2, §3, §5).

Torch-free, so that a command line or a settings file can be checked before torch loads. The batch
functions take these objects as they are (:func:`instasal.saliency.instance_smoothgrad_many`,
:func:`instasal.saliency.instance_gradcam_many`); the single-domain functions of SPEC §5 build
them from keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instasal.errors import ConfigurationError
from instasal.typing import (
    Aggregation,
    CamVariant,
    Context,
    EngineName,
    MemoryFormat,
    NoiseRange,
    check_choice,
    check_seed,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CamVariant",
    "ExplainedPass",
    "GradCamConfig",
    "MemoryFormat",
    "SmoothGradConfig",
    "as_sizes",
]


def as_sizes(value: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    """A size given as one integer, any sequence of them or ``None``; sequences as tuples."""
    return value if value is None or isinstance(value, int) else tuple(int(n) for n in value)


def _check_target(target: object) -> None:
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ConfigurationError(f"target must be a non-negative integer, got {target!r}")


@dataclass(frozen=True)
class ExplainedPass:
    """The forward pass a saliency map is the derivative of, and its output channel (SPEC §2,
    Context): given per call to a method, beside the method's own settings.

    Attributes
    ----------
    target
        Output channel explained (see :func:`instasal.saliency.inputs.target_channel`); for a
        single-output model 0 and 1 both mean its only channel.
    context
        ``"full"`` (the whole volume in one pass), ``"patch"`` (one training-size patch around Ω,
        zero outside it) or ``"deployed"`` (the sliding-window prediction itself,
        :mod:`instasal.saliency.deployed`).
    patch_size
        The patch of ``"patch"`` and the prediction windows of ``"deployed"``; ``None``:
        ``model.card["patch_size"]``.
    size_divisibility
        The network's input size divisibility (an integer or one per axis); ``None``:
        ``model.card["size_divisibility"]``, else unknown. Inputs are zero-padded at the end of
        each axis to a multiple of it (output cropped back); a patch too small for Ω is enlarged
        to a multiple of it (of 16 where unknown).

    Examples
    --------
    >>> ExplainedPass(context="patch", patch_size=[32, 32, 32]).patch_size
    (32, 32, 32)
    """

    target: int = 1
    context: Context = "full"
    patch_size: int | Sequence[int] | None = None
    size_divisibility: int | Sequence[int] | None = None

    def __post_init__(self) -> None:
        check_choice("context", self.context, Context)
        _check_target(self.target)
        # Sizes given as any sequence are kept as tuples, so equal passes compare and hash equal.
        object.__setattr__(self, "patch_size", as_sizes(self.patch_size))
        object.__setattr__(self, "size_divisibility", as_sizes(self.size_divisibility))


@dataclass(frozen=True)
class SmoothGradConfig:
    """The settings of instance SmoothGrad, validated at construction (SPEC §2 and §5).

    The forward pass explained (output channel, context, patch, size divisibility) is not part
    of a method's settings: it is given per call, as an :class:`ExplainedPass`.

    Attributes
    ----------
    n_samples
        N, the number of noise draws (paper: 50).
    noise_level
        σ as a fraction of the intensity range, in [0, 1) (paper: 0.05); 0 gives ``A_Ω(x)``
        exactly.
    noise_range
        ``"per_channel"`` or ``"first_channel"`` (the authors' scripts).
    aggregation
        ``"max"`` (paper v3) or ``"mean"`` (paper v1).
    seed
        Seed of the noise generator, from 0 to 2**63 - 1 (:data:`instasal.typing.MAX_SEED`).
    engine
        ``"naive"``, ``"batched"`` or ``"auto"`` (see :mod:`instasal.saliency.engines`).
    rows_per_call
        Jacobian rows per batched backward call; ``None``: as many as fit the memory budget.
    memory_budget_bytes
        Memory one batched call may use; ``None``: half the free GPU memory, 2 GiB on the CPU.
        In the deployed context also the most one forward graph may hold: a group of prediction
        windows whose graphs would exceed it is checkpointed window by window (the same map).
    draws_per_pass
        Noise draws forwarded together in one batch, their Jacobian rows pulled in the same
        backward calls (each draw's rows from its own graph: exact); ``None``: chosen by
        measurement: after a first pass of one draw, a pass of as many as the memory budget
        holds (at most ``instasal.saliency.smoothgrad.MAX_DRAWS_PER_PASS``) is timed against a
        pass of one, and the faster per draw runs the rest (remembered per model, input size,
        device and settings). Models that mix the samples of a batch are detected and run one
        draw at a time.
    memory_format
        Layout of the differentiated input: ``"contiguous"`` or ``"channels_last"`` (channels
        innermost, which convolutions then keep; faster for convolutional U-Nets on the CPU, see
        ``docs/saliency.md``; a model that reshapes with ``view`` may refuse it). Same map to
        float32 round-off.
    max_stride
        ``1`` (the default): max aggregation is exact, over every voxel of Ω. ``s > 1``: a
        labelled **approximation** for CPUs: the maximum is taken over the rows of Ω's voxels on
        a lattice of stride ``s`` through the voxel nearest Ω's centroid
        (:func:`instasal.saliency.smoothgrad.row_lattice`), about ``s³`` times fewer rows. Not
        quantitative: on the built-in models peaks fell to about half of the exact ones
        (``docs/saliency.md``). Ignored by mean aggregation (one row per draw already).
    """

    n_samples: int = 50
    noise_level: float = 0.05
    noise_range: NoiseRange = "per_channel"
    aggregation: Aggregation = "max"
    seed: int = 0
    engine: EngineName = "auto"
    rows_per_call: int | None = None
    memory_budget_bytes: int | None = None
    draws_per_pass: int | None = None
    memory_format: MemoryFormat = "contiguous"
    max_stride: int = 1

    def __post_init__(self) -> None:
        check_choice("aggregation", self.aggregation, Aggregation)
        check_choice("noise_range", self.noise_range, NoiseRange)
        check_choice("engine", self.engine, EngineName)
        check_choice("memory_format", self.memory_format, MemoryFormat)
        check_seed(self.seed)
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int):
            raise ConfigurationError(f"n_samples must be an integer, got {self.n_samples!r}")
        if self.n_samples < 1:
            raise ConfigurationError(f"n_samples must be >= 1, got {self.n_samples}")
        level = float(self.noise_level)
        if not 0.0 <= level < 1.0:  # also refuses NaN
            raise ConfigurationError(f"noise_level must be in [0, 1), got {self.noise_level!r}")
        if self.rows_per_call is not None and self.rows_per_call < 1:
            raise ConfigurationError(f"rows_per_call must be >= 1, got {self.rows_per_call}")
        if isinstance(self.max_stride, bool) or not isinstance(self.max_stride, int):
            raise ConfigurationError(f"max_stride must be an integer, got {self.max_stride!r}")
        if self.max_stride < 1:
            raise ConfigurationError(f"max_stride must be >= 1, got {self.max_stride}")
        if self.draws_per_pass is not None and self.draws_per_pass < 1:
            raise ConfigurationError(f"draws_per_pass must be >= 1, got {self.draws_per_pass}")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < 1:
            raise ConfigurationError(
                f"memory_budget_bytes must be >= 1, got {self.memory_budget_bytes}"
            )

    @property
    def approximate(self) -> bool:
        """Whether the map is the labelled max-aggregation approximation (``max_stride > 1``)."""
        return self.aggregation == "max" and self.max_stride > 1

    @property
    def n_draws(self) -> int:
        """Noise draws per domain: one when ``noise_level`` is 0 (every draw is ``x``), else N."""
        return 1 if self.noise_level == 0 else self.n_samples


@dataclass(frozen=True)
class GradCamConfig:
    """The settings of instance Grad-CAM++ / Grad-CAM, validated at construction (SPEC §3, §5).

    Attributes
    ----------
    layer
        A name from ``model.named_modules()`` whose output is one activation tensor; ``None``:
        ``model.card["gradcam_layer"]``.
    variant
        ``"gradcam++"`` or ``"gradcam"``.

    The forward pass explained is given per call, as an :class:`ExplainedPass`; its
    ``"deployed"`` context is run on the patch window here (a layer's activation belongs to one
    window, not to the blend of the prediction's windows).
    """

    layer: str | None = None
    variant: CamVariant = "gradcam++"

    def __post_init__(self) -> None:
        check_choice("variant", self.variant, CamVariant)
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ConfigurationError(
                f"layer {self.layer!r} is not a module name (one of model.named_modules())"
            )

    def layer_of(self, model: nn.Module) -> str:
        """The layer: :attr:`layer`, else the model card's ``gradcam_layer``.

        Raises
        ------
        ConfigurationError
            If neither names one.
        """
        card = getattr(model, "card", None)
        layer = self.layer or (card.get("gradcam_layer") if isinstance(card, dict) else None)
        if not layer:
            raise ConfigurationError(
                'no Grad-CAM layer: give one (layer=...) or a model card with "gradcam_layer"'
            )
        return str(layer)
