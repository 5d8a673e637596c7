"""Radial saliency profile around a domain Ω and the negative-neighbourhood rule.

See ``docs/trust.md``.

The mean saliency per channel in distance shells from Ω: shell 0 is Ω itself, shell ``i ≥ 1`` the
voxels outside Ω at a distance ``(i − 1)·w < d ≤ i·w`` mm, out to 10 mm. Distances are Euclidean
between voxel centres, from :func:`scipy.ndimage.distance_transform_edt` with the real voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "PROFILE_COLUMNS",
    "PROFILE_MAX_MM",
    "SIGN_PLACES",
    "SIGN_RINGS_MAX_MM",
    "SIGN_RING_WIDTH_MM",
    "SIGN_ROUNDOFF",
    "radial_profile",
    "shell_width",
    "sign_rings",
]

PROFILE_MAX_MM = 10.0
"""How far from Ω the profile reaches (mm)."""
PROFILE_COLUMNS = ["shell", "inner_mm", "outer_mm", "n_voxels", "channel", "mean"]
SIGN_RING_WIDTH_MM = 2.0
SIGN_RINGS_MAX_MM = 8.0
"""The fixed rings of the sign-pattern rule: ``0–2, 2–4, 4–6, 6–8 mm`` outside Ω, whatever the
voxel size (``docs/trust.md``)."""
SIGN_PLACES = ("ring_0_2mm", "ring_2_4mm", "ring_4_6mm", "ring_6_8mm")
"""The names :func:`sign_rings` gives the fixed rings."""
SIGN_ROUNDOFF = 1e-6
"""Scaled means within this of 0 count as 0: float32 maps' round-off relative to their largest
magnitude (a ring the map does not reach reads −5e-9, not a negative value)."""


def shell_width(spacing: Sequence[float]) -> float:
    """The shell width: the largest voxel size (every shell holds a voxel layer along each axis)."""
    return float(max(spacing))


def radial_profile(
    saliency: FloatArray,
    domain: BoolArray,
    spacing: Sequence[float],
    *,
    channel_names: Sequence[str] | None = None,
    max_mm: float = PROFILE_MAX_MM,
    width_mm: float | None = None,
) -> pd.DataFrame:
    """Mean saliency per channel in distance shells around Ω, as a tidy table.

    Parameters
    ----------
    saliency
        A map ``[C, X, Y, Z]`` (instance SmoothGrad) or ``[X, Y, Z]`` (one channel).
    domain
        Ω, boolean ``[X, Y, Z]``.
    spacing
        Voxel size in mm per axis.
    channel_names
        One name per channel (default ``"0"``, ``"1"``, …).
    max_mm
        Outer radius of the last shell.
    width_mm
        Shell width; ``None``: :func:`shell_width` of ``spacing``.

    Returns
    -------
    pandas.DataFrame
        :data:`PROFILE_COLUMNS`: one row per shell and channel; ``mean`` is NaN for a shell without
        voxels (e.g. cut by the volume's edge). Shell 0 (Ω) has ``inner_mm = outer_mm = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> omega = np.zeros((9, 9, 9), bool)
    >>> omega[4, 4, 4] = True
    >>> profile = radial_profile(np.ones((1, 9, 9, 9)), omega, (1, 1, 1), max_mm=2)
    >>> list(profile["n_voxels"])
    [1, 6, 26]
    """
    values = np.asarray(saliency, dtype=np.float64)
    values = values[None] if values.ndim == 3 else values
    domain = np.asarray(domain, dtype=bool)
    if values.ndim != 4 or values.shape[1:] != domain.shape:
        raise ConfigurationError(
            f"saliency must be [C, X, Y, Z] or [X, Y, Z] on the domain's grid {domain.shape}, "
            f"got {np.shape(saliency)}"
        )
    if not domain.any():
        raise ConfigurationError("domain is empty: a domain Ω needs at least one voxel")
    names = [str(k) for k in range(values.shape[0])] if channel_names is None else channel_names
    if len(names) != values.shape[0]:
        raise ConfigurationError(
            f"{values.shape[0]} saliency channels but channel names {tuple(names)}"
        )
    width = shell_width(spacing) if width_mm is None else float(width_mm)
    if not width > 0 or not max_mm > 0:
        raise ConfigurationError(f"width_mm and max_mm must be > 0, got {width} and {max_mm}")
    crop = _crop_around(domain, spacing, max_mm)
    local = domain[crop]
    distance = ndimage.distance_transform_edt(~local, sampling=tuple(float(s) for s in spacing))
    n_shells = int(np.ceil(max_mm / width - 1e-9))
    shells = [(0, 0.0, 0.0, local)]
    for i in range(1, n_shells + 1):
        inner, outer = (i - 1) * width, min(i * width, max_mm)
        shells.append((i, inner, outer, ~local & (distance > inner) & (distance <= outer)))
    rows = []
    for k, name in enumerate(names):
        channel = values[k][crop]
        for index, inner, outer, members in shells:
            count = int(members.sum())
            mean = float(channel[members].mean()) if count else float("nan")
            rows.append((index, inner, outer, count, name, mean))
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


def _crop_around(domain: BoolArray, spacing: Sequence[float], max_mm: float) -> tuple[slice, ...]:
    (box,) = ndimage.find_objects(domain.astype(np.uint8))
    margin = [int(np.ceil(max_mm / s)) + 1 for s in spacing]
    return tuple(
        slice(max(0, b.start - m), min(n, b.stop + m))
        for b, m, n in zip(box, margin, domain.shape, strict=True)
    )


def sign_rings(
    saliency: FloatArray, domain: BoolArray, spacing: Sequence[float]
) -> dict[str, float]:
    """The first channel's mean inside Ω and in the fixed rings, over its largest magnitude.

    The rings are the shells of :func:`radial_profile` :data:`SIGN_RING_WIDTH_MM` wide out to
    :data:`SIGN_RINGS_MAX_MM`; each mean is divided by the largest ``|map|`` of the first channel
    within that distance of Ω (Ω included), so that maps of different scale (a trained and a
    randomised network) compare by their shape and sign alone.

    Returns
    -------
    dict
        ``"inside"`` and ``"ring_<a>_<b>mm"`` (e.g. ``ring_2_4mm``) to the scaled mean; NaN for
        a ring without voxels, and for every entry when the map is zero there.

    Examples
    --------
    >>> import numpy as np
    >>> omega = np.zeros((12, 12, 12), bool)
    >>> omega[6, 6, 6] = True
    >>> saliency = np.where(omega, 2.0, -0.5)
    >>> rings = sign_rings(saliency, omega, (1, 1, 1))
    >>> rings["inside"], rings["ring_4_6mm"]
    (1.0, -0.25)
    >>> list(rings)
    ['inside', 'ring_0_2mm', 'ring_2_4mm', 'ring_4_6mm', 'ring_6_8mm']
    """
    values = np.asarray(saliency, dtype=np.float64)
    first = values if values.ndim == 3 else values[0]
    profile = radial_profile(
        first, domain, spacing, max_mm=SIGN_RINGS_MAX_MM, width_mm=SIGN_RING_WIDTH_MM
    )
    crop = _crop_around(np.asarray(domain, dtype=bool), spacing, SIGN_RINGS_MAX_MM)
    local = np.asarray(domain, dtype=bool)[crop]
    distance = ndimage.distance_transform_edt(~local, sampling=tuple(float(s) for s in spacing))
    scale = float(np.abs(first[crop][distance <= SIGN_RINGS_MAX_MM]).max())
    rings: dict[str, float] = {}
    for shell, inner, outer, mean in profile[["shell", "inner_mm", "outer_mm", "mean"]].itertuples(
        index=False
    ):
        name = "inside" if shell == 0 else f"ring_{inner:g}_{outer:g}mm"
        rings[name] = float(mean) / scale if scale > 0 else float("nan")
    return rings
