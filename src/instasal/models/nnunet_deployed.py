"""An nnU-Net folder's own prediction as a differentiable function: its deployed context.

``nnUNetv2_predict`` crops the subject to the box of its non-zero voxels, normalises each channel,
resamples the data to the configuration's spacing (``resample_data_or_seg_to_shape``: third-order
splines through ``skimage.transform.resize``, or, for anisotropic spacing, in-plane splines per
slice and nearest neighbours across slices), slides Gaussian-weighted tiles at step 0.5 over it
(each tile mirrored over the checkpoint's axes and averaged; several folds averaged), resamples the
logits back to the cropped grid (first order) and writes background probability 1 outside the box.

:func:`nnunet_deployed_forward` builds that chain on a prepared subject as a
:class:`instasal.saliency.deployed.DeployedForward`, in the graph, so the deployed context
differentiates the logit nnU-Net thresholded. Normalisation stays outside the graph, as for every
model (``docs/method.md``). nnU-Net's resampling is linear in the data except for one step: skimage
clips each resized array to the range of its input (whole volume per channel; per slice in the
anisotropic path). Each 1-D operator is read off skimage/scipy with the arguments nnU-Net passes
(:func:`axis_matrix`), applied per axis as a matrix, and the clip applied after it, so the forward
is nnU-Net's to float round-off and its backward the exact transpose (the clip passes gradient to
the voxels it clips to, as its derivative does).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError
from instasal.models.cards import attach_card, card_of
from instasal.models.nnunet import NnUNetNetwork, NnUNetSetup, fold_networks
from instasal.models.nnunet_predict import TILE_STEP_SIZE, nnunet_network, nnunet_tta_module
from instasal.prepare import PreparedSubject
from instasal.saliency.deployed import DeployedForward, Tiling, Uncomputed

__all__ = [
    "OUTSIDE_BOX_LOGIT",
    "NnUNetGrid",
    "SeparableResampling",
    "axis_matrix",
    "nnunet_deployed_forward",
    "nnunet_deployed_obstacle",
    "nnunet_resampling",
    "nnunet_tiling",
    "with_nnunet_deployed",
]

RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
"""The one nnU-Net resampling function reproduced in the graph (nnU-Net's default)."""
OUTSIDE_BOX_LOGIT = -1.0e4
"""Logit of every class but background outside nnU-Net's crop box (sigmoid and softmax give
exactly the probability 0 nnU-Net writes there, in float32)."""
PREDICTOR_DTYPE = torch.float16
"""What nnUNetPredictor sums its tiles in, and the dtype of the logits its export resamples."""
GAUSSIAN_VALUE_SCALE = 10.0  # nnUNetPredictor's value_scaling_factor of compute_gaussian
GAUSSIAN_SIGMA_SCALE = 1.0 / 8


def axis_matrix(size_in: int, size_out: int, order: int, *, spline: bool) -> np.ndarray:
    """The 1-D operator ``[size_out, size_in]`` one nnU-Net resampling step applies along an axis.

    ``spline``: ``skimage.transform.resize`` as nnU-Net calls it (``mode="edge"``, no
    anti-aliasing), without its clip; else scipy's ``map_coordinates`` with nnU-Net's
    across-slice coordinates (``mode="nearest"``), both the very functions nnU-Net's resampling
    module calls. Read off by resampling the identity along one axis of a 2-D array (the other
    axis keeps its size, which both leave unchanged).
    """
    from nnunetv2.preprocessing.resampling import default_resampling

    identity = np.eye(size_in)
    if spline:
        resized = default_resampling.resize(
            identity, (size_out, size_in), order, mode="edge", anti_aliasing=False, clip=False
        )
        return np.asarray(resized)
    rows = size_in / size_out * (np.arange(size_out) + 0.5) - 0.5
    grid = np.array(np.meshgrid(rows, np.arange(size_in), indexing="ij"))
    return np.asarray(
        default_resampling.map_coordinates(identity, grid, order=order, mode="nearest")
    )


@dataclass(frozen=True, eq=False)
class SeparableResampling:
    """One call of nnU-Net's ``resample_data_or_seg_to_shape`` as a differentiable torch op.

    Attributes
    ----------
    first, second
        Per spatial axis of ``[B, C, X, Y, Z]``, the matrix applied in each of the two steps
        (``None``: that axis is left alone); in the isotropic path ``second`` is all ``None``.
    clip_dims
        The tensor dims whose range the first step's output is clipped to, per remaining index
        (skimage's ``clip``; ``()``: no clip, which first-order and nearest resampling never need).
    """

    first: tuple[torch.Tensor | None, ...]
    second: tuple[torch.Tensor | None, ...]
    clip_dims: tuple[int, ...]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` ``[B, C, *in]`` resampled to ``[B, C, *out]``."""
        out = _apply(batch, self.first)
        if self.clip_dims:
            low = batch.amin(dim=self.clip_dims, keepdim=True)
            high = batch.amax(dim=self.clip_dims, keepdim=True)
            out = torch.minimum(torch.maximum(out, low), high)
        return _apply(out, self.second)


def _apply(batch: torch.Tensor, matrices: Sequence[torch.Tensor | None]) -> torch.Tensor:
    for axis, matrix in enumerate(matrices):
        if matrix is not None:
            moved = torch.tensordot(
                batch, matrix.to(batch.device, batch.dtype), dims=([2 + axis], [1])
            )
            batch = torch.movedim(moved, -1, 2 + axis)
    return batch


def nnunet_resampling(
    shape_in: Sequence[int],
    shape_out: Sequence[int],
    spacing_in: Sequence[float],
    spacing_out: Sequence[float],
    arguments: Mapping[str, Any],
) -> SeparableResampling:
    """nnU-Net's ``resample_data_or_seg_to_shape(data, shape_out, spacing_in, spacing_out,
    **arguments)`` on arrays of spatial shape ``shape_in`` (all in one axis order).

    The choice between the isotropic and the separate-z path is nnU-Net's own
    (``determine_do_sep_z_and_axis``).
    """
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    shape_in, shape_out = tuple(int(n) for n in shape_in), tuple(int(n) for n in shape_out)
    none: tuple[torch.Tensor | None, ...] = (None,) * len(shape_in)
    if shape_in == shape_out:  # nnU-Net returns the data untouched
        return SeparableResampling(none, none, ())
    order, order_z = int(arguments.get("order", 3)), int(arguments.get("order_z", 0))
    separate, z_axis = determine_do_sep_z_and_axis(
        arguments.get("force_separate_z", False),
        spacing_in,
        spacing_out,
        arguments.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD),
    )
    splines = tuple(
        _tensor(axis_matrix(n, m, order, spline=True)) if not separate or axis != z_axis else None
        for axis, (n, m) in enumerate(zip(shape_in, shape_out, strict=True))
    )
    if not separate:
        return SeparableResampling(splines, none, (2, 3, 4) if order > 1 else ())
    across = list(none)
    if shape_in[z_axis] != shape_out[z_axis]:
        across[z_axis] = _tensor(
            axis_matrix(shape_in[z_axis], shape_out[z_axis], order_z, spline=False)
        )
    in_plane = tuple(2 + a for a in range(len(shape_in)) if a != z_axis)
    return SeparableResampling(splines, tuple(across), in_plane if order > 1 else ())


def _tensor(matrix: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float64))


@dataclass(eq=False)  # not frozen: ModelGrid's ``network`` is a settable attribute
class NnUNetGrid:
    """nnU-Net's geometry around its sliding window, on one subject's working grid (a
    :class:`instasal.saliency.deployed.ModelGrid`).

    Attributes
    ----------
    network
        The nnU-Net network the tiles run.
    box
        nnU-Net's crop to the non-zero box, on the working grid.
    into
        The data resampling from the cropped grid to the configuration's spacing.
    back
        The logits' resampling from there back to the cropped grid (nnU-Net's export).
    model_shape
        The grid the tiles slide over (our axis order).
    shape
        The working grid.
    """

    network: nn.Module
    box: tuple[slice, ...]
    into: SeparableResampling
    back: SeparableResampling
    model_shape: tuple[int, ...]
    shape: tuple[int, ...]

    def model_grid_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The tiles' grid (for this subject's working grid only)."""
        self._check(shape)
        return self.model_shape

    def to_model_grid(self, batch: torch.Tensor) -> torch.Tensor:
        """Cropped to the box and resampled to the configuration's spacing."""
        self._check(batch.shape[2:])
        return self.into(batch[(slice(None), slice(None), *self.box)])

    def from_model_grid(self, logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Logits resampled back to the box and zero outside it (linear, non-negative weights:
        first order; nnU-Net's constant outside the box is :meth:`outside`)."""
        self._check(shape)
        pairs: list[int] = []
        for s, n in reversed(list(zip(self.box, self.shape, strict=True))):
            pairs += [int(s.start), n - int(s.stop)]
        return F.pad(self.back(logits), pairs)

    def outside(self, classes: int, regions: bool) -> Uncomputed:
        """The voxels outside the box and nnU-Net's probability there as logits: background 1
        (every region 0)."""
        mask = torch.ones(self.shape, dtype=torch.bool)
        mask[self.box] = False
        logits = torch.full((classes,), OUTSIDE_BOX_LOGIT)
        if not regions:
            logits[0] = 0.0
        return Uncomputed(mask, logits)

    def _check(self, shape: Sequence[int]) -> None:
        if tuple(int(n) for n in shape) != self.shape:
            raise ValueError(
                f"nnU-Net's deployed forward was built for grid {self.shape}, got {tuple(shape)}"
            )


def nnunet_tiling(network: NnUNetNetwork, shape: Sequence[int]) -> Tiling:
    """nnU-Net's tiles on a preprocessed grid ``shape`` (our axis order): padded to the patch as
    ``pad_nd_image`` pads, steps of ``compute_steps_for_sliding_window`` at step 0.5, and the
    float16 Gaussian of ``compute_gaussian`` (σ = patch / 8) as nnUNetPredictor builds it."""
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    setup = _setup(network)
    patch_nnunet = [int(p) for p in setup.configuration_manager.patch_size]
    patch = network.ints(patch_nnunet)
    shape = tuple(int(n) for n in shape)
    padded = tuple(max(n, p) for n, p in zip(shape, patch, strict=True))
    pad_before = tuple((p - n) // 2 for n, p in zip(shape, padded, strict=True))
    steps = compute_steps_for_sliding_window(
        tuple(padded[a - 2] for a in network.to_nnunet), tuple(patch_nnunet), TILE_STEP_SIZE
    )
    # in nnU-Net's order of tiles (its float16 sums depend on it), restated in our axes
    boxes = tuple(
        tuple(slice(s, s + p) for s, p in zip(network.to_ours(start), patch, strict=True))
        for start in itertools.product(*steps)
    )
    gaussian = compute_gaussian(
        tuple(patch_nnunet),
        sigma_scale=GAUSSIAN_SIGMA_SCALE,
        value_scaling_factor=GAUSSIAN_VALUE_SCALE,
        device=torch.device("cpu"),
    )
    importance = gaussian.float().permute(*[network.from_nnunet[d] - 2 for d in range(3)])
    total = torch.zeros(padded, dtype=torch.float32)
    for box in boxes:
        total[box] += importance
    return Tiling(shape, patch, pad_before, boxes, importance.contiguous(), total, PREDICTOR_DTYPE)


def nnunet_deployed_obstacle(model: nn.Module) -> str | None:
    """Why nnU-Net's prediction of this folder cannot be rebuilt in the graph (``None``: it can)."""
    network = nnunet_network(model)
    if network is None or network.setup is None:
        return "the network is not a loaded nnU-Net folder"
    configuration = network.setup.configuration_manager.configuration
    for role in ("resampling_fn_data", "resampling_fn_probabilities"):
        name = configuration.get(role)
        if name != RESAMPLING_FUNCTION:
            return f"its plans resample with {name!r} ({role}), not nnU-Net's {RESAMPLING_FUNCTION}"
    if int(configuration.get("resampling_fn_probabilities_kwargs", {}).get("order", 1)) > 1:
        return "its plans resample the logits back with splines above first order"
    if len(network.setup.configuration_manager.patch_size) != 3:
        return "its configuration is 2-D (slice by slice)"
    return None


def nnunet_deployed_forward(prepared: PreparedSubject, tta: bool) -> DeployedForward:
    """``nnUNetv2_predict``'s logits on ``prepared``'s working grid, differentiable in
    ``prepared.x`` (mirroring unless ``tta`` is false, as ``--disable_tta``).

    Raises
    ------
    ConfigurationError
        When the folder's prediction cannot be rebuilt (:func:`nnunet_deployed_obstacle`) or
        the subject has no non-zero voxel (nnU-Net has nothing to crop to).
    """
    obstacle = nnunet_deployed_obstacle(prepared.network)
    network = nnunet_network(prepared.network)
    if obstacle is not None or network is None:
        raise ConfigurationError(
            f"nnU-Net's prediction cannot be explained as deployed: {obstacle}"
        )
    setup = _setup(network)
    box = _nonzero_box(prepared, network)
    configuration = setup.configuration_manager
    cropped = tuple(s.stop - s.start for s in box)
    spacing = tuple(float(s) for s in prepared.working.spacing)
    target = network.floats(configuration.spacing)
    model_shape = _new_shape(cropped, spacing, target)
    details = configuration.configuration
    into = _our_resampling(network, cropped, model_shape, spacing, target, details, "data")
    back = _our_resampling(network, model_shape, cropped, target, spacing, details, "probabilities")
    grid = NnUNetGrid(network, box, into, back, model_shape, tuple(prepared.x.shape[1:]))
    label_manager = setup.plans_manager.get_label_manager(setup.dataset)
    outside = grid.outside(int(label_manager.num_segmentation_heads), label_manager.has_regions)
    tiling = nnunet_tiling(network, model_shape)
    folds = tuple(_per_tile(fold, tta) for fold in _single_folds(network))
    return DeployedForward(
        _per_tile(network, tta),
        tiling,
        grid,
        grid.shape,
        outside,
        PREDICTOR_DTYPE,
        folds if len(folds) > 1 else (),
    )


def _single_folds(network: NnUNetNetwork) -> list[NnUNetNetwork]:
    """One :class:`NnUNetNetwork` per fold (sharing the folds' modules), with the folder's card."""
    folds = fold_networks(network.network)
    if len(folds) == 1:
        return [network]
    transpose = _setup(network).plans_manager.transpose_forward
    card = card_of(network)
    return [attach_card(NnUNetNetwork(f, transpose, network.setup), card) for f in folds]


def _per_tile(network: NnUNetNetwork, tta: bool) -> nn.Module:
    """What each tile runs: the network, mirrored as nnU-Net mirrors each tile with ``tta``."""
    return nnunet_tta_module(network) if tta else network


def with_nnunet_deployed(prepared: PreparedSubject, tta: bool) -> PreparedSubject:
    """``prepared`` whose network also states nnU-Net's deployed forward on this subject.

    The network is a shallow copy of the prepared one (the same modules, card and forward, so
    Grad-CAM layer names, weight randomisation and the patch context see what they saw) with
    ``deployed`` set, which :func:`instasal.saliency.deployed.deployed_forward` returns.
    """
    stating = copy.copy(prepared.network)
    # a plain attribute, not a submodule: the module tree stays the prepared network's
    object.__setattr__(stating, "deployed", nnunet_deployed_forward(prepared, tta))
    return replace(prepared, network=stating)


def _our_resampling(
    network: NnUNetNetwork,
    shape_in: Sequence[int],
    shape_out: Sequence[int],
    spacing_in: Sequence[float],
    spacing_out: Sequence[float],
    configuration: Mapping[str, Any],
    what: str,
) -> SeparableResampling:
    """nnU-Net's resampling of ``what`` decided in its axis order, applied in ours."""
    nnunet_axes = [a - 2 for a in network.to_nnunet]  # our axis at each nnU-Net position
    resampling = nnunet_resampling(
        [shape_in[a] for a in nnunet_axes],
        [shape_out[a] for a in nnunet_axes],
        [spacing_in[a] for a in nnunet_axes],
        [spacing_out[a] for a in nnunet_axes],
        dict(configuration.get(f"resampling_fn_{what}_kwargs") or {}),
    )
    ours = [network.from_nnunet[d] - 2 for d in range(3)]  # nnU-Net position of our axis

    def reorder(matrices: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
        return tuple(matrices[p] for p in ours)

    clip = tuple(sorted(network.to_nnunet[d - 2] for d in resampling.clip_dims))
    return SeparableResampling(reorder(resampling.first), reorder(resampling.second), clip)


def _new_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape`` (the same per axis in any order)."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    return tuple(int(n) for n in compute_new_shape(shape, spacing, target))


def _nonzero_box(prepared: PreparedSubject, network: NnUNetNetwork) -> tuple[slice, ...]:
    """nnU-Net's crop box (``crop_to_nonzero``) of the raw working data, in our axis order."""
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask, get_bbox_from_mask

    data = prepared.working.data
    if not np.any(data != 0):
        where = str(prepared.native.paths[0]) if prepared.native.paths else "subject"
        raise ConfigurationError(f"{where}: every voxel is 0; nnU-Net has no non-zero box")
    bounds = get_bbox_from_mask(create_nonzero_mask(np.asarray(data)))
    return tuple(slice(int(low), int(high)) for low, high in bounds)


def _setup(network: NnUNetNetwork) -> NnUNetSetup:
    if network.setup is None:
        raise ConfigurationError(f"{card_of(network).name}: nnU-Net network without its plans")
    return network.setup
