"""Deletion and insertion curves of one domain's maps against model-free orders (``docs/trust.md``).

The voxels of the neighbourhood ``N`` of Ω (or of ``N`` without Ω) are replaced by a baseline (all
channels of a voxel at once) in the order a map ranks them, and the model's mean probability and
mean target logit over Ω are followed. Deletion replaces the most important voxels first;
insertion starts from them all at the baseline and restores them most important first. Every map
is ranked by the same rules (its value; its value times ``x − b`` where the map has the input's
channels), and beside the maps stand orders that need no model: the first channel's brightness,
the distance from Ω and random permutations. A map is better than the image only when it moves the
output faster than the best of those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import ExplainedPass
from instasal.saliency.deployed import DeployedForward, deployed_forward
from instasal.saliency.inputs import as_domain, as_input, target_channel
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.summaries import ring_mask
from instasal.saliency.windows import context_windows, end_padding, padded_forward
from instasal.trust.similarity import NEIGHBOURHOOD_MM, neighbourhood
from instasal.typing import (
    BoolArray,
    DeletionBaseline,
    DomainLike,
    FloatArray,
    InputLike,
)

__all__ = [
    "BASELINE_BLUR_MM",
    "BASELINE_SHELL_MM",
    "DELETION_STEPS",
    "MODEL_FREE_ORDERS",
    "VARIANTS",
    "FaithfulnessResult",
    "WindowEvaluator",
    "baseline_values",
    "deletion_insertion",
    "map_orders",
    "model_free_orders",
    "voxel_order",
    "window_evaluator",
]

BASELINE_SHELL_MM = 5.0
"""Width of the tissue shell beyond ``N`` whose mean is the ``"local_mean"`` baseline."""
BASELINE_BLUR_MM = 5.0
"""σ (mm) of the Gaussian blur of the ``"blur"`` baseline."""
DELETION_STEPS = 50
"""Steps from none to all of the replaced voxels (each step replaces at most 2 % of them)."""
MODEL_FREE_ORDERS = ("brightness", "distance", "random")
"""Orders that need no model; a map must beat the best of them (``docs/trust.md``)."""
VARIANTS = {"": "neighbourhood", "_outside": "outside"}
"""Which voxels are replaced, by the suffix of their numbers: all of ``N``, or ``N`` without Ω."""


def baseline_values(
    x: FloatArray,
    domain: BoolArray,
    spacing: Sequence[float],
    *,
    baseline: DeletionBaseline = "local_mean",
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


def voxel_order(score: FloatArray, region: BoolArray, tie_break: np.ndarray) -> np.ndarray:
    """Flat indices of ``region``'s voxels by ``score`` ``[X, Y, Z]``, largest first.

    Ties follow ``tie_break``, a permutation of the region's voxels (never raster order).
    """
    voxels = np.flatnonzero(region)
    ranked = np.lexsort((tie_break, -np.asarray(score, dtype=np.float64).ravel()[voxels]))
    return voxels[ranked]


def map_orders(
    name: str, saliency_map: FloatArray, x: FloatArray, base: FloatArray
) -> dict[str, FloatArray]:
    """The scores by which a map ranks voxels, by order name (``docs/trust.md``).

    ``name``: the map's own value (a map ``[C, X, Y, Z]`` summed over channels, a map
    ``[X, Y, Z]`` as it is). ``name_times_delta``, for a map with the input's channels only:
    ``Σ_k S_k · (x_k − b_k)``, the map's first-order prediction of how much replacing the voxel
    lowers the target (undefined for a map without channels, such as Grad-CAM's).
    """
    values = np.asarray(saliency_map, dtype=np.float64)
    if values.ndim == 3:
        return {name: values}
    if values.ndim != 4:
        raise ConfigurationError(f"a map must be [C, X, Y, Z] or [X, Y, Z], got {values.shape}")
    scores: dict[str, FloatArray] = {name: values.sum(axis=0)}
    if values.shape[0] == np.asarray(x).shape[0]:
        scores[f"{name}_times_delta"] = (values * (np.asarray(x) - np.asarray(base))).sum(axis=0)
    return scores


def model_free_orders(
    x: FloatArray, domain: BoolArray, spacing: Sequence[float]
) -> dict[str, FloatArray]:
    """Scores that rank voxels without a model: ``brightness`` (the first channel's intensity,
    FLAIR in our models, brightest first) and ``distance`` (nearest Ω first, Ω itself first)."""
    distance = ndimage.distance_transform_edt(~np.asarray(domain, dtype=bool), sampling=spacing)
    return {"brightness": np.asarray(x, dtype=np.float64)[0], "distance": -np.asarray(distance)}


@dataclass(frozen=True)
class FaithfulnessResult:
    """Curves, per-lesion numbers and verdicts of :func:`deletion_insertion`.

    Attributes
    ----------
    curves
        Tidy: ``order`` (a map order such as ``smoothgrad`` or ``smoothgrad_times_delta``,
        ``brightness``, ``distance`` or ``random``), ``seed`` (random orders; -1 otherwise),
        ``variant`` (``neighbourhood`` or ``outside``), ``kind`` (``deletion``/``insertion``),
        ``fraction`` replaced, ``prob_mean``, ``logit_mean``.
    numbers
        ``<kind>_auc_<order><variant><measure>`` for every order (``random``: the mean over the
        random orders, ``random_sd`` their SD), ``<kind>_auc_model_free<variant><measure>`` (the
        best of :data:`MODEL_FREE_ORDERS`: the lowest deletion, the highest insertion area) and
        ``<kind>_gain_<order><variant><measure>`` for the map orders (the best model-free area
        minus the order's for deletion, the order's minus it for insertion; > 0: better than every
        model-free order). ``<variant>``: ``""`` (all of ``N``) or ``"_outside"`` (``N`` without
        Ω); ``<measure>``: ``""`` (probability) or ``"_logit"``.
    better_than_image
        ``{<order><variant>: bool}`` per map order: both logit gains above 0 (``docs/trust.md``).
    """

    curves: pd.DataFrame
    numbers: dict[str, float]
    better_than_image: dict[str, bool]


def _probability(logits: torch.Tensor, target: int, activation: str) -> torch.Tensor:
    channel = target_channel(target, logits.shape[1])
    if activation == "sigmoid" or logits.shape[1] == 1:
        return torch.sigmoid(logits[:, channel])
    return torch.softmax(logits, dim=1)[:, channel]


@dataclass(frozen=True, eq=False)
class _DeployedWindow:
    """The deployed prediction's logits on a window of the input: the window is placed in the
    unperturbed volume and the windows of the prediction that Ω depends on are blended."""

    forward: DeployedForward
    tiles: tuple[int, ...]
    volume: torch.Tensor
    slices: tuple[slice, ...]

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        whole = self.volume.to(batch.device, batch.dtype).expand(batch.shape[0], *self.volume.shape)
        whole = whole.clone()
        whole[(slice(None), slice(None), *self.slices)] = batch
        return self.forward.logits(whole, self.tiles)[(slice(None), slice(None), *self.slices)]


@dataclass(frozen=True)
class WindowEvaluator:
    """Runs the model on perturbed copies of a window and reads Ω's mean probability and logit.

    Called with a list of windows ``[C, *window]``, it returns ``(probability, logit)`` per window,
    each the mean over Ω's voxels (``omega``, on the window) of the target channel.
    """

    model: nn.Module
    padding: tuple[int, ...]
    omega: torch.Tensor
    target: int
    activation: str
    batch_size: int
    deployed: _DeployedWindow | None = None
    """In the deployed context: the prediction's windows, run on the whole volume with the
    window placed in it (the window holds everything Ω's logits depend on)."""

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.deployed is not None:
            return self.deployed.logits(batch)
        return padded_forward(self.model, batch, self.padding)

    def __call__(self, inputs: list[np.ndarray]) -> list[tuple[float, float]]:
        results: list[tuple[float, float]] = []
        device = model_device(self.model)
        with inference_state(self.model), torch.no_grad():
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start : start + self.batch_size]
                batch = torch.from_numpy(np.stack(chunk)).to(device=device, dtype=torch.float32)
                logits = self._logits(batch)
                # [B, K, |Ω|]: the activation is per voxel, so Ω's voxels alone suffice
                inside = logits[:, :, self.omega.to(device)]
                probability = _probability(inside, self.target, self.activation)
                channel = target_channel(self.target, logits.shape[1])
                for b in range(len(chunk)):
                    results.append(
                        (
                            float(probability[b].double().mean()),
                            float(inside[b, channel].double().mean()),
                        )
                    )
        return results


def window_evaluator(
    model: nn.Module,
    omega: BoolArray,
    *,
    explained: ExplainedPass | None = None,
    batch_size: int = 4,
    volume: InputLike | None = None,
) -> tuple[tuple[slice, ...], WindowEvaluator]:
    """The window saliency uses for Ω (its slices) and a :class:`WindowEvaluator` over it.

    The model card's ``output_activation`` (``"softmax"`` by default, sigmoid for a single
    output) turns logits into the probability. In the deployed context the window is the box
    of the input that the prediction windows holding Ω take in, and evaluating it needs the
    whole ``volume`` ``[C, X, Y, Z]`` around it.
    """
    mask = torch.from_numpy(np.asarray(omega))
    card = getattr(model, "card", None)
    activation = (
        str(card.get("output_activation", "softmax")) if isinstance(card, dict) else "softmax"
    )
    explained = explained or ExplainedPass()
    target = explained.target
    if explained.context == "deployed":
        if volume is None:
            raise ConfigurationError("the deployed context evaluates Ω in the whole volume")
        forward = deployed_forward(model, mask.shape, explained.patch_size)
        slices = forward.region(mask)
        placed = _DeployedWindow(forward, forward.covering(mask), as_input(volume), slices)
        evaluate = WindowEvaluator(
            model, (0,) * mask.ndim, mask[slices], target, activation, batch_size, placed
        )
        return slices, evaluate
    (window,), divisibility = context_windows(model, [mask], explained)
    slices = tuple(window.slices)
    evaluate = WindowEvaluator(
        model,
        tuple(end_padding(window.size, divisibility)),
        mask[slices],
        target,
        activation,
        batch_size,
    )
    return slices, evaluate


def _curve_inputs(
    x: np.ndarray, base: np.ndarray, order: np.ndarray, kind: str, n_steps: int
) -> list[np.ndarray]:
    counts = np.linspace(0, order.size, n_steps + 1).round().astype(int)
    flat_x, flat_base = x.reshape(x.shape[0], -1), base.reshape(base.shape[0], -1)
    inputs = []
    for count in counts:
        values = flat_x.copy()
        replaced = order[:count] if kind == "deletion" else order[count:]
        values[:, replaced] = flat_base[:, replaced]
        inputs.append(values.reshape(x.shape).astype(np.float32))
    return inputs


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) * np.diff(fractions)) / 2)


def _numbers(curves: pd.DataFrame, map_orders: Sequence[str]) -> dict[str, float]:
    numbers: dict[str, float] = {}
    for variant_suffix, variant in VARIANTS.items():
        for kind in ("deletion", "insertion"):
            rows = curves[(curves["kind"] == kind) & (curves["variant"] == variant)]
            for measure, measure_suffix in (("prob_mean", ""), ("logit_mean", "_logit")):
                tail = variant_suffix + measure_suffix
                areas = {
                    (order, seed): _area(group["fraction"].to_numpy(), group[measure].to_numpy())
                    for (order, seed), group in rows.groupby(["order", "seed"], sort=False)
                }
                random = [area for (order, _), area in areas.items() if order == "random"]
                numbers[f"{kind}_auc_random{tail}"] = float(np.mean(random))
                numbers[f"{kind}_auc_random_sd{tail}"] = (
                    float(np.std(random, ddof=1)) if len(random) > 1 else float("nan")
                )
                for order in MODEL_FREE_ORDERS[:-1]:
                    numbers[f"{kind}_auc_{order}{tail}"] = areas[(order, -1)]
                free = [numbers[f"{kind}_auc_{order}{tail}"] for order in MODEL_FREE_ORDERS]
                best = min(free) if kind == "deletion" else max(free)
                numbers[f"{kind}_auc_model_free{tail}"] = best
                for order in map_orders:
                    area = areas[(order, -1)]
                    numbers[f"{kind}_auc_{order}{tail}"] = area
                    gain = best - area if kind == "deletion" else area - best
                    numbers[f"{kind}_gain_{order}{tail}"] = gain
    return numbers


def _better_than_image(numbers: Mapping[str, float], map_orders: Sequence[str]) -> dict[str, bool]:
    return {
        f"{order}{suffix}": bool(
            numbers[f"deletion_gain_{order}{suffix}_logit"] > 0
            and numbers[f"insertion_gain_{order}{suffix}_logit"] > 0
        )
        for order in map_orders
        for suffix in VARIANTS
    }


def _as_array(saliency_map: torch.Tensor | FloatArray) -> np.ndarray:
    if isinstance(saliency_map, torch.Tensor):
        return saliency_map.detach().cpu().double().numpy()
    return np.asarray(saliency_map, dtype=np.float64)


def _orders(
    scores: Mapping[str, np.ndarray], region: np.ndarray, n_random: int, seed: int, variant: int
) -> list[tuple[str, int, np.ndarray]]:
    """Every scored order and ``n_random`` random ones over ``region``; ties and random orders
    from generators seeded with ``(seed, ·, variant)``."""
    n_region = int(region.sum())
    tie_break = np.random.default_rng([seed, 0, variant]).permutation(n_region)
    orders = [(name, -1, voxel_order(score, region, tie_break)) for name, score in scores.items()]
    voxels = np.flatnonzero(region)
    for i in range(n_random):
        permutation = np.random.default_rng([seed, 1, i, variant]).permutation(n_region)
        orders.append(("random", i, voxels[permutation]))
    return orders


def deletion_insertion(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    maps: Mapping[str, torch.Tensor | FloatArray],
    *,
    spacing: Sequence[float],
    baseline: DeletionBaseline = "local_mean",
    tissue: BoolArray | None = None,
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
    n_steps: int = DELETION_STEPS,
    n_random: int = 3,
    seed: int = 0,
    explained: ExplainedPass | None = None,
    batch_size: int = 4,
) -> FaithfulnessResult:
    """Deletion and insertion curves of Ω's mean probability and logit, per order and variant.

    Parameters
    ----------
    model
        Any segmentation module; run in eval mode without gradients (modes restored, never
        modified). The model card's ``output_activation`` (``"softmax"`` by default, sigmoid for a
        single output) turns logits into the probability.
    x, domain
        One normalised subject ``[C, X, Y, Z]`` and Ω, a boolean ``[X, Y, Z]``.
    maps
        ``{name: map}``: instance SmoothGrad ``[C, X, Y, Z]`` (conventionally ``"smoothgrad"``),
        Grad-CAM ``[X, Y, Z]`` (``"gradcam"``), or any other map to test; each gives the orders
        of :func:`map_orders`. Names must differ from :data:`MODEL_FREE_ORDERS`.
    spacing
        Voxel size in mm.
    baseline, tissue
        What a removed voxel becomes (:func:`baseline_values`).
    neighbourhood_mm
        The voxels of ``N = Ω`` dilated by this radius (mm), within the model's window, are the
        ones replaced (variant ``neighbourhood``); variant ``outside`` replaces ``N`` without Ω.
    n_steps
        Steps from none to all of the replaced voxels (``n_steps + 1`` points per curve).
    n_random, seed
        Random orders, seeded with ``(seed, i)``; ``seed`` also breaks ties of the other orders.
    explained
        Which logit, and which forward pass (:class:`instasal.saliency.ExplainedPass`; ``None``:
        the whole volume's lesion logit), as the maps were computed.
    batch_size
        Perturbed inputs per forward pass.

    Returns
    -------
    FaithfulnessResult
        The curves, the per-lesion areas and gains and the verdicts of ``docs/trust.md``.
    """
    if n_steps < 1 or n_random < 1 or batch_size < 1:
        raise ConfigurationError(
            f"n_steps, n_random and batch_size must be >= 1, got {n_steps}, {n_random}, "
            f"{batch_size}"
        )
    if not maps:
        raise ConfigurationError("maps is empty: give at least one map to rank the voxels by")
    reserved = set(maps) & set(MODEL_FREE_ORDERS)
    if reserved:
        raise ConfigurationError(f"map names may not be {sorted(reserved)}: model-free orders")
    tensor = as_input(x)
    omega = as_domain(domain, tuple(tensor.shape[1:])).numpy()
    volume = tensor.detach().cpu().double().numpy()
    base = baseline_values(
        volume, omega, spacing, baseline=baseline, tissue=tissue, neighbourhood_mm=neighbourhood_mm
    )
    slices, evaluate = window_evaluator(
        model,
        omega,
        explained=explained,
        batch_size=batch_size,
        volume=volume,
    )
    crop = (slice(None), *slices)
    near = neighbourhood(omega, spacing, neighbourhood_mm)[slices]
    local_x, local_base = volume[crop], base[crop]
    scores: dict[str, np.ndarray] = {}
    for name, saliency_map in maps.items():
        values = _as_array(saliency_map)
        if values.shape[-3:] != omega.shape or values.ndim not in (3, 4):
            raise ConfigurationError(
                f"map {name!r} has shape {values.shape}; expected [C, *{omega.shape}] or "
                f"{omega.shape}"
            )
        local = values[crop] if values.ndim == 4 else values[slices]
        scores |= map_orders(name, local, local_x, local_base)
    map_order_names = list(scores)
    scores |= model_free_orders(local_x, omega[slices], spacing)
    rows = []
    regions = {"neighbourhood": near, "outside": near & ~omega[slices]}
    if not regions["outside"].any():
        raise ConfigurationError(
            f"no voxel of the window lies within {neighbourhood_mm:g} mm of the domain outside "
            "it; give a larger neighbourhood_mm"
        )
    for index, (variant, region) in enumerate(regions.items()):
        fractions = np.linspace(0, region.sum(), n_steps + 1).round() / region.sum()
        for name, order_seed, order in _orders(scores, region, n_random, seed, index):
            for kind in ("deletion", "insertion"):
                points = evaluate(_curve_inputs(local_x, local_base, order, kind, n_steps))
                for fraction, (prob, logit) in zip(fractions, points, strict=True):
                    rows.append((name, order_seed, variant, kind, float(fraction), prob, logit))
    curves = pd.DataFrame(
        rows,
        columns=["order", "seed", "variant", "kind", "fraction", "prob_mean", "logit_mean"],
    )
    numbers = _numbers(curves, map_order_names)
    return FaithfulnessResult(curves, numbers, _better_than_image(numbers, map_order_names))
