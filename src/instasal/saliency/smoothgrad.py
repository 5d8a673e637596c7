"""Instance SmoothGrad (SPEC §2): quantitative per-lesion saliency, one map per input channel.

``S_Ω(x) = (1/N) Σ_n A_Ω(x + ε_n)`` with ``A_Ω`` the max (default) or mean aggregation of the
Jacobian rows of the target logits over Ω. All domains of one subject share the N noise draws and
the forward passes: with ``context="full"`` one forward pass per draw serves every domain; with
``context="patch"`` one per draw and distinct patch, domains whose patches coincide sharing it;
with ``context="deployed"`` (the sliding-window prediction itself, see
:mod:`instasal.saliency.deployed`) one per draw and distinct set of prediction windows holding
the domains' voxels.
Maps are in logit units per input-intensity unit and are never rescaled.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from instasal.saliency.config import ExplainedPass, MemoryFormat, SmoothGradConfig
from instasal.saliency.deployed import DeployedForward, deployed_forward
from instasal.saliency.engines import (
    EngineName,
    aggregate_rows,
    default_memory_budget,
    rows_under_budget,
    saved_tensor_bytes,
)
from instasal.saliency.inputs import as_domains, as_input, run_target_logits
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.noise import noise_grid, noise_sigmas, noisy_inputs
from instasal.saliency.windows import (
    Window,
    context_windows,
    end_padding,
    shared_windows,
    window_for,
)
from instasal.typing import Aggregation, Context, DomainLike, InputLike, NoiseRange, Progress

__all__ = [
    "InstanceSmoothGrad",
    "SmoothGradWork",
    "instance_smoothgrad",
    "instance_smoothgrad_many",
    "row_lattice",
]


_MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last_3d,
}

MAX_DRAWS_PER_PASS = 8
# Logits of a draw forwarded in a batch and alone differ by float32 round-off of convolutions
# run at another batch size (~1e-6 of the largest logit); a model mixing samples differs by O(1).
_PACKING_TOLERANCE = 1e-4
_INDEPENDENT: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], bool]] = (
    weakref.WeakKeyDictionary()
)


_WINDOW_BYTES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], int]] = (
    weakref.WeakKeyDictionary()
)
_PACKS_FASTER: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], bool]] = (
    weakref.WeakKeyDictionary()
)


class _DrawPacking:
    """How many noise draws each forward pass takes, chosen by measurement where not given.

    The first pass forwards one draw and measures the bytes its graph saves. Without
    ``draws_per_pass``, the second forwards as many draws as the memory budget holds (at most
    :data:`MAX_DRAWS_PER_PASS`) and the third one draw, both timed; the cheaper per draw runs the
    rest, and is remembered per model, input size, device and settings, so later calls go
    straight to it. Forwarding draws together shares each backward call's fixed costs, but a
    batch's activations may no longer fit the CPU's caches (measured: slower on nnU-Net's full
    volume, faster on its patch; ``docs/saliency.md``). Either way the map is the same to float32
    round-off.
    """

    def __init__(self, model: nn.Module, config: SmoothGradConfig, key: tuple[object, ...]) -> None:
        self.config, self.key = config, key
        self.known = _PACKS_FASTER.setdefault(model, {})
        self.bytes_per_draw = 0
        self.packed_s: float | None = None

    def size(self, done_draws: int, budget: int) -> int:
        """Draws of the next pass, after ``done_draws``."""
        if done_draws == 0:
            return 1
        if self.config.draws_per_pass is not None:
            return self.config.draws_per_pass
        faster = self.known.get(self.key)
        if faster is False or (faster is None and self.packed_s is not None):
            return 1  # measured slower, or the one-draw pass timed against the packed one
        return max(1, min(MAX_DRAWS_PER_PASS, budget // max(self.bytes_per_draw, 1)))

    def record(self, done_draws: int, draws: int, seconds: float) -> None:
        """Time a pass of ``draws`` draws that started after ``done_draws``."""
        if done_draws == 0 or self.config.draws_per_pass is not None or self.key in self.known:
            return
        if draws > 1:
            self.packed_s = seconds / draws
        elif self.packed_s is not None:
            self.known[self.key] = self.packed_s < seconds


ForwardPass = Callable[[torch.Tensor], torch.Tensor]
"""A forward pass: input ``[B, C, *S]`` to target logits (``[*S]`` for B = 1, else ``[B, *S]``)."""


def _packs_independently(
    model: nn.Module, crops: Sequence[torch.Tensor], forward: ForwardPass
) -> bool:
    """Whether ``model`` gives each draw of a batch the logits it gives that draw alone.

    Checked once per model, crop shape, device and dtype on the first two draws (a model mixing
    the samples of a batch, e.g. batch statistics kept in eval mode, is run one draw at a time).
    """
    key = (tuple(crops[0].shape), str(crops[0].device), str(crops[0].dtype))
    known = _INDEPENDENT.setdefault(model, {})
    if key not in known:
        with torch.no_grad():
            together = forward(torch.stack(list(crops[:2])))
            alone = [forward(c.unsqueeze(0)) for c in crops[:2]]
        scale = max(float(a.abs().max()) for a in alone)
        known[key] = all(
            bool(torch.allclose(t, a, rtol=0.0, atol=_PACKING_TOLERANCE * max(scale, 1.0)))
            for t, a in zip(together, alone, strict=True)
        )
    return known[key]


def _forward_passes(
    model: nn.Module,
    crops: Sequence[torch.Tensor],
    forward: ForwardPass,
    memory_format: torch.memory_format,
    bytes_per_draw: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Forward the noisy crops of one window: all in one batch where the model treats them
    independently, else one by one. Yields the leaf, its target logits and the graph's bytes
    (at least ``bytes_per_draw`` per draw: what a checkpointed forward holds in its backward)."""
    if len(crops) > 1 and _packs_independently(model, crops, forward):
        batches = [torch.stack(list(crops))]
    else:
        batches = [crop.unsqueeze(0) for crop in crops]
    for batch in batches:
        inputs = batch.clone(memory_format=memory_format).requires_grad_(True)
        with saved_tensor_bytes() as graph_bytes:
            logits = forward(inputs)
        yield inputs, logits, max(graph_bytes[0], bytes_per_draw * inputs.shape[0])


def row_lattice(domain: torch.Tensor, stride: int) -> torch.Tensor:
    """The voxels of Ω whose rows the labelled max-aggregation approximation takes.

    Every ``stride``-th voxel along each axis, on the lattice through the voxel of Ω nearest its
    centroid (the first in raster order among equals), so that Ω always keeps at least that
    voxel; ``stride = 1`` keeps Ω whole. About ``1/stride³`` of a large domain's voxels remain.

    Examples
    --------
    >>> omega = torch.zeros(6, 6, 6, dtype=torch.bool)
    >>> omega[1:5, 1:5, 1:5] = True
    >>> int(row_lattice(omega, 2).sum()), int(row_lattice(omega, 1).sum())
    (8, 64)
    """
    if stride == 1:
        return domain
    points = domain.nonzero()
    centre = points.double().mean(dim=0)
    anchor = points[int(((points.double() - centre) ** 2).sum(dim=1).argmin())]
    kept = torch.zeros_like(domain)
    on_lattice = ((points - anchor) % stride == 0).all(dim=1)
    kept[tuple(points[on_lattice].T)] = True
    return kept


def _row_masks(masks: Sequence[torch.Tensor], config: SmoothGradConfig) -> list[torch.Tensor]:
    """The masks whose voxels give rows: Ω, or its :func:`row_lattice` under the approximation."""
    if config.aggregation != "max" or config.max_stride == 1:
        return list(masks)
    return [row_lattice(mask, config.max_stride) for mask in masks]


def _flat_voxels(window: Window, domain: torch.Tensor) -> torch.Tensor:
    return domain[window.slices].reshape(-1).nonzero().reshape(-1)


@dataclass(frozen=True)
class _Unit:
    """One forward pass per noise draw: the box of the input it takes, the prediction windows it
    blends (``None``: the box's own forward pass), the domains it serves and, per domain, the
    flat indices of the voxels whose rows it gives (all of the domain's, except in the deployed
    context, where a domain's voxels may be split over units by the windows they depend on)."""

    window: Window
    tiles: tuple[int, ...] | None
    members: list[int]
    voxels: list[torch.Tensor]


@dataclass(frozen=True)
class _DomainPlan:
    """Where each domain's Jacobian rows come from: its forward window, its voxels' flat indices
    in that window, and the forward passes (units) that serve the domains."""

    windows: list[Window]
    voxels: list[torch.Tensor]
    units: list[_Unit]
    divisibility: tuple[int, ...] | None
    deployed: DeployedForward | None
    target: int

    @classmethod
    def of(
        cls,
        model: nn.Module,
        masks: Sequence[torch.Tensor],
        config: SmoothGradConfig,
        explained: ExplainedPass,
    ) -> _DomainPlan:
        if explained.context == "deployed":
            return cls._deployed(model, masks, config, explained)
        windows, divisibility = context_windows(model, masks, explained)
        rows = _row_masks(masks, config)
        voxels = [_flat_voxels(w, m) for w, m in zip(windows, rows, strict=True)]
        units = [
            _Unit(w, None, members, [voxels[i] for i in members])
            for w, members in shared_windows(windows).items()
        ]
        return cls(windows, voxels, units, divisibility, None, explained.target)

    @classmethod
    def _deployed(
        cls,
        model: nn.Module,
        masks: Sequence[torch.Tensor],
        config: SmoothGradConfig,
        explained: ExplainedPass,
    ) -> _DomainPlan:
        """Whole-grid rows of the sliding-window prediction: one unit per set of prediction
        windows, serving the voxels (of any domain) that depend on exactly those windows."""
        deployed = deployed_forward(model, masks[0].shape, explained.patch_size)
        whole = window_for(masks[0], "full")
        groups: dict[tuple[int, ...], tuple[list[int], list[torch.Tensor]]] = {}
        rows = _row_masks(masks, config)
        for index, mask in enumerate(rows):
            for tiles, voxels in deployed.cells(mask).items():
                members, member_voxels = groups.setdefault(tiles, ([], []))
                members.append(index)
                member_voxels.append(voxels)
        return cls(
            [whole] * len(masks),
            [_flat_voxels(whole, m) for m in rows],
            [_Unit(whole, tiles, *served) for tiles, served in groups.items()],
            None,
            deployed,
            explained.target,
        )

    def forward(self, model: nn.Module, unit: _Unit, checkpoint: bool = False) -> ForwardPass:
        """The forward pass of ``unit``: its window's (padded to the size divisibility), or the
        blend of its prediction windows (``checkpoint``: each window's graph rebuilt in the
        backward pass, :meth:`instasal.saliency.deployed.Tiling.blended_logits`), to the target
        logits."""
        if unit.tiles is None or self.deployed is None:
            padding = end_padding(unit.window.size, self.divisibility)
            return partial(run_target_logits, model, target=self.target, padding=padding)
        return partial(
            self.deployed.target_logits,
            windows=unit.tiles,
            target=self.target,
            checkpoint=checkpoint,
        )

    def window_graph_bytes(self, model: nn.Module, x_model: torch.Tensor) -> int:
        """Bytes autograd saves for one prediction window of one draw (0 outside the deployed
        context): a unit's graph is about its windows' count times that. Measured by one
        window's forward pass once per model, input size, device and window size."""
        if self.deployed is None:
            return 0
        key = (
            tuple(x_model.shape),
            str(x_model.device),
            str(x_model.dtype),
            self.deployed.tiling.patch,
            self.target,
        )
        known = _WINDOW_BYTES.setdefault(model, {})
        if key not in known:
            unit = next(u for u in self.units if u.tiles)
            assert unit.tiles is not None
            leaf = x_model[None].detach().clone().requires_grad_(True)
            with saved_tensor_bytes() as saved:
                self.deployed.target_logits(leaf, unit.tiles[:1], self.target)
            known[key] = saved[0]
        return known[key]

    def work(self, aggregation: Aggregation, draws: int) -> SmoothGradWork:
        """What ``draws`` noise draws cost: per unit, a row per voxel it serves (max) or per
        domain it serves (mean), and one forward pass through each of its windows."""
        rows = passes = window_rows = 0
        for unit in self.units:
            windows = 1 if unit.tiles is None else len(unit.tiles)
            served = sum(len(v) for v in unit.voxels) if aggregation == "max" else len(unit.voxels)
            rows += served
            passes += windows
            window_rows += windows * served
        return SmoothGradWork(draws, draws * rows, draws * passes, draws * window_rows)


@dataclass(frozen=True)
class SmoothGradWork:
    """The work of one :meth:`InstanceSmoothGrad.attribute` call, counted before it runs.

    Attributes
    ----------
    draws
        Noise draws computed (1 when the noise is zero: every draw is the input itself).
    rows
        Jacobian rows (backward rows) over all draws: the count its ``progress`` reaches.
    window_passes
        Forward passes of one model window over all draws (a deployed-context blend of T
        prediction windows counts T).
    window_rows
        Rows weighted by the number of windows each goes back through: with
        :attr:`window_passes`, what the time is proportional to (a forward pass per window pass,
        a backward row per window row).
    """

    draws: int
    rows: int
    window_passes: int
    window_rows: int


class _DrawParts:
    """Per domain and noise draw of one chunk, ``A_Ω`` combined over the units serving the
    domain's voxels: the entry of largest magnitude (max aggregation) or the voxel-weighted sum
    of the units' means (mean aggregation); summed over the chunk's draws at the end."""

    def __init__(self, plan: _DomainPlan, aggregation: Aggregation, draws: int) -> None:
        self.sizes = [len(v) for v in plan.voxels]
        self.aggregation, self.draws = aggregation, draws
        self.maps: dict[int, list[torch.Tensor | None]] = {}

    def add(self, index: int, first_draw: int, n_voxels: int, aggregated: torch.Tensor) -> None:
        """``aggregated`` ``[B, C, *S]``: the unit's aggregation of ``n_voxels`` of domain
        ``index``'s voxels for draws ``first_draw … first_draw + B − 1`` of the chunk."""
        if self.aggregation == "mean":
            aggregated = aggregated * (n_voxels / self.sizes[index])
        slots = self.maps.setdefault(index, [None] * self.draws)
        for step, part in enumerate(aggregated):
            known = slots[first_draw + step]
            if known is None:
                slots[first_draw + step] = part
            elif self.aggregation == "mean":
                slots[first_draw + step] = known + part
            else:  # the earlier unit wins ties, as the earlier row does within one
                slots[first_draw + step] = torch.where(part.abs() > known.abs(), part, known)

    def summed(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Each domain's maps summed over the chunk's draws."""
        for index, slots in self.maps.items():
            filled = [part for part in slots if part is not None]
            assert len(filled) == self.draws, "every draw of a served domain is aggregated"
            yield index, torch.stack(filled).sum(dim=0).contiguous()


def _summed_over_draws(
    model: nn.Module,
    x_model: torch.Tensor,
    plan: _DomainPlan,
    config: SmoothGradConfig,
    n_draws: int,
    advance: Callable[[int], None],
) -> list[torch.Tensor]:
    """``Σ_n A_Ω(x + ε_n)`` of each domain on its window, over the ``n_draws`` noise draws.

    The first pass forwards one draw and measures its graph; the later ones as many draws as the
    settings, the memory budget and the measured speed allow (:class:`_DrawPacking`).
    """
    budget = config.memory_budget_bytes or default_memory_budget(x_model.device)
    sums: list[torch.Tensor | None] = [None] * len(plan.windows)
    draws = noisy_inputs(
        x_model,
        n_samples=n_draws,
        noise_level=config.noise_level,
        noise_range=config.noise_range,
        seed=config.seed,
        grid=noise_grid(model, x_model.shape[1:]),
    )
    key = (
        tuple(x_model.shape),
        str(x_model.device),
        config.aggregation,
        config.engine,
        config.memory_format,
        plan.units[0].window.size,
        plan.deployed is not None,
    )
    packing, done_draws = _DrawPacking(model, config, key), 0
    with inference_state(model), torch.enable_grad():
        # A deployed unit blends every prediction window holding its voxels, each window's graph
        # kept for the backward pass: where they would not fit the budget together, each window
        # is checkpointed (its graph rebuilt in the backward pass, one window at a time).
        window_bytes = plan.window_graph_bytes(model, x_model)
        checkpointed = [
            unit.tiles is not None and len(unit.tiles) * window_bytes > budget
            for unit in plan.units
        ]
        while done_draws < n_draws:
            started = time.perf_counter()
            chunk = [
                next(draws)
                for _ in range(min(packing.size(done_draws, budget), n_draws - done_draws))
            ]
            parts = _DrawParts(plan, config.aggregation, len(chunk))
            for unit, checkpoint in zip(plan.units, checkpointed, strict=True):
                offset = 0
                for inputs, logits, graph_bytes in _forward_passes(
                    model,
                    [unit.window.crop(d) for d in chunk],
                    plan.forward(model, unit, checkpoint),
                    _MEMORY_FORMATS[config.memory_format],
                    window_bytes if checkpoint else 0,
                ):
                    if done_draws == 0:
                        volume_bytes = x_model.numel() * x_model.element_size()
                        packing.bytes_per_draw = max(
                            packing.bytes_per_draw, graph_bytes + volume_bytes
                        )
                    maps = aggregate_rows(
                        model,
                        logits,
                        inputs,
                        unit.voxels,
                        aggregation=config.aggregation,
                        engine=config.engine,
                        rows_per_call=rows_under_budget(graph_bytes, budget, config.rows_per_call),
                        advance=advance,
                    )
                    del logits
                    for index, voxels, aggregated in zip(
                        unit.members, unit.voxels, maps, strict=True
                    ):
                        parts.add(index, offset, len(voxels), aggregated)
                    offset += inputs.shape[0]
            for index, drawn in parts.summed():
                previous = sums[index]
                sums[index] = drawn if previous is None else previous + drawn
            if x_model.device.type == "cuda":
                torch.cuda.synchronize(x_model.device)
            packing.record(done_draws, len(chunk), time.perf_counter() - started)
            done_draws += len(chunk)
    totals = [total for total in sums if total is not None]
    assert len(totals) == len(sums), "every domain is in one window group and n_draws >= 1"
    return totals


class InstanceSmoothGrad:
    """Instance SmoothGrad of one model with fixed settings (SPEC §2): constructed once, then
    called on subjects, domains and the forward pass to explain.

    Parameters
    ----------
    model
        Any module mapping ``[B, C, X, Y, Z]`` to logits ``[B, K, X, Y, Z]`` (see
        :func:`instance_smoothgrad`).
    config
        The method's settings (``None``: the paper's, :class:`SmoothGradConfig`).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Conv3d(2, 2, 3, padding=1)
    >>> x = torch.randn(2, 8, 8, 8)
    >>> first, second = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    >>> first[1:3, 1:3, 1:3] = second[5:7, 5:7, 5:7] = True
    >>> method = InstanceSmoothGrad(net, SmoothGradConfig(n_samples=2))
    >>> maps = method.attribute(x, {1: first, 2: second}, ExplainedPass(target=1))
    >>> sorted(maps), maps[1].shape
    ([1, 2], torch.Size([2, 8, 8, 8]))
    >>> method.work(x, {1: first}).rows  # 8 voxels, 2 draws
    16
    """

    def __init__(self, model: nn.Module, config: SmoothGradConfig | None = None) -> None:
        self.model = model
        self.config = config or SmoothGradConfig()

    def attribute(
        self,
        x: InputLike,
        domains: Mapping[int, DomainLike],
        explained: ExplainedPass | None = None,
        *,
        progress: Progress | None = None,
    ) -> dict[int, torch.Tensor]:
        """The maps of all domains of one subject, sharing noise draws and forward passes.

        The same as one :func:`instance_smoothgrad` call per domain with the same settings
        (identical with ``engine="naive"``; to float32 round-off otherwise), but with one forward
        pass per noise draw (``context="full"``), per draw and distinct patch (``"patch"``) or per
        draw and distinct set of prediction windows (``"deployed"``) instead of one per draw and
        domain.

        Parameters
        ----------
        x
            One subject ``[C, X, Y, Z]``, normalised as for training; not modified.
        domains
            ``{domain id: boolean [X, Y, Z]}``.
        explained
            The forward pass and output channel explained (``None``: :class:`ExplainedPass`'s
            defaults, the whole volume's lesion logit).
        progress
            ``progress("SmoothGrad rows", done_rows, total_rows)``
            (:class:`instasal.typing.Progress`; ``None``: silent), called after every backward
            call, counting Jacobian rows (backward passes with ``aggregation="mean"``).

        Returns
        -------
        dict of int to torch.Tensor
            ``{domain id: [C, X, Y, Z] map}``, in the order of ``domains``.
        """
        config = self.config
        x = as_input(x)
        spatial = tuple(x.shape[1:])
        ids, masks = as_domains(domains, spatial)
        if not masks:
            return {}
        plan = _DomainPlan.of(self.model, masks, config, explained or ExplainedPass())
        x_model = x.detach().to(model_device(self.model))
        n_draws = _draws_needed(x, config)
        total_rows, done_rows = plan.work(config.aggregation, n_draws).rows, 0

        def advance(rows: int) -> None:
            nonlocal done_rows
            done_rows += rows
            if progress is not None:
                progress("SmoothGrad rows", done_rows, total_rows)

        sums = _summed_over_draws(self.model, x_model, plan, config, n_draws, advance)
        return {
            domain_id: window.place(total / n_draws, spatial).to(x.device)
            for domain_id, window, total in zip(ids, plan.windows, sums, strict=True)
        }

    def work(
        self,
        x: InputLike,
        domains: Mapping[int, DomainLike],
        explained: ExplainedPass | None = None,
    ) -> SmoothGradWork:
        """The work :meth:`attribute` does for these arguments, without doing it: its noise
        draws, Jacobian rows (a row per voxel of each domain with ``max``, one per domain with
        ``mean``, per window unit serving it) and forward passes."""
        x = as_input(x)
        _, masks = as_domains(domains, tuple(x.shape[1:]))
        draws = _draws_needed(x, self.config)
        if not masks:
            return SmoothGradWork(draws, 0, 0, 0)
        plan = _DomainPlan.of(self.model, masks, self.config, explained or ExplainedPass())
        return plan.work(self.config.aggregation, draws)


def instance_smoothgrad_many(
    model: nn.Module,
    x: InputLike,
    domains: Mapping[int, DomainLike],
    config: SmoothGradConfig | None = None,
    explained: ExplainedPass | None = None,
    *,
    progress: Progress | None = None,
) -> dict[int, torch.Tensor]:
    """``InstanceSmoothGrad(model, config).attribute(x, domains, explained, progress=progress)``:
    the maps of all domains of one subject (see :meth:`InstanceSmoothGrad.attribute`)."""
    return InstanceSmoothGrad(model, config).attribute(x, domains, explained, progress=progress)


def _draws_needed(x: torch.Tensor, config: SmoothGradConfig) -> int:
    """Noise draws to compute: every draw of zero noise is ``x`` itself, so one draw gives
    ``A_Ω(x)`` exactly (SPEC §5)."""
    noiseless = not bool((noise_sigmas(x, config.noise_level, config.noise_range) != 0).any())
    return 1 if noiseless else config.n_samples


def instance_smoothgrad(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    *,
    target: int = 1,
    n_samples: int = 50,
    noise_level: float = 0.05,
    noise_range: NoiseRange = "per_channel",
    aggregation: Aggregation = "max",
    context: Context = "full",
    patch_size: int | Sequence[int] | None = None,
    seed: int = 0,
    engine: EngineName = "auto",
    size_divisibility: int | Sequence[int] | None = None,
    rows_per_call: int | None = None,
    memory_budget_bytes: int | None = None,
    draws_per_pass: int | None = None,
    memory_format: MemoryFormat = "contiguous",
    max_stride: int = 1,
) -> torch.Tensor:
    """Instance SmoothGrad map of one domain Ω (SPEC §2, API of §5).

    Parameters
    ----------
    model
        Any module mapping ``[B, C, X, Y, Z]`` to logits ``[B, K, X, Y, Z]``, on its device (CPU
        or CUDA; taken from its parameters). Run in eval mode; its modes and ``requires_grad``
        flags are restored afterwards, its parameters and buffers never change.
    x
        One subject ``[C, X, Y, Z]``, normalised as for training; not modified.
    domain
        Boolean ``[X, Y, Z]``, the voxels of Ω.
    target
        Output channel explained; for a single-output model (K = 1) 0 and 1 both mean its only
        channel, the lesion logit.
    n_samples, noise_level, noise_range, seed
        SmoothGrad noise: N draws ``ε_n ~ N(0, σ_k²)`` from a generator seeded with ``seed``,
        ``σ_k = noise_level × range`` of channel k (``"per_channel"``) or of channel 0
        (``"first_channel"``). ``noise_level=0`` returns ``A_Ω(x)`` exactly.
    aggregation
        ``"max"``: per channel and voxel the Jacobian-row entry of largest magnitude, sign kept;
        ``"mean"``: the gradient of the mean logit over Ω.
    context, patch_size, size_divisibility
        ``"full"``: differentiate the forward pass over the whole volume; ``"patch"``: over one
        patch of ``patch_size`` (default ``model.card["patch_size"]``) around Ω, zero outside it;
        ``"deployed"``: the sliding-window prediction itself (windows of ``patch_size``, overlap
        0.5, Gaussian blending, as :func:`instasal.models.predict_logits`; for a network wrapped
        to run at another voxel size, its own card's patch on its own grid), every window holding
        a voxel of Ω blended (:mod:`instasal.saliency.deployed`).
        Inputs are zero-padded at the end of each axis to a multiple of the network's size
        divisibility (default ``model.card["size_divisibility"]``), the output cropped back.
    engine, rows_per_call, memory_budget_bytes
        ``"naive"`` (one backward call per row, the reference), ``"batched"`` (many rows per call,
        chunked under the memory budget) or ``"auto"`` (the faster, measured once per model, input
        size and device). All give the same map to float32 round-off.
    draws_per_pass
        Noise draws forwarded together (see :class:`SmoothGradConfig`); any value gives the same
        map to float32 round-off, 1 the one-draw-per-pass procedure exactly.
    memory_format
        ``"contiguous"`` or ``"channels_last"`` (see :class:`SmoothGradConfig`).
    max_stride
        ``1``: exact max aggregation; ``s > 1``: the labelled approximation over Ω's voxels on a
        lattice of stride ``s`` (see :class:`SmoothGradConfig`).

    Returns
    -------
    torch.Tensor
        ``[C, X, Y, Z]`` on ``x``'s device, in logit units per input-intensity unit (not rescaled).

    Raises
    ------
    ConfigurationError
        On a bad argument: ``x`` not 4D or not finite, ``domain`` of another shape or empty,
        ``target`` out of range, an unknown mode, or ``context="patch"`` without a patch size.
    ModelError
        If the model's output is not ``[1, K, X, Y, Z]`` on the input grid.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Conv3d(2, 2, 3, padding=1)
    >>> x = torch.randn(2, 8, 8, 8)
    >>> domain = torch.zeros(8, 8, 8, dtype=torch.bool)
    >>> domain[3:5, 3:5, 3:5] = True
    >>> instance_smoothgrad(net, x, domain, n_samples=2).shape
    torch.Size([2, 8, 8, 8])
    """
    config = SmoothGradConfig(
        n_samples=n_samples,
        noise_level=noise_level,
        noise_range=noise_range,
        aggregation=aggregation,
        seed=seed,
        engine=engine,
        rows_per_call=rows_per_call,
        memory_budget_bytes=memory_budget_bytes,
        draws_per_pass=draws_per_pass,
        memory_format=memory_format,
        max_stride=max_stride,
    )
    explained = ExplainedPass(target, context, patch_size, size_divisibility)
    return InstanceSmoothGrad(model, config).attribute(x, {0: domain}, explained)[0]
