"""Model-randomisation sanity check of instance saliency (Adebayo et al. 2018; ``docs/trust.md``).

The maps of one domain Ω are recomputed on deep copies of the model whose parameter blocks are
replaced by random weights, cascading from the output towards the input and one block at a time,
each step with several random seeds. The trained map is compared with every randomised map, and
the randomised maps with each other: their similarities are the null, what two maps share when
they share the input, the architecture and the domain but not the randomised weights. The trained
map has changed when it lies outside that null. The model given is never modified.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import ExplainedPass, GradCamConfig, SmoothGradConfig
from instasal.saliency.deployed import deployed_forward
from instasal.saliency.gradcam import InstanceGradCam
from instasal.saliency.inputs import as_domain, as_input
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.smoothgrad import InstanceSmoothGrad
from instasal.saliency.windows import context_windows, end_padding
from instasal.trust.profiles import sign_rings
from instasal.trust.similarity import (
    NEIGHBOURHOOD_MM,
    SIMILARITY_MEASURES,
    map_similarity,
    neighbourhood,
    omega_mean,
    peak_ratio,
)
from instasal.typing import DomainLike, InputLike, RandomisationMode

__all__ = [
    "COHORT_PASS_SHARE",
    "IDENTICAL",
    "NULL_SEEDS",
    "REGIONS",
    "VERDICT_MEASURES",
    "VERDICT_REGION",
    "MapMethod",
    "RandomisationResult",
    "Randomiser",
    "compare_with_null",
    "layer_blocks",
    "matched_normal",
    "noise_seed",
    "parameter_layers",
    "randomisation",
    "randomised_copy",
]

NULL_SEEDS = 3
"""Randomised copies per step (seeds); their pairwise similarities form the null."""
REGIONS = ("near", "window")
"""Where maps are compared: the neighbourhood ``N`` of Ω, and the whole explained window."""
VERDICT_REGION = "near"
VERDICT_MEASURES = ("spearman_abs", "ssim")
"""A map has changed at a step when, in :data:`VERDICT_REGION`, it lies outside the null by
each of these measures (``docs/trust.md``)."""
COHORT_PASS_SHARE = 0.9
"""A method passes on a cohort when at least this share of its lesions passes."""

Randomiser = Callable[[nn.Module, torch.Generator], None]
"""``randomise(module, generator)``: replace the module's own parameters in place."""


def matched_normal(module: nn.Module, generator: torch.Generator) -> None:
    """Replace each own parameter by normal draws with that tensor's mean and standard deviation.

    A one-element parameter keeps its value (its standard deviation is undefined). Draws are made
    on the CPU from ``generator`` and moved to the parameter's device and dtype.
    """
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            if parameter.numel() < 2:
                continue
            values = parameter.detach().double()
            mean, std = values.mean(), values.std(unbiased=False)
            draws = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((mean.cpu() + std.cpu() * draws).to(parameter))


def parameter_layers(model: nn.Module, batch: torch.Tensor) -> list[str]:
    """Names of the modules holding parameters of their own, in the order a forward pass runs them.

    One forward pass of ``batch`` ``[1, C, *S]`` (no gradients, eval mode, modes restored) records
    the first call of each such module; the hooks are removed afterwards, also after an exception.
    Modules the forward pass never calls are left out. A TorchScript module takes no hooks: its
    modules are listed in the order they were registered (for a sequential network the order
    of the forward pass; for others an approximation the blocks of :func:`layer_blocks` inherit).
    """
    modules = dict(model.named_modules())
    names = [
        name for name, module in modules.items() if any(True for _ in module.parameters(False))
    ]
    if isinstance(model, torch.jit.ScriptModule):
        return names
    order: list[str] = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in order:
                order.append(name)

        return hook

    handles = [modules[name].register_forward_hook(recorder(name)) for name in names]
    try:
        with inference_state(model), torch.no_grad():
            model(batch.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return order


def layer_blocks(layers: Sequence[str], steps: int | None) -> list[tuple[str, ...]]:
    """The layers (input to output) grouped into blocks from the output: block 0 is the last.

    ``steps=None``: one block per layer; else ``steps`` contiguous blocks of near-equal size (the
    blocks nearer the output take the remainder).
    """
    if not layers:
        raise ConfigurationError("the model has no layer with parameters to randomise")
    reverse = list(reversed(layers))
    count = len(reverse) if steps is None else steps
    if count < 1:
        raise ConfigurationError(f"steps must be >= 1, got {steps}")
    count = min(count, len(reverse))
    bounds = np.linspace(0, len(reverse), count + 1).round().astype(int)
    return [tuple(reverse[a:b]) for a, b in itertools.pairwise(bounds)]


def _block_generator(seed: int, block: int, draw: int = 0) -> torch.Generator:
    words = [seed, block] if draw == 0 else [seed, block, draw]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _deep_copy(model: nn.Module) -> nn.Module:
    """An independent copy; a TorchScript module through save and load (its ``deepcopy`` gives
    parameters that are no longer leaves, so gradients cannot be switched off on them)."""
    if not isinstance(model, torch.jit.ScriptModule):
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    duplicate = torch.jit.load(buffer, map_location=model_device(model))
    duplicate.train(model.training)
    return duplicate


def randomised_copy(
    model: nn.Module,
    blocks: Sequence[Sequence[str]],
    indices: Sequence[int],
    *,
    seed: int = 0,
    draw: int = 0,
    randomise: Randomiser = matched_normal,
) -> nn.Module:
    """A deep copy of ``model`` with the blocks ``indices`` of ``blocks`` randomised.

    Block ``g`` of random draw ``k`` is randomised with a generator seeded with ``(seed, g, k)``
    (``(seed, g)`` for ``k = 0``): the same random weights whichever other blocks are randomised
    with it, and independent weights for each draw.
    """
    duplicate = _deep_copy(model)
    modules = dict(duplicate.named_modules())
    for index in indices:
        generator = _block_generator(seed, index, draw)
        for name in blocks[index]:
            randomise(modules[name], generator)
    return duplicate


MapMethod = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor | np.ndarray]
"""``method(model, x, omega, noise_seed)``: one domain's map, ``[C, X, Y, Z]`` or ``[X, Y, Z]``
(a method without noise ignores the seed)."""


@dataclass(frozen=True)
class RandomisationResult:
    """The outcome of :func:`randomisation` for one domain.

    Attributes
    ----------
    table
        One row per method, mode, step and region: ``method``, ``mode`` (``"cascading"`` or
        ``"independent"``), ``step`` (1…n), ``region`` (``"near"``: the neighbourhood of Ω;
        ``"window"``: the explained window), ``layers`` (the block's layer names, ``;``-joined);
        per measure ``m`` of :data:`~instasal.trust.similarity.SIMILARITY_MEASURES`: ``m``
        (median over the randomised copies of their similarity to the trained map), ``m_min``
        (the smallest of them), ``m_null_min`` and ``m_null_max`` (the range of the randomised
        maps' similarities to each other), ``m_ceiling`` (the trained map's similarity to its
        repeat), ``m_above_null`` and ``m_null_at_ceiling`` (:func:`compare_with_null`);
        ``peak_ratio`` (median of
        ``max|randomised| / max|trained|``), ``omega_mean_trained`` and ``omega_mean_random``
        (the first channel's mean over Ω; median over copies), ``same_sign`` (share of copies
        whose mean over Ω has the trained map's sign), ``same_sign_null`` (share of pairs of
        copies with one sign) and ``changed`` (change shown by every measure of
        :data:`VERDICT_MEASURES`).
    blocks
        The blocks of layers, nearest the output first.
    slices
        For the report: ``{(method, step): 2D slice}`` of ``|map|`` (channel 0) through Ω's centre
        along the last axis, step 0 the trained model, cascading steps after it (first seed).
    rings
        The sign pattern against its null: one row per method, map and place, ``method``,
        ``map`` (``"trained"``, or ``"random"`` for a copy at the last cascading step, every
        block random), ``copy`` (0 for the trained map, 1… the copies), ``place`` (``inside``,
        ``ring_0_2mm`` … ``ring_6_8mm``) and ``relative`` (:func:`~instasal.trust.sign_rings`:
        the first channel's mean there over its largest magnitude within 8 mm). Empty without
        the cascading mode.
    """

    table: pd.DataFrame
    blocks: list[tuple[str, ...]]
    slices: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    rings: pd.DataFrame = field(default_factory=pd.DataFrame)

    def verdict(self, method: str) -> dict[str, Any]:
        """``passes`` (changed at the last cascading step) and ``crossing_step`` (first such step,
        ``None`` when never) for one method, in :data:`VERDICT_REGION` (``docs/trust.md``)."""
        table = self.table
        rows = table[
            (table["method"] == method)
            & (table["mode"] == "cascading")
            & (table["region"] == VERDICT_REGION)
        ]
        if rows.empty:
            raise ConfigurationError(f"no randomisation results for method {method!r}")
        changed = rows.sort_values("step")
        crossed = changed.loc[changed["changed"], "step"]
        return {
            "passes": bool(changed["changed"].iloc[-1]),
            "crossing_step": int(crossed.iloc[0]) if not crossed.empty else None,
        }

    def ring_columns(self, method: str) -> dict[str, float]:
        """The sign pattern of one method as lesion-table columns: ``sign_<place>_<method>``
        (the trained map) and ``sign_<place>_<method>_random`` (the median over the fully
        randomised copies), places as in :attr:`rings`; empty without the cascading mode."""
        if self.rings.empty:
            return {}
        rows = self.rings[self.rings["method"] == method]
        columns: dict[str, float] = {}
        for place, group in rows.groupby("place", sort=False):
            trained = group.loc[group["map"] == "trained", "relative"]
            random = group.loc[group["map"] == "random", "relative"].dropna()
            columns[f"sign_{place}_{method}"] = float(trained.iloc[0])
            columns[f"sign_{place}_{method}_random"] = (
                float(random.median()) if not random.empty else float("nan")
            )
        return columns


IDENTICAL = 1e-6
"""Similarities closer than this count as equal (floating-point rounding of identical maps)."""


def _sign(value: float) -> float:
    return float(np.sign(value))


def compare_with_null(
    trained: np.ndarray,
    repeat: np.ndarray,
    randomised: Sequence[np.ndarray],
    region: np.ndarray,
    omega: np.ndarray,
) -> dict[str, Any]:
    """Where the trained map lies against the null of the randomised maps, in ``region``.

    Three kinds of pairs, every map drawn with its own noise seed: the trained map and its
    ``repeat`` (the same model, another noise seed: the **ceiling**, how alike two maps of one
    model are); the randomised maps with each other (the **null**: maps that share the input, the
    architecture, the domain and the weights not randomised, and nothing else); the trained map
    with each randomised map. By a measure the trained map **lies above the null** when each of its
    similarities to the randomised maps exceeds every similarity two randomised maps have (a
    one-sided rank test: were the trained map one more random draw, all its similarities would
    rank above all of the null's with probability 1/20 for three copies); the **null reaches the
    ceiling** when the largest similarity of two randomised maps is not below the ceiling (less
    :data:`IDENTICAL`): randomising the weights moves the map no more than its own noise does. A
    measure shows change when neither holds. A rank correlation with an all-zero map is NaN, and
    shows no change; two all-zero maps are identical (SSIM 1): a map that vanishes under
    randomisation is no evidence that it depends on the weights. See :class:`RandomisationResult`
    for the keys.

    Raises
    ------
    ConfigurationError
        With fewer than two randomised maps (no pair, no null).
    """
    if len(randomised) < 2:
        raise ConfigurationError(f"the null needs >= 2 randomised maps, got {len(randomised)}")
    ceiling = map_similarity(repeat, trained, region)
    against = [map_similarity(candidate, trained, region) for candidate in randomised]
    null = [map_similarity(a, b, region) for a, b in itertools.combinations(randomised, 2)]
    row: dict[str, Any] = {}
    for measure in SIMILARITY_MEASURES:
        values = np.array([s[measure] for s in against])
        null_values = np.array([s[measure] for s in null])
        row[measure] = float(np.median(values))
        row[f"{measure}_min"] = float(np.min(values))
        row[f"{measure}_null_min"] = float(np.min(null_values))
        row[f"{measure}_null_max"] = float(np.max(null_values))
        row[f"{measure}_ceiling"] = ceiling[measure]
        row[f"{measure}_above_null"] = bool(row[f"{measure}_min"] > row[f"{measure}_null_max"])
        row[f"{measure}_null_at_ceiling"] = not (
            row[f"{measure}_null_max"] < ceiling[measure] - IDENTICAL
        )
    trained_sign = _sign(omega_mean(trained, omega))
    signs = [_sign(omega_mean(candidate, omega)) for candidate in randomised]
    row["peak_ratio"] = float(np.median([peak_ratio(c, trained) for c in randomised]))
    row["omega_mean_trained"] = omega_mean(trained, omega)
    row["omega_mean_random"] = float(np.median([omega_mean(c, omega) for c in randomised]))
    row["same_sign"] = float(np.mean([sign == trained_sign for sign in signs]))
    pairs = list(itertools.combinations(signs, 2))
    row["same_sign_null"] = float(np.mean([a == b for a, b in pairs]))
    row["changed"] = not any(
        row[f"{measure}_above_null"] or row[f"{measure}_null_at_ceiling"]
        for measure in VERDICT_MEASURES
    )
    return row


def noise_seed(seed: int, draw: int) -> int:
    """The noise seed of map ``draw`` (1 the trained map's repeat, 2… the randomised copies)."""
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def _first_window(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, explained: ExplainedPass
) -> tuple[tuple[slice, ...], torch.Tensor]:
    """The explained window of Ω (slices) and the input batch a forward pass over it takes.

    In the deployed context the window is the box the prediction windows holding Ω take in, and
    the batch one patch around Ω (the layers of one window's forward pass are those of all)."""
    if explained.context == "deployed":
        region = deployed_forward(model, mask.shape, explained.patch_size).region(mask)
        _, batch = _first_window(model, x, mask, replace(explained, context="patch"))
        return region, batch
    (window,), divisibility = context_windows(model, [mask], explained)
    batch = window.crop(x.detach()).unsqueeze(0)
    padding = end_padding(window.size, divisibility)
    pairs = [amount for extra in reversed(padding) for amount in (0, extra)]
    padded = torch.nn.functional.pad(batch, pairs) if any(padding) else batch
    return tuple(window.slices), padded


def _centre_slice(saliency_map: np.ndarray, region: np.ndarray, mask: np.ndarray) -> np.ndarray:
    channel = np.abs(saliency_map if saliency_map.ndim == 3 else saliency_map[0])
    centre = round(float(np.nonzero(mask)[2].mean()))
    rows, columns = np.nonzero(region[:, :, centre])
    return channel[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1, centre]


def _methods(
    model: nn.Module,
    smoothgrad: SmoothGradConfig,
    gradcam: GradCamConfig | None,
    explained: ExplainedPass,
    extra: Mapping[str, MapMethod],
) -> dict[str, MapMethod]:
    """SmoothGrad, Grad-CAM when configured (its layer named for ``model``), and ``extra``."""

    def smoothgrad_map(
        net: nn.Module, x: torch.Tensor, mask: torch.Tensor, seed: int
    ) -> torch.Tensor:
        method = InstanceSmoothGrad(net, replace(smoothgrad, seed=seed))
        return method.attribute(x, {0: mask}, explained)[0]

    methods: dict[str, MapMethod] = {"smoothgrad": smoothgrad_map}
    if gradcam is not None:
        resolved = replace(gradcam, layer=gradcam.layer_of(model))

        def gradcam_map(
            net: nn.Module, x: torch.Tensor, mask: torch.Tensor, seed: int
        ) -> torch.Tensor:
            return InstanceGradCam(net, resolved).attribute(x, {0: mask}, explained)[0]

        methods["gradcam"] = gradcam_map
    clash = set(extra) & set(methods)
    if clash:
        raise ConfigurationError(f"methods may not reuse the names {sorted(clash)}")
    return methods | dict(extra)


def _compute(
    methods: Mapping[str, MapMethod],
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    seed: int,
) -> dict[str, np.ndarray]:
    maps = {name: method(model, x, mask, seed) for name, method in methods.items()}
    return {
        name: (m.detach().cpu().double().numpy() if isinstance(m, torch.Tensor) else np.asarray(m))
        for name, m in maps.items()
    }


def randomisation(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    *,
    spacing: Sequence[float],
    smoothgrad: SmoothGradConfig | None = None,
    gradcam: GradCamConfig | None = None,
    explained: ExplainedPass | None = None,
    methods: Mapping[str, MapMethod] | None = None,
    steps: int | None = None,
    modes: Sequence[RandomisationMode] = ("cascading", "independent"),
    null_seeds: int = NULL_SEEDS,
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
    seed: int = 0,
    randomise: Randomiser = matched_normal,
) -> RandomisationResult:
    """Cascading and independent model randomisation of one domain's maps, against a null.

    Parameters
    ----------
    model
        Any segmentation module (as for :func:`instasal.instance_smoothgrad`). Never modified: every
        step works on deep copies.
    x, domain
        One normalised subject ``[C, X, Y, Z]`` and Ω, a boolean ``[X, Y, Z]``.
    spacing
        Voxel size in mm (for the neighbourhood of Ω).
    smoothgrad
        Instance SmoothGrad settings (default: :class:`~instasal.saliency.SmoothGradConfig`'s).
    gradcam
        Instance Grad-CAM++ (or Grad-CAM) settings, checked alongside (``layer=None``:
        ``model.card["gradcam_layer"]``); ``None``: Grad-CAM is left out.
    explained
        The forward pass and target of both methods' maps (``None``: the whole volume's lesion
        logit, :class:`~instasal.saliency.ExplainedPass`); its window is the checked window.
    methods
        Further map methods by name, ``method(model, x, omega, noise_seed) -> map``, checked the
        same way: a map that ignores the model (the input itself, a distance map) is the negative
        control.
    steps
        Number of blocks the layers are grouped in (see :func:`layer_blocks`); ``None``: one per
        layer.
    modes
        ``"cascading"`` (blocks randomised from the output down, accumulating) and/or
        ``"independent"`` (each block alone).
    null_seeds
        Randomised copies per step (at least 2): the trained map is compared with each, and they
        with each other (the null). Every map has its own SmoothGrad noise seed
        (:func:`noise_seed`; the trained map the config's), and the trained map is recomputed
        once with another (the ceiling).
    neighbourhood_mm
        Radius of the neighbourhood of Ω (region ``"near"``).
    seed
        Seeds the random weights (block ``g`` of copy ``k`` with ``(seed, g, k)``).
    randomise
        How a module's parameters are randomised (default :func:`matched_normal`).

    Returns
    -------
    RandomisationResult
        The per-step table (:func:`compare_with_null` in each region) and the verdict per method.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1))
    >>> x = torch.randn(2, 12, 12, 12)
    >>> omega = torch.zeros(12, 12, 12, dtype=torch.bool)
    >>> omega[5:7, 5:7, 5:7] = True
    >>> config = SmoothGradConfig(n_samples=2)
    >>> result = randomisation(
    ...     net, x, omega, spacing=(1, 1, 1), smoothgrad=config, modes=("cascading",)
    ... )
    >>> result.table[["step", "region"]].values.tolist()
    [[1, 'near'], [1, 'window'], [2, 'near'], [2, 'window']]
    """
    config = smoothgrad or SmoothGradConfig()
    unknown = set(modes) - {"cascading", "independent"}
    if unknown or not modes:
        raise ConfigurationError(
            f"modes must hold 'cascading' and/or 'independent', got {tuple(modes)}"
        )
    if null_seeds < 2:
        raise ConfigurationError(f"null_seeds must be >= 2, got {null_seeds}")
    x = as_input(x)
    mask = as_domain(domain, tuple(x.shape[1:]))
    omega = mask.numpy()
    explained = explained or ExplainedPass()
    window_slices, batch = _first_window(model, x, mask, explained)
    window = np.zeros(omega.shape, dtype=bool)
    window[window_slices] = True
    regions = {"near": neighbourhood(omega, spacing, neighbourhood_mm) & window, "window": window}
    map_methods = _methods(model, config, gradcam, explained, methods or {})
    blocks = layer_blocks(parameter_layers(model, batch), steps)
    trained = _compute(map_methods, model, x, mask, config.seed)
    repeat = _compute(map_methods, model, x, mask, noise_seed(config.seed, 1))
    slices = {(name, 0): _centre_slice(m, regions["near"], omega) for name, m in trained.items()}
    rows = []
    rings = [_rings(trained, omega, spacing, "trained", 0)]
    for mode in modes:
        for step in range(1, len(blocks) + 1):
            indices = list(range(step)) if mode == "cascading" else [step - 1]
            randomised = [
                _compute(
                    map_methods,
                    randomised_copy(
                        model, blocks, indices, seed=seed, draw=draw, randomise=randomise
                    ),
                    x,
                    mask,
                    noise_seed(config.seed, 2 + draw),
                )
                for draw in range(null_seeds)
            ]
            for name in map_methods:
                candidates = [maps[name] for maps in randomised]
                for region_name in REGIONS:
                    compared = compare_with_null(
                        trained[name], repeat[name], candidates, regions[region_name], omega
                    )
                    keys = {"method": name, "mode": mode, "step": step, "region": region_name}
                    rows.append(keys | {"layers": ";".join(blocks[step - 1])} | compared)
                if mode == "cascading":
                    slices[(name, step)] = _centre_slice(candidates[0], regions["near"], omega)
            if mode == "cascading" and step == len(blocks):
                rings += [
                    _rings(maps, omega, spacing, "random", copy)
                    for copy, maps in enumerate(randomised, start=1)
                ]
    ring_table = pd.concat(rings, ignore_index=True) if "cascading" in modes else pd.DataFrame()
    return RandomisationResult(pd.DataFrame(rows), blocks, slices, ring_table)


def _rings(
    maps: Mapping[str, np.ndarray],
    omega: np.ndarray,
    spacing: Sequence[float],
    kind: str,
    copy: int,
) -> pd.DataFrame:
    """:func:`~instasal.trust.sign_rings` of each method's map as rows of
    :attr:`RandomisationResult.rings`."""
    return pd.DataFrame(
        [
            {"method": name, "map": kind, "copy": copy, "place": place, "relative": value}
            for name, saliency_map in maps.items()
            for place, value in sign_rings(saliency_map, omega, spacing).items()
        ]
    )
