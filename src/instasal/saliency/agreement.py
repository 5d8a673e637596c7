"""How far the ``patch`` or ``deployed`` context is from the ``full`` one for a model (SPEC §2,
Context)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import ExplainedPass, SmoothGradConfig
from instasal.saliency.deployed import deployed_forward
from instasal.saliency.inputs import as_domain, as_input
from instasal.saliency.smoothgrad import InstanceSmoothGrad
from instasal.saliency.windows import context_windows
from instasal.typing import DomainLike, InputLike

__all__ = ["context_agreement", "map_agreement", "patch_full_agreement"]


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
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    config: SmoothGradConfig | None = None,
    explained: ExplainedPass | None = None,
) -> dict[str, float]:
    """Compare instance SmoothGrad with ``context="patch"`` against ``context="full"`` (SPEC §2).

    Parameters
    ----------
    model, x, domain
        As in :func:`instasal.saliency.instance_smoothgrad`.
    config
        The SmoothGrad settings of both maps (``None``: the defaults), seed included, so both see
        the same noisy voxels.
    explained
        The target, patch size and size divisibility (``None``: the defaults); its context is
        replaced by each of the two.

    Returns
    -------
    dict
        The entries of :func:`map_agreement` (patch against full) and ``full_mass_outside_patch``,
        the fraction of the full map's absolute sum that lies outside the patch.
    """
    patch = replace(explained or ExplainedPass(), context="patch")
    result = context_agreement(model, x, domain, config, patch)
    result["full_mass_outside_patch"] = result.pop("full_mass_outside_window")
    return result


def context_agreement(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    config: SmoothGradConfig | None,
    explained: ExplainedPass,
) -> dict[str, float]:
    """Compare instance SmoothGrad in ``explained.context`` (``"patch"`` or ``"deployed"``)
    against ``context="full"``, all other settings (seed included) shared.

    Returns
    -------
    dict
        The entries of :func:`map_agreement` (the context against full) and
        ``full_mass_outside_window``: the fraction of the full map's absolute sum outside the
        box of the input the context's forward reads (the patch; the prediction windows holding
        Ω's voxels).

    Raises
    ------
    ConfigurationError
        When ``explained.context`` is ``"full"``.
    """
    if explained.context == "full":
        raise ConfigurationError(
            "context_agreement compares a context with full: explained.context must be patch or "
            "deployed, got 'full'"
        )
    method = InstanceSmoothGrad(model, config)
    full, compared = (
        method.attribute(x, {0: domain}, replace(explained, context=context))[0]
        for context in ("full", explained.context)
    )
    spatial = tuple(as_input(x).shape[1:])
    mask = as_domain(domain, spatial)
    if explained.context == "deployed":
        box = deployed_forward(model, spatial, explained.patch_size).region(mask)
    else:
        (window,), _ = context_windows(model, [mask], explained)
        box = window.slices
    total = float(full.abs().sum())
    inside = float(full[(slice(None), *box)].abs().sum())
    result = map_agreement(compared, full)
    result["full_mass_outside_window"] = (total - inside) / total if total > 0 else 0.0
    return result
