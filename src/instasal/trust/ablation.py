"""Modality reliance against ground truth: channel ablation per lesion (``docs/trust.md``).

Saliency says how much each channel matters through its map (``reliance_<channel>``, the peak
share of SPEC §2); ablation asks the model. Each channel in turn is replaced, over the whole
explained window, by a constant that carries no lesion — the mean of normal tissue away from Ω, or
the mean of the tissue shell around Ω — and the change in Ω's mean lesion logit is read. A channel
the model does not use changes nothing, whatever its map shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency.config import ExplainedPass
from instasal.saliency.inputs import as_domain, as_input
from instasal.trust.faithfulness import baseline_values, window_evaluator
from instasal.trust.similarity import NEIGHBOURHOOD_MM, neighbourhood
from instasal.typing import BoolArray, DomainLike, InputLike

__all__ = ["ABLATION_FILLS", "ablated_channels", "ablation_agreement", "channel_ablation"]

ABLATION_FILLS = ("tissue_mean", "shell_mean")
"""What an ablated channel becomes: the mean of tissue outside the neighbourhood of Ω in the
window, or the mean of the tissue shell 5–10 mm from Ω (the deletion baseline)."""


def _fills(
    volume: np.ndarray,
    omega: np.ndarray,
    spacing: Sequence[float],
    slices: tuple[slice, ...],
    tissue: BoolArray | None,
    neighbourhood_mm: float,
) -> dict[str, np.ndarray]:
    """Per fill, one value per channel."""
    where = np.any(volume != 0, axis=0) if tissue is None else np.asarray(tissue, dtype=bool)
    window = np.zeros(omega.shape, dtype=bool)
    window[slices] = True
    normal = where & window & ~neighbourhood(omega, spacing, neighbourhood_mm)
    if not normal.any():
        raise ConfigurationError(
            f"no tissue voxel in the window farther than {neighbourhood_mm:g} mm from the domain"
        )
    shell = baseline_values(
        volume, omega, spacing, tissue=tissue, neighbourhood_mm=neighbourhood_mm
    )[:, 0, 0, 0]
    return {"tissue_mean": volume[:, normal].mean(axis=1), "shell_mean": shell}


def channel_ablation(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    *,
    spacing: Sequence[float],
    channel_names: Sequence[str] | None = None,
    tissue: BoolArray | None = None,
    neighbourhood_mm: float = NEIGHBOURHOOD_MM,
    explained: ExplainedPass | None = None,
) -> pd.DataFrame:
    """The change in Ω's mean lesion logit when each channel is replaced by a constant.

    Parameters
    ----------
    model, x, domain
        As for :func:`instasal.trust.deletion_insertion` (eval mode, no gradients, never
        modified).
    spacing
        Voxel size in mm.
    channel_names
        Names of the channels (default ``channel_0`` …).
    tissue, neighbourhood_mm
        Tissue voxels (default: where any channel is non-zero) and the neighbourhood of Ω kept out
        of the normal-tissue mean.
    explained
        Which logit and which forward pass (:class:`instasal.saliency.ExplainedPass`; ``None``:
        the whole volume's lesion logit), as saliency uses them.

    Returns
    -------
    pandas.DataFrame
        One row per fill of :data:`ABLATION_FILLS` and channel: ``fill``, ``channel``, ``value``
        (the constant), ``logit_mean`` (Ω's mean logit with the channel replaced), ``drop`` (the
        intact logit minus it: > 0 when the channel supports the lesion) and ``share``
        (``drop / Σ_channels |drop|`` within the fill; NaN when no channel changes anything).
    """
    tensor = as_input(x)
    omega = as_domain(domain, tuple(tensor.shape[1:])).numpy()
    volume = tensor.detach().cpu().double().numpy()
    names = list(channel_names or [f"channel_{k}" for k in range(volume.shape[0])])
    if len(names) != volume.shape[0]:
        raise ConfigurationError(
            f"channel_names has {len(names)} names for {volume.shape[0]} channels"
        )
    slices, evaluate = window_evaluator(
        model,
        omega,
        explained=explained,
        volume=volume,
    )
    local = volume[(slice(None), *slices)]
    fills = _fills(volume, omega, spacing, slices, tissue, neighbourhood_mm)
    inputs = [local.astype(np.float32)]
    for values in fills.values():
        for k, value in enumerate(values):
            ablated = local.copy()
            ablated[k] = value
            inputs.append(ablated.astype(np.float32))
    (_, intact), *ablated_outputs = evaluate(inputs)
    rows = []
    for index, (fill, values) in enumerate(fills.items()):
        for k, name in enumerate(names):
            logit = ablated_outputs[index * len(names) + k][1]
            rows.append((fill, name, float(values[k]), logit, intact - logit))
    table = pd.DataFrame(rows, columns=["fill", "channel", "value", "logit_mean", "drop"])
    total = table.groupby("fill")["drop"].transform(lambda d: d.abs().sum())
    table["share"] = (table["drop"] / total).where(total > 0)
    return table


def ablated_channels(table: pd.DataFrame) -> list[str]:
    """The channels of a lesion table with both ``reliance_<c>`` and ``ablation_share_<c>`` (the
    normal-tissue fill; ``_shell`` columns are the other fill)."""
    return [
        name
        for column in table.columns
        if (name := str(column).removeprefix("ablation_share_")) != str(column)
        and not name.endswith("_shell")
        and f"reliance_{name}" in table.columns
    ]


def ablation_agreement(lesions: pd.DataFrame, channels: Sequence[str]) -> dict[str, float]:
    """How far saliency reliance agrees with ablation, over lesions.

    ``lesions`` has one row per lesion with ``reliance_<c>`` (the map's peak share, SPEC §2) and
    ``ablation_share_<c>`` (:func:`channel_ablation`'s ``share`` of one fill) for every channel
    ``c``. Returns ``n_lesions``, ``same_top_channel`` (the share of lesions whose largest
    saliency reliance and largest ablation share name the same channel) and ``spearman`` (the
    rank correlation over lesions of the first channel's two shares; NaN when either is
    constant).
    """
    saliency = lesions[[f"reliance_{c}" for c in channels]].to_numpy(float)
    ablation = lesions[[f"ablation_share_{c}" for c in channels]].to_numpy(float)
    complete = np.isfinite(saliency).all(axis=1) & np.isfinite(ablation).all(axis=1)
    saliency, ablation = saliency[complete], ablation[complete]
    same = saliency.argmax(axis=1) == ablation.argmax(axis=1)
    first, second = saliency[:, 0], ablation[:, 0]
    constant = len(first) < 2 or np.ptp(first) == 0 or np.ptp(second) == 0
    return {
        "n_lesions": int(complete.sum()),
        "same_top_channel": float(same.mean()) if len(same) else float("nan"),
        "spearman": float("nan") if constant else float(stats.spearmanr(first, second).statistic),
    }
