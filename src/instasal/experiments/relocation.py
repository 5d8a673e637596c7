"""Synthetic lesion relocation (SPEC §4; paper's sanity check).

A lesion's voxels (all channels) are copied to (a) healthy white matter, (b) outside the brain, and
(c) outside the brain together with its perilesional shell; the model predicts at the new place.
The paper found the lesion detected in (a) and (c) but not (b): FLAIR hyperintensity *and* healthy
white matter around the border are what the model needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.typing import Condition

__all__ = ["Placement", "RelocationOutcome", "find_placement", "relocate"]


@dataclass(frozen=True)
class Placement:
    """A shift that moves a footprint to an allowed place."""

    shift: tuple[int, int, int]


@dataclass(frozen=True)
class RelocationOutcome:
    """Prediction at the relocated lesion."""

    condition: Condition
    shift: tuple[int, int, int]
    domain: np.ndarray
    mean_probability: float
    max_probability: float
    detected: bool
    input: torch.Tensor


def _shifted(mask: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros_like(mask)
    source = np.argwhere(mask)
    target = source + np.asarray(shift)
    out[tuple(target.T)] = True
    return out


def find_placement(
    footprint: np.ndarray,
    allowed: np.ndarray,
    rng: np.random.Generator,
    *,
    attempts: int = 2000,
) -> Placement | None:
    """A random shift putting every voxel of ``footprint`` inside ``allowed``, or None."""
    points = np.argwhere(footprint)
    if points.size == 0:
        raise ConfigurationError("footprint is empty")
    low, high = points.min(axis=0), points.max(axis=0)
    shape = np.asarray(footprint.shape)
    candidates = np.argwhere(allowed)
    if candidates.size == 0:
        return None
    centre = np.round(points.mean(axis=0)).astype(int)
    for _ in range(attempts):
        destination = candidates[rng.integers(len(candidates))]
        shift = destination - centre
        if np.any(low + shift < 0) or np.any(high + shift >= shape):
            continue
        target = points + shift
        if allowed[tuple(target.T)].all():
            return Placement((int(shift[0]), int(shift[1]), int(shift[2])))
    return None


def relocate(
    predict: Callable[[torch.Tensor, np.ndarray], np.ndarray],
    x: torch.Tensor,
    domain: np.ndarray,
    condition: Condition,
    *,
    brain_mask: np.ndarray,
    wm_mask: np.ndarray,
    lesion_mask: np.ndarray,
    threshold: float,
    spacing: tuple[float, float, float],
    shell_mm: float = 4.0,
    seed: int = 0,
) -> RelocationOutcome | None:
    """Copy a lesion (or lesion + shell) to a new place and predict there.

    ``predict`` maps an input and the moved lesion's mask to the probability, right at least
    inside the mask (see :func:`instasal.experiments.context_curve`).

    The copied region is Ω for ``white_matter`` and ``outside``, and Ω dilated by ``shell_mm`` for
    ``outside_with_shell``. White-matter targets must lie in WM at least ``shell_mm`` from any
    lesion; outside targets entirely outside the brain mask (in the background). Returns ``None``
    when no place fits.
    """
    rng = np.random.default_rng(seed)
    structure = ndimage.generate_binary_structure(3, 2)
    if condition == "outside_with_shell":
        iterations = max(1, round(shell_mm / min(spacing)))
        footprint = ndimage.binary_dilation(domain, structure=structure, iterations=iterations)
    else:
        footprint = domain
    if condition == "white_matter":
        far = ndimage.distance_transform_edt(~lesion_mask, sampling=spacing) >= shell_mm
        allowed = wm_mask & far & ~footprint
    elif condition in ("outside", "outside_with_shell"):
        margin = ndimage.binary_dilation(brain_mask, structure=structure, iterations=2)
        allowed = ~margin
    else:
        raise ConfigurationError(
            f"condition must be white_matter, outside or outside_with_shell, got {condition!r}"
        )
    placement = find_placement(footprint, allowed, rng)
    if placement is None:
        return None
    moved = x.clone()
    source = np.argwhere(footprint)
    target = source + np.asarray(placement.shift)
    source_index = tuple(torch.from_numpy(source.T.copy()))
    target_index = tuple(torch.from_numpy(target.T.copy()))
    moved[(slice(None), *target_index)] = x[(slice(None), *source_index)]
    new_domain = _shifted(domain, placement.shift)
    probability = predict(moved, new_domain)
    inside = probability[new_domain]
    return RelocationOutcome(
        condition=condition,
        shift=placement.shift,
        domain=new_domain,
        mean_probability=float(inside.mean()),
        max_probability=float(inside.max()),
        detected=bool((inside >= threshold).any()),
        input=moved,
    )
