"""Deletion and insertion curves of one domain's maps against random orders (``docs/trust.md``).

The voxels of the neighbourhood ``N`` of Ω are replaced by a baseline (all channels of a voxel at
once) in the order a map ranks them, and the model's mean probability and mean target logit over Ω
are followed. Deletion replaces the most important voxels first; insertion starts from ``N`` all
baseline and restores them most important first. A map that ranks what the model uses moves the
output faster than random orders: the areas between the curves measure by how much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.inputs import as_domain, as_input, target_channel
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.summaries import ring_mask
from instasal.saliency.windows import context_windows, end_padding
from instasal.trust.similarity import NEIGHBOURHOOD_MM, neighbourhood
from instasal.typing import BoolArray, Context, DomainLike, FloatArray, InputLike

__all__ = [
    "BASELINE_BLUR_MM",
    "BASELINE_SHELL_MM",
    "Baseline",
    "FaithfulnessResult",
    "baseline_values",
    "deletion_insertion",
    "voxel_order",
]

Baseline = Literal["local_mean", "blur"]
BASELINE_SHELL_MM = 5.0
"""Width of the tissue shell beyond ``N`` whose mean is the ``"local_mean"`` baseline."""
BASELINE_BLUR_MM = 5.0
"""σ (mm) of the Gaussian blur of the ``"blur"`` baseline."""


def baseline_values(
    x: FloatArray,
    domain: BoolArray,
    spacing: Sequence[float],
    *,
    baseline: Baseline = "local_mean",
    tissue: BoolArray | None = None,
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
) -> FloatArray:
    """What a removed voxel becomes: ``[C, X, Y, Z]`` values for every voxel (``docs/trust.md``).

    ``"local_mean"``: per channel, the mean over tissue voxels at ``neighbourhood_mm`` to
    ``neighbourhood_mm + BASELINE_SHELL_MM`` from Ω (tissue: ``tissue``, else voxels where any
    channel is non-zero — z-scored background is exactly 0). ``"blur"``: ``x`` blurred with a
    Gaussian of σ = ``BASELINE_BLUR_MM`` per axis in mm.

    Raises
    ------
    ConfigurationError
        On an unknown baseline, or no tissue voxel in the shell.
    """
    x = np.asarray(x, dtype=np.float64)
    if baseline == "blur":
        sigma = [0.0, *(BASELINE_BLUR_MM / float(s) for s in spacing)]
        return np.asarray(ndimage.gaussian_filter(x, sigma, mode="nearest"))
    if baseline != "local_mean":
        raise ConfigurationError(f"baseline must be 'local_mean' or 'blur', got {baseline!r}")
    where = np.any(x != 0, axis=0) if tissue is None else np.asarray(tissue, dtype=bool)
    outer = neighbourhood_mm + BASELINE_SHELL_MM
    shell = ring_mask(np.asarray(domain, dtype=bool), spacing, (neighbourhood_mm, outer))
    shell &= where & ~neighbourhood(domain, spacing, neighbourhood_mm)
    if not shell.any():
        raise ConfigurationError(
            f"no tissue voxel between {neighbourhood_mm:g} and {outer:g} mm from the domain for "
            "the local_mean baseline; give a tissue mask or use baseline='blur'"
        )
    means = x[:, shell].mean(axis=1)
    return np.broadcast_to(means[:, None, None, None], x.shape).copy()


def voxel_order(
    saliency_map: FloatArray,
    x: FloatArray,
    base: FloatArray,
    region: BoolArray,
    tie_break: np.ndarray,
) -> np.ndarray:
    """Flat indices of ``region``'s voxels, most important first, by a map.

    A map ``[C, X, Y, Z]`` (instance SmoothGrad) ranks by ``Σ_k S_k · (x_k − b_k)``, the map's
    first-order prediction of the logit drop when the voxel is replaced by the baseline; a map
    ``[X, Y, Z]`` (Grad-CAM) by its value. Ties follow ``tie_break``, a permutation of the region's
    voxels (never raster order).
    """
    values = np.asarray(saliency_map, dtype=np.float64)
    if values.ndim == 4:
        score = (values * (np.asarray(x) - np.asarray(base))).sum(axis=0)
    elif values.ndim == 3:
        score = values
    else:
        raise ConfigurationError(f"a map must be [C, X, Y, Z] or [X, Y, Z], got {values.shape}")
    voxels = np.flatnonzero(region)
    ranked = np.lexsort((tie_break, -score.ravel()[voxels]))
    return voxels[ranked]


@dataclass(frozen=True)
class FaithfulnessResult:
    """Curves and per-lesion numbers of :func:`deletion_insertion`.

    Attributes
    ----------
    curves
        Tidy: ``order`` (a map's name or ``random``), ``seed`` (random orders; -1 otherwise),
        ``kind`` (``deletion``/``insertion``), ``fraction`` replaced, ``prob_mean``,
        ``logit_mean``.
    numbers
        ``deletion_auc`` … (see ``docs/trust.md``); map names other than ``smoothgrad`` add
        ``_<name>``.
    """

    curves: pd.DataFrame
    numbers: dict[str, float]


def _probability(logits: torch.Tensor, target: int, activation: str) -> torch.Tensor:
    channel = target_channel(target, logits.shape[1])
    if activation == "sigmoid" or logits.shape[1] == 1:
        return torch.sigmoid(logits[:, channel])
    return torch.softmax(logits, dim=1)[:, channel]


@dataclass(frozen=True)
class _Evaluator:
    """Runs the model on perturbed copies of the window and reads Ω's mean probability and logit."""

    model: nn.Module
    padding: tuple[int, ...]
    omega: torch.Tensor
    target: int
    activation: str
    batch_size: int

    def __call__(self, inputs: list[np.ndarray]) -> list[tuple[float, float]]:
        results: list[tuple[float, float]] = []
        device = model_device(self.model)
        with inference_state(self.model), torch.no_grad():
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start : start + self.batch_size]
                batch = torch.from_numpy(np.stack(chunk)).to(device=device, dtype=torch.float32)
                spatial = tuple(slice(0, n) for n in batch.shape[2:])
                if any(self.padding):
                    pairs = [amount for extra in reversed(self.padding) for amount in (0, extra)]
                    batch = F.pad(batch, pairs)
                logits = self.model(batch)[(slice(None), slice(None), *spatial)]
                probability = _probability(logits, self.target, self.activation)
                channel = target_channel(self.target, logits.shape[1])
                omega = self.omega.to(device)
                for b in range(len(chunk)):
                    results.append(
                        (
                            float(probability[b][omega].double().mean()),
                            float(logits[b, channel][omega].double().mean()),
                        )
                    )
        return results


def _curve_inputs(
    x: np.ndarray, base: np.ndarray, order: np.ndarray, kind: str, n_steps: int
) -> list[np.ndarray]:
    counts = np.linspace(0, order.size, n_steps + 1).round().astype(int)
    flat_x, flat_base = x.reshape(x.shape[0], -1), base.reshape(base.shape[0], -1)
    inputs = []
    for count in counts:
        if kind == "deletion":
            values = flat_x.copy()
            values[:, order[:count]] = flat_base[:, order[:count]]
        else:
            values = flat_x.copy()
            values[:, order[count:]] = flat_base[:, order[count:]]
        inputs.append(values.reshape(x.shape).astype(np.float32))
    return inputs


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2)


def _numbers(curves: pd.DataFrame, names: Sequence[str]) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for kind in ("deletion", "insertion"):
        for measure, suffix in (("prob_mean", ""), ("logit_mean", "_logit")):
            areas = {
                (order, seed): _area(group["fraction"].to_numpy(), group[measure].to_numpy())
                for (order, seed), group in curves[curves["kind"] == kind].groupby(
                    ["order", "seed"], sort=False
                )
            }
            random = [area for (order, _), area in areas.items() if order == "random"]
            numbers[f"{kind}_auc_random{suffix}"] = float(np.mean(random))
            numbers[f"{kind}_auc_random_sd{suffix}"] = (
                float(np.std(random, ddof=1)) if len(random) > 1 else float("nan")
            )
            for name in names:
                label = "" if name == "smoothgrad" else f"_{name}"
                area = areas[(name, -1)]
                numbers[f"{kind}_auc{label}{suffix}"] = area
                gain = (
                    numbers[f"{kind}_auc_random{suffix}"] - area
                    if kind == "deletion"
                    else area - numbers[f"{kind}_auc_random{suffix}"]
                )
                numbers[f"{kind}_gain{label}{suffix}"] = gain
    return numbers


def deletion_insertion(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    maps: Mapping[str, torch.Tensor | FloatArray],
    *,
    spacing: Sequence[float],
    baseline: Baseline = "local_mean",
    tissue: BoolArray | None = None,
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
    n_steps: int = 10,
    n_random: int = 3,
    seed: int = 0,
    target: int = 1,
    context: Context = "full",
    patch_size: int | Sequence[int] | None = None,
    size_divisibility: int | Sequence[int] | None = None,
    batch_size: int = 4,
) -> FaithfulnessResult:
    """Deletion and insertion curves of Ω's mean probability and logit, per map and random order.

    Parameters
    ----------
    model
        Any segmentation module; run in eval mode without gradients (modes restored, never
        modified). The model card's ``output_activation`` (``"softmax"`` by default, sigmoid for a
        single output) turns logits into the probability.
    x, domain
        One normalised subject ``[C, X, Y, Z]`` and Ω, a boolean ``[X, Y, Z]``.
    maps
        ``{name: map}``: instance SmoothGrad ``[C, X, Y, Z]`` (conventionally ``"smoothgrad"``)
        and/or Grad-CAM ``[X, Y, Z]`` (``"gradcam"``); the order each gives is
        :func:`voxel_order`'s.
    spacing
        Voxel size in mm.
    baseline, tissue
        What a removed voxel becomes (:func:`baseline_values`).
    neighbourhood_mm
        The voxels of ``N = Ω`` dilated by this radius (mm), within the model's window, are the
        ones replaced.
    n_steps
        Steps from none to all of ``N`` (``n_steps + 1`` points per curve).
    n_random, seed
        Random orders, seeded with ``(seed, i)``; ``seed`` also breaks ties of the maps' orders.
    target, context, patch_size, size_divisibility
        Which logit, and which forward pass: the whole volume or the patch around Ω, as in
        :func:`instasal.instance_smoothgrad`.
    batch_size
        Perturbed inputs per forward pass.

    Returns
    -------
    FaithfulnessResult
        The curves and the per-lesion areas and gains of ``docs/trust.md``.
    """
    if n_steps < 1 or n_random < 1 or batch_size < 1:
        raise ConfigurationError(
            f"n_steps, n_random and batch_size must be >= 1, got {n_steps}, {n_random}, "
            f"{batch_size}"
        )
    if not maps:
        raise ConfigurationError("maps is empty: give at least one map to rank the voxels by")
    tensor = as_input(x)
    omega = as_domain(domain, tuple(tensor.shape[1:])).numpy()
    volume = tensor.detach().cpu().double().numpy()
    base = baseline_values(
        volume, omega, spacing, baseline=baseline, tissue=tissue, neighbourhood_mm=neighbourhood_mm
    )
    (window,), divisibility = context_windows(
        model, [torch.from_numpy(omega)], context, patch_size, size_divisibility
    )
    crop = (slice(None), *window.slices)
    region = neighbourhood(omega, spacing, neighbourhood_mm)[window.slices]
    card = getattr(model, "card", None)
    evaluate = _Evaluator(
        model,
        tuple(end_padding(window.size, divisibility)),
        torch.from_numpy(omega[window.slices]),
        target,
        str(card.get("output_activation", "softmax")) if isinstance(card, dict) else "softmax",
        batch_size,
    )
    local_x, local_base = volume[crop], base[crop]
    n_region = int(region.sum())
    tie_break = np.random.default_rng([seed, 0]).permutation(n_region)
    orders: list[tuple[str, int, np.ndarray]] = []
    for name, saliency_map in maps.items():
        values = np.asarray(
            saliency_map.detach().cpu() if isinstance(saliency_map, torch.Tensor) else saliency_map
        )
        if values.shape[-3:] != omega.shape:
            raise ConfigurationError(
                f"map {name!r} has shape {values.shape}; expected [C, *{omega.shape}] or "
                f"{omega.shape}"
            )
        local = values[crop] if values.ndim == 4 else values[window.slices]
        orders.append((name, -1, voxel_order(local, local_x, local_base, region, tie_break)))
    voxels = np.flatnonzero(region)
    for i in range(n_random):
        orders.append(
            ("random", i, voxels[np.random.default_rng([seed, 1, i]).permutation(n_region)])
        )
    fractions = np.linspace(0, n_region, n_steps + 1).round() / n_region
    rows = []
    for name, order_seed, order in orders:
        for kind in ("deletion", "insertion"):
            points = evaluate(_curve_inputs(local_x, local_base, order, kind, n_steps))
            for fraction, (prob, logit) in zip(fractions, points, strict=True):
                rows.append((name, order_seed, kind, float(fraction), prob, logit))
    curves = pd.DataFrame(
        rows, columns=["order", "seed", "kind", "fraction", "prob_mean", "logit_mean"]
    )
    return FaithfulnessResult(curves, _numbers(curves, list(maps)))
