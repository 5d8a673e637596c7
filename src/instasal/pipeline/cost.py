"""The saliency stage's cost, measured and stated before it starts; a budget that stops it.

The paper's max aggregation costs a backward pass per domain voxel per noise draw, and the
forward passes go through the context's window (a patch, the whole volume, or every sliding
window of the prediction that holds the domain). :func:`estimate_cost` counts that work exactly
(:meth:`instasal.saliency.InstanceSmoothGrad.work`) and times it on the run's own network and input:
one noise draw of a compact blob of the largest domain's voxels, once with ``max`` and once with
``mean`` aggregation, gives the seconds of one window's forward pass and of one Jacobian row
through it. The blob is smaller where one pass is slow (many large windows), so the
measurement itself stays short.
The same counts and times the Grad-CAM++ pass of each domain.

:func:`check_budget` stops a run estimated over the user's budget with the choices in one line:
fewer domains, fewer draws, mean aggregation, a GPU, or a larger budget (``--yes`` / ``budget_s=
None`` goes ahead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.pipeline.per_lesion import LESIONS_PER_BATCH
from instasal.progress import silent_progress
from instasal.saliency import (
    ExplainedPass,
    GradCamConfig,
    InstanceGradCam,
    InstanceSmoothGrad,
    SmoothGradConfig,
)
from instasal.typing import Progress

__all__ = [
    "CALIBRATION_ROWS_S",
    "CALIBRATION_VOXELS",
    "CostEstimate",
    "check_budget",
    "estimate_cost",
]

CALIBRATION_VOXELS = 16
"""Voxels of the largest domain whose rows are timed: a compact blob at its centre, whose voxels
share forward passes as the domain's do (in the deployed context voxels spread apart each need
their own set of windows, and a row could not be told from a forward pass), and enough for the
engine to choose its batched backward as it does in the run
(:func:`instasal.saliency.engines.aggregate_rows`). Fewer where one pass is slow
(:data:`CALIBRATION_ROWS_S`), never fewer than two."""

CALIBRATION_ROWS_S = 30.0
"""About how long the timed rows may take: the blob has as many voxels as one timed pass of a
single voxel fits in this time, between two and :data:`CALIBRATION_VOXELS` (on a CPU one pass of a
deployed 5.6 M-parameter nnU-Net folder took 80 s, and a sixteen-voxel blob ran for over 25 min
before the run said anything)."""

MEASURING = "measuring the saliency stage's cost"
"""The progress stage of the measurement (four passes, the Grad-CAM++ one fifth where asked)."""


@dataclass(frozen=True)
class CostEstimate:
    """The saliency stage of one subject, counted and timed before it runs.

    Attributes
    ----------
    domains
        Domains to explain.
    draws
        Noise draws per domain.
    rows
        Jacobian rows over all domains and draws (a backward row per domain voxel and draw with
        ``max`` aggregation, one per domain and draw with ``mean``).
    seconds_per_row, seconds_per_forward
        Measured on this network and input: one row and one forward pass through one window.
    gradcam_s
        Grad-CAM++ over all domains (0 without it).
    total_s
        The expected seconds of the stage.
    calibration_s
        What the measurement itself took.
    """

    domains: int
    draws: int
    rows: int
    seconds_per_row: float
    seconds_per_forward: float
    gradcam_s: float
    total_s: float
    calibration_s: float

    def line(self) -> str:
        """One line: domains, rows, the time per row and the expected total."""
        return (
            f"{self.domains} domain(s), {self.rows:,} Jacobian rows ({self.draws} noise draw(s)), "
            f"{self.seconds_per_row:.2g} s per row and {self.seconds_per_forward:.2g} s per "
            f"forward pass measured here: about {duration(self.total_s)}"
        )

    def as_dict(self) -> dict[str, Any]:
        """For provenance (compare ``total_s`` with the stage's measured time)."""
        return {
            "domains": self.domains,
            "draws": self.draws,
            "rows": self.rows,
            "seconds_per_row": self.seconds_per_row,
            "seconds_per_forward": self.seconds_per_forward,
            "gradcam_s": self.gradcam_s,
            "total_s": self.total_s,
            "calibration_s": self.calibration_s,
        }


def duration(seconds: float) -> str:
    """Seconds as a reader takes them in (``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _compact(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` voxels of ``mask`` nearest its centroid (ties in raster order), as a mask of
    the same shape: a blob whose voxels share forward passes as a domain's voxels do."""
    voxels = torch.nonzero(mask)
    centre = voxels.double().mean(dim=0)
    distance = ((voxels.double() - centre) ** 2).sum(dim=1)
    order = torch.argsort(distance, stable=True)[:count]
    compact = torch.zeros_like(mask, dtype=torch.bool)
    compact[tuple(voxels[order].T)] = True
    return compact


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _row_and_forward_seconds(
    network: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    config: SmoothGradConfig,
    explained: ExplainedPass,
    progress: Progress,
    steps: int,
) -> tuple[float, float]:
    """Seconds of one Jacobian row and of one forward pass through one window, from one noise
    draw of a few of ``mask``'s voxels with max and with mean aggregation (t = passes · forward +
    window rows · row, two equations in two unknowns). ``progress`` is told after each of the
    four passes, of ``steps``."""
    warm = InstanceSmoothGrad(network, replace(config, n_samples=1, aggregation="mean"))
    single = {0: _compact(mask, 1)}
    warm.attribute(x, single, explained)  # first-call costs, untimed
    progress(MEASURING, 1, steps)
    single_s = _timed(lambda: warm.attribute(x, single, explained))
    progress(MEASURING, 2, steps)
    voxels = int(np.clip(CALIBRATION_ROWS_S / max(single_s, 1e-9), 2, CALIBRATION_VOXELS))
    probe = {0: _compact(mask, voxels)}
    measured = []
    for aggregation in ("mean", "max"):
        once = InstanceSmoothGrad(network, replace(config, n_samples=1, aggregation=aggregation))
        started = time.perf_counter()
        once.attribute(x, probe, explained)
        measured.append((once.work(x, probe, explained), time.perf_counter() - started))
        progress(MEASURING, 2 + len(measured), steps)
    (mean_work, mean_s), (max_work, max_s) = measured
    extra_rows = max_work.window_rows - mean_work.window_rows
    if extra_rows > 0 and max_s > mean_s:
        row = (max_s - mean_s) / extra_rows
        forward = max((mean_s - mean_work.window_rows * row) / mean_work.window_passes, 0.0)
        return row, forward
    # one voxel per unit: a row and a forward pass cannot be told apart; count them alike
    each = max_s / (max_work.window_passes + max_work.window_rows)
    return each, each


def estimate_cost(
    network: nn.Module,
    x: torch.Tensor,
    domains: Mapping[int, torch.Tensor],
    smoothgrad: SmoothGradConfig,
    gradcam: GradCamConfig | None,
    explained: ExplainedPass,
    progress: Progress | None = None,
) -> CostEstimate:
    """Count and time the saliency stage of ``domains`` (in the order they will be explained).

    Batches of :data:`~instasal.pipeline.per_lesion.LESIONS_PER_BATCH` domains share forward
    passes as the per-lesion stage shares them; the explained forward's columns cost one more
    forward pass per batch window. ``progress`` is called as ``progress(MEASURING, done, total)``
    after each timed pass.
    """
    started = time.perf_counter()
    ids = list(domains)
    if not ids:
        return CostEstimate(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    largest = max(ids, key=lambda i: int(np.count_nonzero(np.asarray(domains[i]))))
    probe = torch.as_tensor(np.asarray(domains[largest]), dtype=torch.bool)
    report: Progress = progress or silent_progress
    steps = 5 if gradcam is not None else 4
    report(MEASURING, 0, steps)
    row, forward = _row_and_forward_seconds(network, x, probe, smoothgrad, explained, report, steps)
    method = InstanceSmoothGrad(network, smoothgrad)
    rows = passes = window_rows = draws = 0
    for start in range(0, len(ids), LESIONS_PER_BATCH):
        batch = {i: domains[i] for i in ids[start : start + LESIONS_PER_BATCH]}
        work = method.work(x, batch, explained)
        draws = work.draws
        rows += work.rows
        passes += work.window_passes + work.window_passes // max(work.draws, 1)
        window_rows += work.window_rows
    gradcam_s = 0.0
    if gradcam is not None:
        first = {largest: domains[largest]}
        cam = InstanceGradCam(network, gradcam)
        gradcam_s = _timed(lambda: cam.attribute(x, first, explained)) * len(ids)
        report(MEASURING, steps, steps)
    total = passes * forward + window_rows * row + gradcam_s
    return CostEstimate(
        len(ids),
        draws,
        rows,
        row,
        forward,
        gradcam_s,
        total,
        time.perf_counter() - started,
    )


def check_budget(
    estimate: CostEstimate,
    budget_s: float | None,
    smoothgrad: SmoothGradConfig,
    max_lesions: int | None,
    where: str,
    also: Sequence[str] = (),
) -> None:
    """Refuse a saliency stage estimated over ``budget_s`` (``None``: no budget); ``also``: more
    choices that would shorten it for this model (e.g. stating a patch size in its card).

    Raises
    ------
    ConfigurationError
        One line: the estimate, the budget and the choices that bring the stage under it.
    """
    if budget_s is None or estimate.total_s <= budget_s:
        return
    choices = [
        "explain fewer domains (--max-lesions K draws K of each type at random"
        + (f"; now {max_lesions})" if max_lesions is not None else ")"),
    ]
    if smoothgrad.n_samples > 1:
        choices.append(f"fewer noise draws (--n-samples; now {smoothgrad.n_samples})")
    if smoothgrad.aggregation == "max":
        choices.append(
            "--aggregation mean (the paper's first version: one backward pass per domain and "
            "draw instead of one per voxel; its map is the gradient of the domain's mean logit, "
            "not the per-voxel maximum)"
        )
        choices.append(
            "the labelled approximation --max-stride 2 (max over every 2nd voxel of the domain "
            "along each axis, about 8x fewer rows of large domains; not quantitative: peaks fell "
            "to about half on the built-in models, docs/saliency.md)"
        )
    choices += also
    choices.append("a GPU")
    choices.append(
        f"or a larger budget (--budget-hours, or --yes to go ahead; now {duration(budget_s)})"
    )
    raise ConfigurationError(
        f"{where}: the saliency stage would take about {duration(estimate.total_s)} "
        f"({estimate.line()}), over the budget of {duration(budget_s)}; choose "
        + ", ".join(choices)
    )
