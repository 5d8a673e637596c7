"""Jacobian-row engines: exact aggregation of ``g_v = ∂f_c[v]/∂x̃`` over domains (SPEC §2).

One forward pass of a noisy input (whole volume or patch) serves every row of every domain placed
in it: the graph is retained between backward calls. Engines differ only in how rows are pulled out
of that graph:

- ``"naive"``: one ``torch.autograd.grad`` per voxel of Ω, SPEC §2's reference loop;
- ``"batched"``: many rows per backward call (``is_grads_batched``, a vmap over one-hot output
  gradients), chunked so that a call stays under a memory budget;
- ``"auto"``: the faster of the two for this model, input size and device, measured on the first
  rows actually needed (so the measurement is not wasted) and cached per model.

Max aggregation keeps, per channel and input voxel, the row entry of largest magnitude with its
sign, the earlier row winning ties, whatever the chunking; results agree to float32 round-off.
Measured on 2 CPU cores the plain loop beats batched rows (see ``docs/saliency.md``); on CUDA
batched rows are expected to win, which ``"auto"`` finds out by itself.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import nn

from instasal.typing import Aggregation, EngineName, ExactEngine

__all__ = [
    "DEFAULT_CPU_MEMORY_BUDGET",
    "MAX_ROWS_PER_CALL",
    "EngineChoice",
    "EngineName",
    "ExactEngine",
    "aggregate_rows",
    "cached_engine_choices",
    "default_memory_budget",
    "rows_under_budget",
    "saved_tensor_bytes",
]


DEFAULT_CPU_MEMORY_BUDGET = 2 * 1024**3
MAX_ROWS_PER_CALL = 64
_PROBE_ROWS = 2
_PROBE_BATCH = 8
# Batched rows must beat the loop by this factor: on a shared CPU timings jitter by tens of
# percent, and the loop needs the least memory.
_BATCHED_ADVANTAGE = 0.9


@dataclass(frozen=True)
class EngineChoice:
    """What ``engine="auto"`` chose for one (model, input size, device, dtype), and why.

    Attributes
    ----------
    engine
        The exact engine used from then on.
    rows_per_call
        Rows per backward call of the batched engine (under the memory budget).
    naive_seconds_per_row, batched_seconds_per_row
        The measured times per Jacobian row.
    """

    engine: ExactEngine
    rows_per_call: int
    naive_seconds_per_row: float
    batched_seconds_per_row: float


_ChoiceKey: TypeAlias = tuple[tuple[int, ...], str, str]
_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[_ChoiceKey, EngineChoice]] = (
    weakref.WeakKeyDictionary()
)


def cached_engine_choices(model: nn.Module) -> dict[_ChoiceKey, EngineChoice]:
    """The measurements ``engine="auto"`` made for ``model``.

    Keyed by (forward-pass input shape, device, dtype).
    """
    return dict(_CHOICES.get(model, {}))


def default_memory_budget(device: torch.device) -> int:
    """Bytes one batched backward call may use: half the free GPU memory, or 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return DEFAULT_CPU_MEMORY_BUDGET


@contextmanager
def saved_tensor_bytes() -> Iterator[list[int]]:
    """Count the bytes autograd saves during a forward pass (a one-element list, filled in place).

    A batched backward call holds about that much per row, which sizes the chunks.
    """
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield total


def rows_under_budget(
    bytes_per_row: int, memory_budget_bytes: int, rows_per_call: int | None = None
) -> int:
    """Rows per batched backward call: ``rows_per_call`` if given, else what fits the budget.

    The values come from a validated :class:`instasal.saliency.SmoothGradConfig` (both >= 1).
    """
    if rows_per_call is not None:
        return rows_per_call
    return max(1, min(MAX_ROWS_PER_CALL, memory_budget_bytes // max(bytes_per_row, 1)))


class _RunningMax:
    """Per-entry value of largest magnitude, sign kept, earlier rows winning ties."""

    def __init__(self) -> None:
        self.best: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        if rows.shape[0] == 1:
            candidate = rows[0]
        else:
            # argmax returns the first maximal index: ties keep the earlier row.
            index = rows.abs().argmax(dim=0, keepdim=True)
            candidate = rows.gather(0, index)[0]
        if self.best is None:
            self.best = candidate
        else:
            self.best = torch.where(candidate.abs() > self.best.abs(), candidate, self.best)

    def result(self) -> torch.Tensor:
        if self.best is None:
            raise RuntimeError("no Jacobian row was aggregated")
        return self.best


def _naive_rows(flat: torch.Tensor, inputs: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    # The logit of voxel v summed over the draws of the batch: draws are independent (checked by
    # the caller), so its gradient holds every draw's own row.
    rows = [
        torch.autograd.grad(flat[:, int(v)].sum(), inputs, retain_graph=True)[0]
        for v in voxels.tolist()
    ]
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def _batched_rows(flat: torch.Tensor, inputs: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    one_hot = flat.new_zeros((len(voxels), *flat.shape))
    one_hot[torch.arange(len(voxels), device=flat.device), :, voxels] = 1
    return torch.autograd.grad(
        flat,
        inputs,
        grad_outputs=one_hot,
        retain_graph=True,
        is_grads_batched=True,
    )[0]


_ROW_FUNCTIONS: dict[
    ExactEngine, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
] = {
    "naive": _naive_rows,
    "batched": _batched_rows,
}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _RowStream:
    """The rows of several domains, in order, pulled in calls of a chosen engine and size."""

    def __init__(
        self,
        logits: torch.Tensor,
        inputs: torch.Tensor,
        domains: Sequence[torch.Tensor],
        advance: Callable[[int], None] | None,
    ) -> None:
        self.inputs, self.advance = inputs, advance
        self.draws = inputs.shape[0]
        self.flat = logits.reshape(self.draws, -1)
        self.voxels = torch.cat([d for d in domains])
        # One copy to the device before the loop (pinned, not waited for) for batched rows.
        staged = self.voxels.pin_memory() if inputs.device.type == "cuda" else self.voxels
        self.device_voxels = staged.to(inputs.device, non_blocking=True)
        self.owner = torch.cat([torch.full((len(d),), i) for i, d in enumerate(domains)])
        self.maxima = [_RunningMax() for _ in domains]
        self.done = 0

    @property
    def remaining(self) -> int:
        return len(self.voxels) - self.done

    def pull(self, engine: ExactEngine, count: int, *, timed: bool = False) -> float:
        """Compute the next ``count`` rows with ``engine``; with ``timed``, return the seconds.

        Untimed pulls never wait for the device, so CUDA queues rows without synchronising.
        """
        stop = min(self.done + count, len(self.voxels))
        if timed:
            _synchronise(self.inputs.device)
        started = time.perf_counter()
        voxels = self.voxels if engine == "naive" else self.device_voxels
        rows = _ROW_FUNCTIONS[engine](self.flat, self.inputs, voxels[self.done : stop])
        owners, counts = torch.unique_consecutive(self.owner[self.done : stop], return_counts=True)
        start = 0
        for owner, count in zip(owners.tolist(), counts.tolist(), strict=True):
            self.maxima[owner].update(rows[start : start + count])
            start += count
        if timed:
            _synchronise(self.inputs.device)
        seconds = time.perf_counter() - started
        if self.advance is not None:
            self.advance((stop - self.done) * self.draws)
        self.done = stop
        return seconds

    def finish(self, engine: ExactEngine, rows_per_call: int) -> None:
        step = 1 if engine == "naive" else rows_per_call
        while self.remaining > 0:
            self.pull(engine, step)


def _measure_and_choose(stream: _RowStream, rows_per_call: int) -> EngineChoice:
    # Batched calls are probed with at most _PROBE_BATCH rows: a larger call is no slower per row,
    # so a batched win at the probe size stands, and a loss on the CPU was measured to persist.
    probe = min(rows_per_call, _PROBE_BATCH)
    stream.pull("naive", 1)  # warm-up, not timed
    naive = stream.pull("naive", _PROBE_ROWS, timed=True) / _PROBE_ROWS
    stream.pull("batched", _PROBE_ROWS)  # warm-up (vmap set-up), not timed
    batched = stream.pull("batched", probe, timed=True) / probe
    engine: ExactEngine = "batched" if batched < _BATCHED_ADVANTAGE * naive else "naive"
    return EngineChoice(engine, rows_per_call, naive, batched)


def aggregate_rows(
    model: nn.Module,
    logits: torch.Tensor,
    inputs: torch.Tensor,
    domains: Sequence[torch.Tensor],
    *,
    aggregation: Aggregation,
    engine: EngineName,
    rows_per_call: int,
    advance: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """``A_Ω(x̃)`` for every domain placed in one forward pass (SPEC §2, aggregation).

    Parameters
    ----------
    model
        The network (a key for the cache of ``"auto"`` measurements only).
    logits
        The target logits ``f_c(x̃)`` on the forward pass's grid, graph attached: ``[*S]``, or
        ``[B, *S]`` for B noise draws forwarded together (each draw's logits depending on that
        draw's input only).
    inputs
        The leaf ``x̃`` ``[B, C, *S]`` the logits were computed from (``requires_grad``).
    domains
        Per domain, the C-order flat indices of its voxels on the logits' grid.
    aggregation
        ``"max"``: the row entry of largest magnitude, sign kept; ``"mean"``: the gradient of the
        mean logit over Ω (one backward pass per domain; batched over domains by ``"batched"``).
    engine, rows_per_call
        The engine and its rows per backward call (see the module docstring).
    advance
        Called with the number of rows just finished (rows of every draw counted): an
        increment for the caller's count, not a :class:`instasal.typing.Progress`.

    Returns
    -------
    list of torch.Tensor
        One map shaped like ``inputs`` per domain: per draw, that draw's aggregation.
    """
    if aggregation == "mean":
        return _mean_rows(logits, inputs, domains, engine, rows_per_call, advance)
    stream = _RowStream(logits, inputs, domains, advance)
    if engine == "auto":
        key = (tuple(inputs.shape), str(inputs.device), str(inputs.dtype))
        choices = _CHOICES.setdefault(model, {})
        probe_rows = 1 + 2 * _PROBE_ROWS + min(rows_per_call, _PROBE_BATCH)
        # One row per call (all the memory budget allows) is the loop plus vmap overhead.
        if rows_per_call > 1 and key not in choices and stream.remaining >= probe_rows:
            choices[key] = _measure_and_choose(stream, rows_per_call)
        choice = choices.get(key)
        stream.finish(choice.engine if choice else "naive", rows_per_call)
    else:
        stream.finish(engine, rows_per_call)
    return [m.result() for m in stream.maxima]


def _mean_rows(
    logits: torch.Tensor,
    inputs: torch.Tensor,
    domains: Sequence[torch.Tensor],
    engine: EngineName,
    rows_per_call: int,
    advance: Callable[[int], None] | None,
) -> list[torch.Tensor]:
    draws = inputs.shape[0]
    weights = []
    for voxels in domains:
        weight = logits.new_zeros((draws, logits.numel() // draws))
        weight[:, voxels.to(logits.device)] = 1.0 / len(voxels)
        weights.append(weight.reshape(logits.shape))
    maps: list[torch.Tensor] = []
    step = rows_per_call if engine == "batched" else 1
    for start in range(0, len(weights), step):
        chunk = weights[start : start + step]
        if len(chunk) == 1:
            maps.append(torch.autograd.grad(logits, inputs, chunk[0], retain_graph=True)[0])
        else:
            batched = torch.autograd.grad(
                logits, inputs, torch.stack(chunk), retain_graph=True, is_grads_batched=True
            )[0]
            maps.extend(batched.unbind(0))
        if advance is not None:
            advance(len(chunk) * draws)
    return maps
