"""How far the ``patch`` context is from the ``full`` one for a model (SPEC §2, Context)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import SmoothGradConfig
from instasal.saliency.inputs import as_domain, as_input
from instasal.saliency.smoothgrad import instance_smoothgrad_many
from instasal.saliency.windows import context_windows
from instasal.typing import DomainLike, InputLike

__all__ = ["map_agreement", "patch_full_agreement"]


def map_agreement(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Agreement of two maps of one shape.

    Returns
    -------
    dict
        ``correlation`` (Pearson, over all entries), ``max_abs_difference``,
        ``relative_max_difference`` (that divided by the reference's largest magnitude) and
        ``peak_relative_difference`` (largest over channels of ``|peak − peak_ref| / |peak_ref|``,
        the peak being the maximum of a channel, the lesion table's ``peak_<channel>``).
    """
    if candidate.shape != reference.shape:
        raise ConfigurationError(
            f"maps to compare must have one shape, got {tuple(candidate.shape)} and "
            f"{tuple(reference.shape)}"
        )
    a = candidate.detach().double().reshape(-1)
    b = reference.detach().double().reshape(-1)
    centred_a, centred_b = a - a.mean(), b - b.mean()
    norm = centred_a.norm() * centred_b.norm()
    correlation = float((centred_a @ centred_b) / norm) if norm > 0 else float("nan")
    difference = float((a - b).abs().max())
    scale = float(b.abs().max())
    peaks = candidate.detach().double().reshape(candidate.shape[0], -1).amax(dim=1)
    reference_peaks = reference.detach().double().reshape(reference.shape[0], -1).amax(dim=1)
    peak_gap = (peaks - reference_peaks).abs() / reference_peaks.abs()
    return {
        "correlation": correlation,
        "max_abs_difference": difference,
        "relative_max_difference": difference / scale if scale > 0 else float("nan"),
        "peak_relative_difference": float(peak_gap.max()),
    }


def patch_full_agreement(
    model: nn.Module, x: InputLike, domain: DomainLike, config: SmoothGradConfig | None = None
) -> dict[str, float]:
    """Compare instance SmoothGrad with ``context="patch"`` against ``context="full"`` (SPEC §2).

    Parameters
    ----------
    model, x, domain
        As in :func:`instasal.saliency.instance_smoothgrad`.
    config
        The SmoothGrad settings of both maps (``None``: the defaults); its ``context`` is replaced
        by each of the two, all else (seed included, so both see the same noisy voxels) is shared.

    Returns
    -------
    dict
        The entries of :func:`map_agreement` (patch against full) and ``full_mass_outside_patch``,
        the fraction of the full map's absolute sum that lies outside the patch.
    """
    config = config or SmoothGradConfig()
    maps = {
        context: instance_smoothgrad_many(model, x, {0: domain}, replace(config, context=context))
        for context in ("full", "patch")
    }
    full, patch = maps["full"][0], maps["patch"][0]
    spatial = tuple(as_input(x).shape[1:])
    (window,), _ = context_windows(
        model, [as_domain(domain, spatial)], "patch", config.patch_size, config.size_divisibility
    )
    total = float(full.abs().sum())
    inside = float(window.crop(full).abs().sum())
    result = map_agreement(patch, full)
    result["full_mass_outside_patch"] = (total - inside) / total if total > 0 else 0.0
    return result
