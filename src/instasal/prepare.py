"""The one mapping between a subject's native grid and a model's input space, and back.

A user's scan comes in its own orientation and voxel size; a network was trained on arrays of one
orientation and one voxel size, normalised one way. :func:`prepare_subject` maps a subject to what
the network expects, and everything instasal computes goes through it, in two steps:

1. **Orientation** (exact). The card's ``orientation`` says which array the network was trained
   on: ``"RAS"`` (or any three axis codes) means the stored array reoriented to the closest
   canonical orientation with those codes; ``"stored"`` means the array as stored (nnU-Net). The
   reorientation is a permutation and flips of the voxel array, so it loses nothing and is undone
   exactly (:class:`Reorientation`). The reoriented grid is the *working grid*: the user's own
   voxels in the model's axis order. Lesion domains, TN sampling and every saliency computation
   live on it; outputs are mapped back to the stored grid before they are written.
2. **Voxel size** (inside the differentiated graph). When the working grid's voxel size differs
   from the card's ``spacing_mm`` by more than 5 % on an axis, the network is wrapped in a
   :class:`ResampledNetwork`: a module taking working-grid inputs, resampling them to the model's
   voxel size with torch operations, running the network there, and resampling its logits back to
   the working grid. Saliency differentiates through the whole chain, so every Jacobian row is
   ∂ logit_native[v] / ∂ x_native: the logit the user sees with respect to the intensities the
   user has, exact by construction (no map is resampled afterwards).

Resampling is separable per axis. Into the model: where the model's voxels are larger than the
input's, each model voxel is the **mean of the input voxels it covers** (``area``: no aliasing,
and the exact inverse of repeating voxels); where they are smaller, **linear** interpolation
between voxel centres (``trilinear``, ``align_corners=False``). Logits back to the input grid:
where the input's voxels are larger, the mean of the model voxels each covers (``area``); where
they are smaller, each input voxel takes the logit of the **model voxel containing its centre**
(``nearest-exact``): no value is invented between the model's own outputs, and a subject stored
at a finer grid by repeating its voxels gets exactly the logits (and, per mm³, the saliency) of
the coarse subject.

Normalisation (:func:`normalise`) follows the card: per-channel z-score over non-zero voxels
(the paper's), over all voxels, none, or nnU-Net's per-channel schemes. It is applied on the working
grid before the network and is not differentiated: saliency is in logit units per *normalised*
intensity unit, as the authors define it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError, InstasalWarning
from instasal.instances import Instances, relabel_in_raster_order
from instasal.io import GridImage, Subject, zscore_nonzero
from instasal.models.cards import ModelCard, card_of
from instasal.typing import FloatArray, Growth

__all__ = [
    "SPACING_TOLERANCE",
    "PreparedSubject",
    "Reorientation",
    "ResampledNetwork",
    "model_grid_shape",
    "normalise",
    "obliquity_degrees",
    "prepare_subject",
    "reorient_subject",
    "reorientation_for",
    "resample",
]

SPACING_TOLERANCE = 0.05
"""Relative voxel-size difference per axis below which no resampling is done."""
# what the grid maps move between grids: a NumPy array or a torch tensor, returned as the same kind
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
OBLIQUE_NOTE_DEGREES = 1.0
"""Angles between the grid's axes and the world axes above which a note says so."""


@dataclass(frozen=True)
class Reorientation:
    """An exact map between a stored voxel array and a working orientation.

    Attributes
    ----------
    ornt
        nibabel orientation ``[3, 2]``: stored axis ``i`` becomes working axis ``ornt[i, 0]``,
        flipped when ``ornt[i, 1]`` is −1.
    stored_shape
        Spatial shape of the stored array.
    """

    ornt: np.ndarray
    stored_shape: tuple[int, int, int]

    @classmethod
    def identity(cls, shape: Sequence[int]) -> Reorientation:
        """No reorientation."""
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        return cls(ornt, (int(shape[0]), int(shape[1]), int(shape[2])))

    @classmethod
    def to_axcodes(cls, affine: np.ndarray, shape: Sequence[int], codes: str) -> Reorientation:
        """From the stored orientation to the closest canonical one with axis codes ``codes``."""
        stored = nib.orientations.io_orientation(affine)
        target = nib.orientations.axcodes2ornt(tuple(codes))
        ornt = nib.orientations.ornt_transform(stored, target)
        return cls(ornt, (int(shape[0]), int(shape[1]), int(shape[2])))

    @property
    def is_identity(self) -> bool:
        """Whether the working array is the stored array."""
        return bool(np.array_equal(self.ornt[:, 0], [0, 1, 2]) and np.all(self.ornt[:, 1] == 1))

    @property
    def working_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the working array."""
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[int(target)] = self.stored_shape[axis]
        return (shape[0], shape[1], shape[2])

    def _permutation(self) -> list[int]:
        """``perm[w]``: the stored axis that becomes working axis ``w``."""
        perm = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            perm[int(target)] = axis
        return perm

    def to_working(self, array: ArrayT) -> ArrayT:
        """``array`` ``[..., *stored_shape]`` (NumPy or torch) in the working orientation."""
        if self.is_identity:
            return array
        lead: int = array.ndim - 3
        flips = [lead + i for i, (_, sign) in enumerate(self.ornt) if sign < 0]
        flipped = _flip(array, flips)
        order = [*range(lead), *(lead + p for p in self._permutation())]
        return _transpose(flipped, order)

    def to_stored(self, array: ArrayT) -> ArrayT:
        """The inverse of :meth:`to_working`."""
        if self.is_identity:
            return array
        lead: int = array.ndim - 3
        perm = self._permutation()
        inverse: list[int] = [0, 0, 0]
        for working, stored in enumerate(perm):
            inverse[stored] = working
        back = _transpose(array, [*range(lead), *(lead + i for i in inverse)])
        flips = [lead + i for i, (_, sign) in enumerate(self.ornt) if sign < 0]
        return _flip(back, flips)

    def working_affine(self, stored_affine: np.ndarray) -> np.ndarray:
        """The voxel-to-world matrix of the working array (the same world positions)."""
        return np.asarray(
            stored_affine @ nib.orientations.inv_ornt_aff(self.ornt, self.stored_shape),
            dtype=np.float64,
        )


def _flip(array: ArrayT, axes: list[int]) -> ArrayT:
    if not axes:
        return array
    if isinstance(array, torch.Tensor):
        return torch.flip(array, axes)
    return np.flip(array, tuple(axes))


def _transpose(array: ArrayT, order: list[int]) -> ArrayT:
    if order == sorted(order):
        return array
    if isinstance(array, torch.Tensor):
        return array.permute(*order)
    return np.transpose(array, order)


def obliquity_degrees(affine: np.ndarray) -> float:
    """The largest angle (degrees) between a grid axis and its nearest world axis."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = columns / np.linalg.norm(columns, axis=0, keepdims=True)
    cosines = np.clip(np.abs(unit).max(axis=0), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def resample(volume: torch.Tensor, size: Sequence[int], *, grow: Growth = "linear") -> torch.Tensor:
    """``volume`` ``[B, C, X, Y, Z]`` resampled to ``size``, differentiably, axis by axis.

    Axes that shrink are averaged over the input voxels each output voxel covers (``area``).
    Axes that grow are interpolated linearly between voxel centres (``grow="linear"``), or each
    output voxel takes the value of the input voxel containing its centre (``grow="nearest"``).
    Other axes are untouched.
    """
    source = tuple(int(n) for n in volume.shape[2:])
    target = tuple(int(n) for n in size)
    smaller = tuple(min(s, t) for s, t in zip(source, target, strict=True))
    if smaller != source:
        volume = F.interpolate(volume, size=smaller, mode="area")
    if target == smaller:
        return volume
    if grow == "nearest":
        return F.interpolate(volume, size=target, mode="nearest-exact")
    return F.interpolate(volume, size=target, mode="trilinear", align_corners=False)


def model_grid_shape(
    shape: Sequence[int], spacing: Sequence[float], model_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """The grid shape covering the same extent at the model's voxel size."""
    a, b, c = (
        max(1, round(n * s / m)) for n, s, m in zip(shape, spacing, model_spacing, strict=True)
    )
    return (a, b, c)


class ResampledNetwork(nn.Module):
    """A network taking and returning arrays on a grid of another voxel size than its own.

    ``forward(x)`` resamples ``x`` ``[B, C, *S]`` (voxel size ``spacing``) to the model's voxel
    size, zero-pads the end of each axis to the network's size divisibility, runs the network,
    crops, and resamples the logits back to ``S``. Every step is a torch operation, so gradients
    with respect to ``x`` are exact. Its ``card`` is the network's, restated for the input grid:
    spacing and patch size in input voxels, no size divisibility (handled inside), the Grad-CAM
    layer under ``network.``.

    Parameters
    ----------
    network
        The model (with its ``card``).
    spacing
        Voxel size of the arrays this module takes, per axis (mm).
    """

    def __init__(self, network: nn.Module, spacing: Sequence[float]) -> None:
        super().__init__()
        card = card_of(network)
        if card.spacing_mm is None:
            raise ConfigurationError(
                f"model {card.name!r} states no spacing_mm; cannot resample to it"
            )
        self.network = network
        self.spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        self.model_spacing = card.spacing_mm
        self.divisibility = card.size_divisibility
        patch = card.patch_size
        if patch is not None:
            sizes = zip(patch, self.model_spacing, self.spacing, strict=True)
            x, y, z = (max(1, round(p * m / s)) for p, m, s in sizes)
            patch = (x, y, z)
        layer = None if card.gradcam_layer is None else f"network.{card.gradcam_layer}"
        restated = card.updated(
            spacing_mm=self.spacing,
            size_divisibility=(1, 1, 1),
            patch_size=patch,
            gradcam_layer=layer,
        )
        self.card = restated.to_dict()

    def model_grid_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The network's grid for an input grid of ``shape`` (the same extent)."""
        return model_grid_shape(shape, self.spacing, self.model_spacing)

    def to_model_grid(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S]`` resampled to the network's voxel size (as the prediction does)."""
        return resample(batch, self.model_grid_shape(batch.shape[2:]))

    def from_model_grid(self, logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Logits on the network's grid resampled back to ``shape`` (as the prediction does)."""
        return resample(logits, shape, grow="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on ``x``'s grid."""
        shape = tuple(int(n) for n in x.shape[2:])
        inner = self.model_grid_shape(shape)
        padding: list[int] = []
        for size, factor in reversed(list(zip(inner, self.divisibility, strict=True))):
            padding += [0, (-size) % factor]
        output = self.network(F.pad(self.to_model_grid(x), padding))
        cropped = output[:, :, : inner[0], : inner[1], : inner[2]]
        return self.from_model_grid(cropped, shape)


@dataclass(frozen=True, eq=False)
class PreparedSubject:
    """A subject mapped to a model's input space.

    Attributes
    ----------
    native
        The subject as read (raw intensities, stored grid and affine).
    working
        The same voxels reoriented to the model's orientation (raw intensities; working affine).
    x
        ``working`` normalised as the card says, float32 ``[C, *working_shape]``.
    network
        What to run and differentiate on working-grid arrays: the model itself, or a
        :class:`ResampledNetwork` around it when the voxel sizes differ.
    reorientation
        The exact map between the stored and working arrays.
    notes
        One-line notes on what was assumed or done (also issued as :class:`InstasalWarning`).
    """

    native: Subject
    working: Subject
    x: torch.Tensor
    network: nn.Module
    reorientation: Reorientation
    notes: tuple[str, ...] = ()

    @property
    def resampled(self) -> bool:
        """Whether the network runs at another voxel size than the subject's."""
        return isinstance(self.network, ResampledNetwork)

    def to_working(self, array: ArrayT) -> ArrayT:
        """A stored-grid array ``[..., X, Y, Z]`` on the working grid."""
        return self.reorientation.to_working(array)

    def to_native(self, array: ArrayT) -> ArrayT:
        """A working-grid array ``[..., *working_shape]`` on the stored grid."""
        return self.reorientation.to_stored(array)

    def native_image(self, working: np.ndarray) -> GridImage:
        """A working-grid volume restated on the stored grid, to save with its affine and header."""
        return self.native.on_grid(np.ascontiguousarray(self.to_native(working)))

    def native_instances(self, instances: Instances) -> tuple[Instances, dict[int, int]]:
        """Working-grid instances restated on the stored grid, and the map working id → stored id.

        Ids are renumbered in the stored grid's raster order within each group (predicted
        lesions, then FN; TN keep their sampling order), as :mod:`instasal.instances` numbers them.
        """
        if self.reorientation.is_identity:
            return instances, {r.id: r.id for r in instances}
        labels = np.ascontiguousarray(self.to_native(instances.labels))
        return relabel_in_raster_order(
            labels, self.native.affine, {r.id: r.kind for r in instances}
        )

    def geometry(self) -> dict[str, Any]:
        """What was done to the geometry, for provenance."""
        return {
            "stored_axcodes": "".join(nib.orientations.aff2axcodes(self.native.affine)),
            "working_axcodes": "".join(nib.orientations.aff2axcodes(self.working.affine)),
            "reoriented": not self.reorientation.is_identity,
            "native_spacing_mm": list(self.native.spacing),
            "model_spacing_mm": (
                list(self.network.model_spacing)
                if isinstance(self.network, ResampledNetwork)
                else list(self.working.spacing)
            ),
            "resampled": self.resampled,
            "obliquity_degrees": obliquity_degrees(self.native.affine),
            "notes": list(self.notes),
        }


def reorientation_for(subject: Subject, orientation: str | None) -> Reorientation:
    """The reorientation a card's ``orientation`` asks for (identity for ``stored`` / unknown)."""
    if orientation is None or orientation == "stored":
        return Reorientation.identity(subject.shape)
    return Reorientation.to_axcodes(subject.affine, subject.shape, orientation)


def reorient_subject(subject: Subject, reorientation: Reorientation) -> Subject:
    """``subject`` with its voxels in the working orientation (same world positions)."""
    if reorientation.is_identity:
        return subject
    data = np.ascontiguousarray(reorientation.to_working(subject.data))
    return replace(subject, data=data, affine=reorientation.working_affine(subject.affine))


def prepare_subject(
    subject: Subject, model: nn.Module, *, spacing_tolerance: float = SPACING_TOLERANCE
) -> PreparedSubject:
    """Map a raw subject to ``model``'s input space (orientation, voxel size, normalisation).

    Parameters
    ----------
    subject
        Raw intensities on the stored grid (as :func:`instasal.io.read_subject` returns).
    model
        A loaded model with its ``card``.
    spacing_tolerance
        Relative voxel-size difference per axis below which the subject is used at its own size.

    Returns
    -------
    PreparedSubject

    Raises
    ------
    ConfigurationError
        On a normalisation scheme instasal cannot reproduce.
    """
    card = card_of(model)
    where = str(subject.paths[0]) if subject.paths else "subject"
    notes: list[str] = []
    orientation = card.orientation
    if orientation is None:
        notes.append(
            f"{where}: model card states no orientation; the array is used as stored "
            f"({''.join(nib.orientations.aff2axcodes(subject.affine))})"
        )
    reorientation = reorientation_for(subject, orientation)
    working = reorient_subject(subject, reorientation)
    angle = obliquity_degrees(subject.affine)
    if angle > OBLIQUE_NOTE_DEGREES:
        notes.append(
            f"{where}: the grid is oblique ({angle:.1f}° from the world axes); the model sees "
            "its voxel axes as the anatomical axes (resample to an axis-aligned grid first to "
            "avoid it)"
        )
    network: nn.Module = model
    model_spacing = card.spacing_mm
    if model_spacing and _needs_resampling(working.spacing, model_spacing, spacing_tolerance):
        network = ResampledNetwork(model, working.spacing)
        have = "×".join(f"{v:g}" for v in working.spacing)
        want = "×".join(f"{float(v):g}" for v in model_spacing)
        notes.append(
            f"{where}: voxel size {have} mm is resampled to the model's {want} mm inside the "
            "network's graph; outputs stay on the input grid"
        )
    x = torch.from_numpy(normalise(working.data, card, where=where))
    for note in notes:
        warnings.warn(note, InstasalWarning, stacklevel=2)
    return PreparedSubject(subject, working, x, network, reorientation, tuple(notes))


def _needs_resampling(
    spacing: Sequence[float], model_spacing: Sequence[float], tolerance: float
) -> bool:
    return any(
        abs(have / float(want) - 1.0) > tolerance
        for have, want in zip(spacing, model_spacing, strict=True)
    )


def normalise(data: FloatArray, card: ModelCard, *, where: str = "subject") -> FloatArray:
    """Normalise raw ``[C, X, Y, Z]`` the way the card says the model was trained.

    ``zscore_nonzero``: per channel over its non-zero voxels; ``zscore``: over all voxels;
    ``none``: unchanged; ``nnunet``: each channel by the scheme in
    ``card.preprocessing["normalization_schemes"]`` (Z-score — masked to the non-zero voxels of
    all channels where ``use_mask_for_norm`` says so —, CT clipping and scaling by the training
    foreground's statistics, rescaling to [0, 1], or none).

    The card's scheme is one of these four (:class:`~instasal.models.ModelCard` refuses any
    other when the card is read).

    Raises
    ------
    ConfigurationError
        On nnU-Net schemes that do not fit the channels.
    """
    scheme = card.normalisation
    values = np.asarray(data, dtype=np.float32)
    if scheme == "zscore_nonzero":
        return zscore_nonzero(values)
    if scheme == "none":
        return values
    if scheme == "zscore":
        return np.stack([_zscore(channel, None) for channel in values]).astype(np.float32)
    return _nnunet_normalise(values, card.preprocessing, where)


def _zscore(channel: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    values = channel.astype(np.float64)
    chosen = values if mask is None else values[mask]
    if chosen.size == 0:
        return np.zeros_like(values)
    mean, std = float(chosen.mean()), float(chosen.std())
    scaled = (values - mean) / max(std, 1e-8)
    if mask is not None:
        scaled[~mask] = 0.0
    return scaled


def _nnunet_normalise(values: np.ndarray, preprocessing: Mapping[str, Any], where: str) -> Any:
    schemes = list(preprocessing.get("normalization_schemes") or [])
    masked = list(preprocessing.get("use_mask_for_norm") or [False] * len(schemes))
    properties = dict(preprocessing.get("foreground_intensity_properties_per_channel") or {})
    if len(schemes) != values.shape[0]:
        raise ConfigurationError(
            f"{where}: the model card lists {len(schemes)} nnU-Net normalisation scheme(s) for "
            f"{values.shape[0]} channel(s)"
        )
    foreground = (values != 0).any(axis=0)
    out = []
    for k, (scheme, use_mask) in enumerate(zip(schemes, masked, strict=True)):
        channel = values[k].astype(np.float64)
        stats = properties.get(str(k), {})
        if scheme == "ZScoreNormalization":
            out.append(_zscore(channel, foreground if use_mask else None))
        elif scheme == "CTNormalization":
            low, high = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
            clipped = np.clip(channel, low, high)
            out.append((clipped - float(stats["mean"])) / max(float(stats["std"]), 1e-8))
        elif scheme == "NoNormalization":
            out.append(channel)
        elif scheme == "RescaleTo01Normalization":
            low, high = float(channel.min()), float(channel.max())
            out.append((channel - low) / max(high - low, 1e-8))
        elif scheme == "RGBTo01Normalization":
            out.append(channel / 255.0)
        else:
            raise ConfigurationError(
                f"{where}: nnU-Net normalisation {scheme!r} of channel {k} is not supported"
            )
    return np.stack(out).astype(np.float32)
