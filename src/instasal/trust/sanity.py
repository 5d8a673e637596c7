"""Model-randomisation sanity check of instance saliency (Adebayo et al. 2018; ``docs/trust.md``).

The maps of one domain Ω are recomputed on deep copies of the model whose parameter blocks are
replaced by random weights, cascading from the output towards the input and one block at a time,
and compared with the trained model's maps inside the neighbourhood of Ω. The model given is never
modified.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import GradCamConfig, SmoothGradConfig
from instasal.saliency.gradcam import instance_gradcam_many
from instasal.saliency.inputs import as_domain, as_input
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.smoothgrad import instance_smoothgrad_many
from instasal.saliency.windows import context_windows, end_padding
from instasal.trust.similarity import NEIGHBOURHOOD_MM, map_similarity, neighbourhood
from instasal.typing import DomainLike, InputLike

__all__ = [
    "COHORT_PASS_SHARE",
    "RANDOMISATION_THRESHOLD",
    "RandomisationResult",
    "Randomiser",
    "layer_blocks",
    "matched_normal",
    "parameter_layers",
    "randomisation",
    "randomised_copy",
]

RANDOMISATION_THRESHOLD = 0.5
"""A map has changed at a step when both its Spearman correlation and SSIM are below this."""
COHORT_PASS_SHARE = 0.9
"""A method passes on a cohort when at least this share of its lesions passes."""

Randomiser = Callable[[nn.Module, torch.Generator], None]
"""``randomise(module, generator)``: replace the module's own parameters in place."""
Mode = Literal["cascading", "independent"]


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


def _block_generator(seed: int, block: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
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
    randomise: Randomiser = matched_normal,
) -> nn.Module:
    """A deep copy of ``model`` with the blocks ``indices`` of ``blocks`` randomised.

    Block ``g`` is randomised with a generator seeded with ``(seed, g)``: the same random weights
    whichever other blocks are randomised with it.
    """
    duplicate = _deep_copy(model)
    modules = dict(duplicate.named_modules())
    for index in indices:
        generator = _block_generator(seed, index)
        for name in blocks[index]:
            randomise(modules[name], generator)
    return duplicate


@dataclass(frozen=True)
class RandomisationResult:
    """The outcome of :func:`randomisation` for one domain.

    Attributes
    ----------
    table
        One row per method, mode and step: ``method``, ``mode`` (``"cascading"`` or
        ``"independent"``), ``step`` (1…n), ``layers`` (the block's layer names, ``;``-joined),
        ``spearman``, ``ssim``, ``peak_ratio``, ``changed``.
    blocks
        The blocks of layers, nearest the output first.
    slices
        For the report: ``{(method, step): 2D slice}`` of ``|map|`` (channel 0) through Ω's centre
        along the last axis, step 0 the trained model, cascading steps after it.
    """

    table: pd.DataFrame
    blocks: list[tuple[str, ...]]
    slices: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def verdict(self, method: str) -> dict[str, Any]:
        """``passes`` (changed at the last cascading step) and ``crossing_step`` (first such step,
        ``None`` when never) for one method (rule of ``docs/trust.md``)."""
        rows = self.table[(self.table["method"] == method) & (self.table["mode"] == "cascading")]
        if rows.empty:
            raise ConfigurationError(f"no randomisation results for method {method!r}")
        changed = rows.sort_values("step")
        crossed = changed.loc[changed["changed"], "step"]
        return {
            "passes": bool(changed["changed"].iloc[-1]),
            "crossing_step": int(crossed.iloc[0]) if not crossed.empty else None,
        }


def _has_changed(similarity: Mapping[str, float]) -> bool:
    if similarity["peak_ratio"] == 0:
        return True
    spearman, ssim = similarity["spearman"], similarity["ssim"]
    return bool(spearman < RANDOMISATION_THRESHOLD and ssim < RANDOMISATION_THRESHOLD)


@dataclass(frozen=True)
class _Maps:
    """What is recomputed at every step: the SmoothGrad map and, when configured, Grad-CAM's."""

    smoothgrad: SmoothGradConfig
    gradcam: GradCamConfig | None

    def compute(self, model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        maps = {"smoothgrad": instance_smoothgrad_many(model, x, {0: mask}, self.smoothgrad)[0]}
        if self.gradcam is not None:
            maps["gradcam"] = instance_gradcam_many(model, x, {0: mask}, self.gradcam)[0]
        return {name: m.detach().cpu().double().numpy() for name, m in maps.items()}


def _first_window_batch(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, config: SmoothGradConfig
) -> torch.Tensor:
    (window,), divisibility = context_windows(
        model, [mask], config.context, config.patch_size, config.size_divisibility
    )
    batch = window.crop(x.detach()).unsqueeze(0)
    padding = end_padding(window.size, divisibility)
    pairs = [amount for extra in reversed(padding) for amount in (0, extra)]
    return torch.nn.functional.pad(batch, pairs) if any(padding) else batch


def _centre_slice(saliency_map: np.ndarray, region: np.ndarray, mask: np.ndarray) -> np.ndarray:
    channel = np.abs(saliency_map if saliency_map.ndim == 3 else saliency_map[0])
    centre = round(float(np.nonzero(mask)[2].mean()))
    rows, columns = np.nonzero(region[:, :, centre])
    return channel[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1, centre]


def randomisation(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    *,
    spacing: Sequence[float],
    smoothgrad: SmoothGradConfig | None = None,
    gradcam: GradCamConfig | None = None,
    steps: int | None = None,
    modes: Sequence[Mode] = ("cascading", "independent"),
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
    seed: int = 0,
    randomise: Randomiser = matched_normal,
) -> RandomisationResult:
    """Cascading and independent model randomisation of one domain's maps (``docs/trust.md``).

    Parameters
    ----------
    model
        Any segmentation module (as for :func:`instasal.instance_smoothgrad`). Never modified: every
        step works on a deep copy.
    x, domain
        One normalised subject ``[C, X, Y, Z]`` and Ω, a boolean ``[X, Y, Z]``.
    spacing
        Voxel size in mm (for the neighbourhood of Ω).
    smoothgrad
        Instance SmoothGrad settings (default: :class:`~instasal.saliency.SmoothGradConfig`'s).
    gradcam
        Instance Grad-CAM++ (or Grad-CAM) settings, checked alongside (``layer=None``:
        ``model.card["gradcam_layer"]``); ``None``: Grad-CAM is left out. Give it the same window
        (``target``, ``context``, patch size) as ``smoothgrad`` to check the maps of one run.
    steps
        Number of blocks the layers are grouped in (see :func:`layer_blocks`); ``None``: one per
        layer.
    modes
        ``"cascading"`` (blocks randomised from the output down, accumulating) and/or
        ``"independent"`` (each block alone).
    neighbourhood_mm
        Radius of the neighbourhood of Ω in which the maps are compared.
    seed
        Seeds the random weights (block ``g`` with ``(seed, g)``).
    randomise
        How a module's parameters are randomised (default :func:`matched_normal`).

    Returns
    -------
    RandomisationResult
        The per-step table (``changed`` by the rule of ``docs/trust.md``: Spearman and SSIM both
        below :data:`RANDOMISATION_THRESHOLD`, or the map all zero) and the verdict per method.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1))
    >>> x = torch.randn(2, 8, 8, 8)
    >>> omega = torch.zeros(8, 8, 8, dtype=torch.bool)
    >>> omega[3:5, 3:5, 3:5] = True
    >>> config = SmoothGradConfig(n_samples=2)
    >>> result = randomisation(net, x, omega, spacing=(1, 1, 1), smoothgrad=config)
    >>> list(result.table["step"])
    [1, 2, 1, 2]
    """
    config = smoothgrad or SmoothGradConfig()
    unknown = set(modes) - {"cascading", "independent"}
    if unknown or not modes:
        raise ConfigurationError(
            f"modes must hold 'cascading' and/or 'independent', got {tuple(modes)}"
        )
    x = as_input(x)
    mask = as_domain(domain, tuple(x.shape[1:]))
    if gradcam is not None:
        gradcam = replace(gradcam, layer=gradcam.layer_of(model))
    maps = _Maps(config, gradcam)
    region = neighbourhood(mask.numpy(), spacing, neighbourhood_mm)
    blocks = layer_blocks(
        parameter_layers(model, _first_window_batch(model, x, mask, config)), steps
    )
    trained = maps.compute(model, x, mask)
    slices = {(name, 0): _centre_slice(m, region, mask.numpy()) for name, m in trained.items()}
    rows = []
    for mode in modes:
        for step in range(1, len(blocks) + 1):
            indices = list(range(step)) if mode == "cascading" else [step - 1]
            duplicate = randomised_copy(model, blocks, indices, seed=seed, randomise=randomise)
            for name, candidate in maps.compute(duplicate, x, mask).items():
                similarity = map_similarity(candidate, trained[name], region)
                rows.append(
                    {
                        "method": name,
                        "mode": mode,
                        "step": step,
                        "layers": ";".join(blocks[step - 1]),
                        **similarity,
                        "changed": _has_changed(similarity),
                    }
                )
                if mode == "cascading":
                    slices[(name, step)] = _centre_slice(candidate, region, mask.numpy())
            del duplicate
    return RandomisationResult(pd.DataFrame(rows), blocks, slices)
