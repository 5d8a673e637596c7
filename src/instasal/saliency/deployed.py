"""The deployed context: differentiate the logit the prediction itself thresholded.

A sliding-window prediction (MONAI's ``sliding_window_inference``, as instasal's ``predict_logits``
runs it) gives voxel v the logit

    z(v) = Σ_w  g(v − s_w) f(x[w])(v − s_w)  /  Σ_w g(v − s_w)

over the windows w of the tiling (start ``s_w``, the card's patch size, overlap 0.5), ``g`` the
Gaussian importance map (σ = patch / 8, clamped below as MONAI clamps it) and the input zero-padded
symmetrically where it is smaller than the patch. Where the network runs at another voxel size
(:class:`ModelGrid`), the input is resampled to its grid before the windows and the stitched logits
resampled back after them, as the prediction does. The denominator does not depend on x, so the
Jacobian row of v is the blending-weighted sum of the rows of every window holding v. Here that sum
is built by autograd itself: one forward pass runs exactly the windows a group of voxels depends
on, blends them with the prediction's weights and normalisation, and every row of the group is
pulled from that one graph. Voxels are grouped by the exact set of
windows each depends on, so no row runs the backward pass of a window it does not depend on, and
no window it depends on is skipped: the map is exact (tested against autograd through MONAI's own
``sliding_window_inference``). Groups with the same windows share one forward pass per noise draw,
across domains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.inputs import target_channel
from instasal.saliency.windows import (
    ModelGrid,
    end_padding,
    model_grid_footprint,
    padded_forward,
    resolve_patch_size,
    resolve_size_divisibility,
)

__all__ = [
    "SLIDING_WINDOW_OVERLAP",
    "SLIDING_WINDOW_SIGMA_SCALE",
    "DeployedForward",
    "ModelGrid",
    "Tiling",
    "Uncomputed",
    "deployed_forward",
    "sliding_tiling",
]

SLIDING_WINDOW_OVERLAP = 0.5
"""Fraction of a window shared with its neighbour in the deployed prediction."""
SLIDING_WINDOW_SIGMA_SCALE = 0.125
"""σ of the Gaussian blending weights, as a fraction of the patch (nnU-Net's 1/8)."""


@dataclass(frozen=True, eq=False)
class Tiling:
    """The windows and blending weights of a sliding-window prediction on one grid.

    Attributes
    ----------
    shape
        The grid the prediction is made on.
    patch
        Window size.
    pad_before
        Zero voxels added before each axis (where the grid is smaller than the patch); as many
        or one more are added after it.
    boxes
        Each window as slices of the padded grid, in the prediction's order.
    importance
        Blending weight of each window voxel ``[*patch]``.
    total_weight
        Sum of the weights of every window at each voxel of the padded grid ``[*padded]``.
    accumulate
        The dtype the prediction sums the weighted windows and weights in, window after window
        (nnU-Net's predictor: ``torch.float16``); ``None``: the input's. The blend's value is then
        rounded as the prediction rounds it, its gradient that of the exact sum (rounding has
        derivative zero almost everywhere, so the map is of the function the prediction's
        arithmetic approximates).
    """

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    pad_before: tuple[int, ...]
    boxes: tuple[tuple[slice, ...], ...]
    importance: torch.Tensor
    total_weight: torch.Tensor
    accumulate: torch.dtype | None = None

    @property
    def padded(self) -> tuple[int, ...]:
        """The padded grid's shape."""
        return tuple(int(n) for n in self.total_weight.shape)

    def padding_pairs(self) -> list[int]:
        """``F.pad``'s argument: (before, after) per axis, the last axis first."""
        pairs: list[int] = []
        for size, padded, before in reversed(
            list(zip(self.shape, self.padded, self.pad_before, strict=True))
        ):
            pairs += [before, padded - size - before]
        return pairs

    def covering(self, domain: torch.Tensor) -> tuple[int, ...]:
        """Indices of the windows holding at least one voxel of ``domain`` (a mask on ``shape``)."""
        padded = F.pad(domain[None, None].to(torch.uint8), self.padding_pairs())[0, 0].bool()
        return tuple(i for i, box in enumerate(self.boxes) if bool(padded[box].any()))

    def blended_logits(
        self,
        model: nn.Module,
        batch: torch.Tensor,
        windows: Sequence[int],
        *,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """The prediction's logits ``[B, K, *shape]`` where ``windows`` are all that hold a voxel.

        Exact at every voxel all of whose windows are among ``windows`` (elsewhere the missing
        windows' share is left out); differentiable in ``batch`` ``[B, C, *shape]``. With
        ``checkpoint``, each window's forward keeps no graph: a backward pass runs it again,
        one window at a time, so that memory holds one window's graph instead of all of theirs
        (the same logits and gradients; each backward pass costs a forward pass more per window).
        """
        padded = F.pad(batch, self.padding_pairs())
        importance = self.importance.to(batch.device, batch.dtype)
        # each window padded to the network's size divisibility, as the prediction runs it
        divisibility = resolve_size_divisibility(model, None, len(self.patch))
        extra = end_padding(self.patch, divisibility)
        blended: torch.Tensor | None = None
        rounded: torch.Tensor | None = None
        for index in windows:
            box = (slice(None), slice(None), *self.boxes[index])
            if checkpoint:
                window_logits = torch.utils.checkpoint.checkpoint(
                    padded_forward, model, padded[box], extra, use_reentrant=False
                )
            else:
                window_logits = padded_forward(model, padded[box], extra)
            weighted = window_logits * importance
            if blended is None:
                blended = weighted.new_zeros((batch.shape[0], weighted.shape[1], *self.padded))
                if self.accumulate is not None:
                    rounded = blended.detach().to(self.accumulate)
            blended = blended.index_put(_box_indices(box, blended), weighted, accumulate=True)
            if rounded is not None:
                rounded[box] += weighted.detach()  # summed in float32, stored rounded
        if blended is None:
            raise ValueError("no window to blend")
        inside = (
            slice(None),
            slice(None),
            *(
                slice(before, before + size)
                for before, size in zip(self.pad_before, self.shape, strict=True)
            ),
        )
        exact = (blended / self.total_weight.to(batch.device, batch.dtype))[inside]
        if rounded is None:
            return exact
        total = self._rounded_total(rounded.dtype).to(batch.device)
        value = (rounded.to(batch.dtype) / total.to(batch.dtype)).to(rounded.dtype)
        return exact + (value[inside].to(batch.dtype) - exact).detach()

    def _rounded_total(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights summed window after window in ``dtype``."""
        total = torch.zeros(self.padded, dtype=dtype)
        weight = self.importance.to(dtype)
        for box in self.boxes:
            total[box] += weight
        return total


@dataclass(frozen=True, eq=False)
class Uncomputed:
    """Voxels for which the prediction computes no logit but states a constant (nnU-Net writes
    background probability 1 outside its crop box), and that constant as logits.

    Attributes
    ----------
    mask
        ``[*shape]``, true where the prediction runs no window.
    logits
        ``[K]``: logits giving the prediction's probability there.
    """

    mask: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True, eq=False)
class DeployedForward:
    """The sliding-window prediction as a differentiable function of the input grid.

    Attributes
    ----------
    network
        What each window runs.
    tiling
        The prediction's windows on the network's grid.
    grid
        The resampling around the sliding window where the network runs at another voxel size
        (``None``: the input grid is the network's).
    shape
        The input grid.
    uncomputed
        Where the prediction states a constant instead of running windows (``None``: nowhere).
    stored
        The dtype the prediction stores its logits in on the input grid (nnU-Net's export:
        ``torch.float16``; ``None``: the input's): values rounded so, gradients exact.
    members
        Networks whose whole blended predictions the prediction averages, each blended (and
        rounded) on its own (nnU-Net's folds); empty: ``network``'s blend alone. The average is
        ``network``'s blend in exact arithmetic, not after rounding.
    """

    network: nn.Module
    tiling: Tiling
    grid: ModelGrid | None
    shape: tuple[int, ...]
    uncomputed: Uncomputed | None = None
    stored: torch.dtype | None = None
    members: tuple[nn.Module, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, shape: Sequence[int], patch: Sequence[int]) -> DeployedForward:
        """The prediction of ``model`` on grid ``shape`` with windows of ``patch`` (on the
        network's own grid)."""
        shape = tuple(int(n) for n in shape)
        if isinstance(model, ModelGrid):
            inner = model.model_grid_shape(shape)
            return cls(model.network, sliding_tiling(inner, patch), model, shape)
        return cls(model, sliding_tiling(shape, patch), None, shape)

    def covering(self, domain: torch.Tensor) -> tuple[int, ...]:
        """The prediction windows some voxel of ``domain`` (on the input grid) depends on."""
        if self.grid is None:
            return self.tiling.covering(domain)
        return self.tiling.covering(model_grid_footprint(self.grid, domain))

    def cells(self, domain: torch.Tensor) -> dict[tuple[int, ...], torch.Tensor]:
        """``domain``'s voxels grouped by the exact set of prediction windows each depends on:
        ``{windows: flat C-order indices of those voxels}``.

        A voxel's row needs the backward pass of its own windows only: a graph of one cell's
        windows serves its rows without running the others' backward.
        """
        where = domain.reshape(-1).nonzero().reshape(-1)
        windows = self.covering(domain)
        held = torch.zeros((len(where), len(windows)), dtype=torch.bool)
        for column, index in enumerate(windows):
            held[:, column] = self._influence(index).reshape(-1)[where]
        cells: dict[tuple[int, ...], list[int]] = {}
        for row, flags in enumerate(held.tolist()):
            # a voxel no window feeds (outside nnU-Net's crop box) has a constant logit: any
            # window's graph gives its zero row
            key = tuple(w for w, flag in zip(windows, flags, strict=True) if flag) or (
                windows[0] if windows else 0,
            )
            cells.setdefault(key, []).append(row)
        return {key: where[torch.tensor(rows)] for key, rows in cells.items()}

    def region(self, domain: torch.Tensor) -> tuple[slice, ...]:
        """The box of the input grid holding every voxel the prediction windows of ``domain``
        take part in: perturbing the input outside it leaves ``domain``'s logits unchanged."""
        union = torch.zeros(self.shape, dtype=torch.bool)
        for index in self.covering(domain):
            union |= self._influence(index)
        where = union.nonzero()
        low, high = where.amin(0).tolist(), where.amax(0).tolist()
        return tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))

    def _influence(self, index: int) -> torch.Tensor:
        """The input-grid voxels whose prediction window ``index`` takes part in (boolean)."""
        inner = torch.zeros(self.tiling.padded, dtype=torch.bool)
        inner[self.tiling.boxes[index]] = True
        inside = tuple(
            slice(before, before + size)
            for before, size in zip(self.tiling.pad_before, self.tiling.shape, strict=True)
        )
        inner = inner[inside]
        if self.grid is None:
            return inner
        spread = self.grid.from_model_grid(inner[None, None].float(), self.shape)[0, 0]
        return spread > 0

    def logits(
        self, batch: torch.Tensor, windows: Sequence[int], *, checkpoint: bool = False
    ) -> torch.Tensor:
        """Logits ``[B, K, *shape]`` of the prediction, exact wherever every window feeding a
        voxel is among ``windows`` (``checkpoint``: see :meth:`Tiling.blended_logits`)."""
        if self.grid is None:
            logits = self._blend(batch, windows, checkpoint)
        else:
            inner = self._blend(self.grid.to_model_grid(batch), windows, checkpoint)
            logits = self.grid.from_model_grid(inner, self.shape)
        if self.stored is not None:
            rounded = logits.detach().to(self.stored).to(logits.dtype)
            logits = logits + (rounded - logits.detach())
        if self.uncomputed is None:
            return logits
        constant = self.uncomputed.logits.to(logits.device, logits.dtype)
        where = self.uncomputed.mask.to(logits.device)
        return torch.where(where, constant.reshape(-1, *[1] * len(self.shape)), logits)

    def _blend(self, batch: torch.Tensor, windows: Sequence[int], checkpoint: bool) -> torch.Tensor:
        """The blended logits on the tiles' grid: one network's, or the members' average, summed
        (and divided) in :attr:`Tiling.accumulate` as the prediction sums them."""
        if not self.members:
            return self.tiling.blended_logits(self.network, batch, windows, checkpoint=checkpoint)
        parts = [
            self.tiling.blended_logits(m, batch, windows, checkpoint=checkpoint)
            for m in self.members
        ]
        exact = torch.stack(parts).mean(0)
        dtype = self.tiling.accumulate
        if dtype is None:
            return exact
        total = parts[0].detach().to(dtype)
        for part in parts[1:]:
            total += part.detach()
        value = (total.to(exact.dtype) / len(parts)).to(dtype).to(exact.dtype)
        return exact + (value - exact).detach()

    def target_logits(
        self, batch: torch.Tensor, windows: Sequence[int], target: int, *, checkpoint: bool = False
    ) -> torch.Tensor:
        """The target channel of :meth:`logits`: ``[*shape]`` for a batch of one, else
        ``[B, *shape]`` (as :func:`instasal.saliency.inputs.run_target_logits`)."""
        logits = self.logits(batch, windows, checkpoint=checkpoint)
        chosen = logits[:, target_channel(target, logits.shape[1])]
        return chosen[0] if chosen.shape[0] == 1 else chosen


def deployed_forward(
    model: nn.Module, shape: Sequence[int], patch_size: int | Sequence[int] | None
) -> DeployedForward:
    """The deployed forward of ``model`` on grid ``shape``: the one ``model.deployed`` states
    (a prediction of its own, e.g. an nnU-Net folder's, built for one subject), else MONAI's
    sliding window with windows of ``patch_size``, else of the card's patch (of the network
    inside a :class:`ModelGrid`, on its own grid).

    Raises
    ------
    ValueError
        When the stated forward was built for another grid.
    """
    stated = getattr(model, "deployed", None)
    if isinstance(stated, DeployedForward):
        if stated.shape != tuple(int(n) for n in shape):
            raise ValueError(
                f"the model's deployed forward is for grid {stated.shape}, got {tuple(shape)}"
            )
        return stated
    own = _own_prediction(model)
    if own is not None:
        raise ConfigurationError(
            f"the prediction of this model is {own}, not a sliding window instasal runs: state it "
            "on the subject first (instasal.pipeline.context_choice.with_deployed_forward)"
        )
    network = model.network if isinstance(model, ModelGrid) else model
    given = None if isinstance(model, ModelGrid) else patch_size
    return DeployedForward.of(model, shape, resolve_patch_size(network, given, len(shape)))


def _own_prediction(model: nn.Module) -> str | None:
    """What predicts ``model`` (or a network it wraps) where that is not instasal's sliding
    window: the ``own_prediction`` a network class states (an nnU-Net folder's predictor)."""
    inner: object = model
    while isinstance(inner, nn.Module):
        own = getattr(inner, "own_prediction", None)
        if isinstance(own, str):
            return own
        inner = getattr(inner, "network", None)
    return None


def _box_indices(box: tuple[slice, ...], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Broadcast index tensors selecting ``like[box]`` (for an out-of-place ``index_put``)."""
    ranges = [
        torch.arange(*s.indices(n), device=like.device)
        for s, n in zip(box, like.shape, strict=True)
    ]
    return tuple(
        r.reshape([-1 if axis == i else 1 for axis in range(len(ranges))])
        for i, r in enumerate(ranges)
    )


def sliding_tiling(
    shape: Sequence[int],
    patch: Sequence[int],
    *,
    overlap: float = SLIDING_WINDOW_OVERLAP,
    sigma_scale: float = SLIDING_WINDOW_SIGMA_SCALE,
) -> Tiling:
    """The tiling MONAI's ``sliding_window_inference`` uses on a grid of ``shape``
    (``mode="gaussian"``, constant zero padding).

    >>> tiling = sliding_tiling((20, 8, 8), (8, 8, 8))
    >>> [box[0].start for box in tiling.boxes], tiling.padded
    ([0, 4, 8, 12], (20, 8, 8))
    """
    shape, patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
    image = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    pad_before = tuple((max(p - s, 0)) // 2 for s, p in zip(shape, patch, strict=True))
    interval = tuple(
        p if p == n else max(int(p * (1 - overlap)), 1) for p, n in zip(patch, image, strict=True)
    )
    boxes = tuple(
        tuple(slice(int(axis.start), int(axis.stop)) for axis in box)
        for box in dense_patch_slices(image, patch, interval)
    )
    importance = compute_importance_map(
        patch, mode="gaussian", sigma_scale=sigma_scale, device="cpu", dtype=torch.float32
    )
    total = torch.zeros(image, dtype=torch.float32)
    for box in boxes:
        total[box] += importance
    return Tiling(shape, patch, pad_before, boxes, importance, total)
