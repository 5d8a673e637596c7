"""Checking and normalising saliency inputs once, at the boundary (SPEC §5).

``x`` is one subject ``[C, X, Y, Z]``, ``domain`` a boolean ``[X, Y, Z]``; both may be given as
torch tensors or numpy arrays. Every problem is reported with the argument name, the value seen and
what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError, ModelError

__all__ = ["as_domain", "as_domains", "as_input", "run_target_logits", "target_channel"]


def as_input(x: object) -> torch.Tensor:
    """``x`` as a finite floating-point tensor ``[C, X, Y, Z]`` (not copied when already one).

    Raises
    ------
    ConfigurationError
        If ``x`` is not 4D, not floating point, or holds NaN or infinity.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ConfigurationError(
            f"x must be a torch.Tensor or numpy array [C, X, Y, Z], got {type(x).__name__}"
        )
    if x.ndim != 4:
        raise ConfigurationError(
            f"x must have 4 dimensions [C, X, Y, Z] (one subject, no batch axis), "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ConfigurationError(f"x must be floating point, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ConfigurationError("x holds NaN or infinite values; saliency needs a finite input")
    return x


def as_domain(domain: object, spatial_shape: tuple[int, ...], name: str = "domain") -> torch.Tensor:
    """``domain`` as a boolean CPU tensor on the input grid.

    Integer arrays are accepted when they hold only 0 and 1.

    Raises
    ------
    ConfigurationError
        If the shape differs from ``spatial_shape``, values are not boolean, or the domain is empty.
    """
    if isinstance(domain, np.ndarray):
        domain = torch.from_numpy(np.ascontiguousarray(domain))
    if not isinstance(domain, torch.Tensor):
        raise ConfigurationError(
            f"{name} must be a boolean torch.Tensor or numpy array, got {type(domain).__name__}"
        )
    if tuple(domain.shape) != tuple(spatial_shape):
        raise ConfigurationError(
            f"{name} shape {tuple(domain.shape)} does not match the spatial shape of x "
            f"{tuple(spatial_shape)}"
        )
    if domain.dtype != torch.bool:
        if (
            domain.is_floating_point()
            or domain.is_complex()
            or bool(((domain != 0) & (domain != 1)).any())
        ):
            raise ConfigurationError(
                f"{name} must be boolean (or hold only 0 and 1), got dtype {domain.dtype}"
            )
        domain = domain != 0
    if not bool(domain.any()):
        raise ConfigurationError(f"{name} is empty: a domain Ω needs at least one voxel")
    return domain.detach().to("cpu")


def as_domains(
    domains: Mapping[int, object], spatial_shape: tuple[int, ...]
) -> tuple[list[int], list[torch.Tensor]]:
    """The ids of ``domains`` in their order and each domain through :func:`as_domain` (an error
    names the domain by its id)."""
    ids = list(domains)
    return ids, [as_domain(domains[i], spatial_shape, name=f"domain {i}") for i in ids]


def target_channel(target: int, n_outputs: int) -> int:
    """The output channel whose logits are explained.

    With ``K >= 2`` outputs ``target`` is the channel index, ``0 <= target < K``. A single-output
    model (``K = 1``, probability ``sigmoid(f(x))[0]``, SPEC notation) has one logit, the lesion
    logit: ``target`` 1 (the default, "lesion") and 0 both select it.

    Raises
    ------
    ConfigurationError
        If ``target`` is out of range for the model's ``K`` outputs.
    """
    if n_outputs == 1 and target in (0, 1):
        return 0
    if not 0 <= target < n_outputs:
        allowed = "0 or 1" if n_outputs == 1 else f"0..{n_outputs - 1}"
        raise ConfigurationError(
            f"target must be {allowed} for a model with {n_outputs} output channel(s), got {target}"
        )
    return target


def run_target_logits(
    model: nn.Module,
    batch: torch.Tensor,
    target: int,
    padding: Sequence[int] | None = None,
) -> torch.Tensor:
    """Forward ``batch`` ``[B, C, *S]`` and return the target logits (graph kept).

    ``[*S]`` for a batch of one, ``[B, *S]`` otherwise (several noise draws in one pass).

    With ``padding``, the input is zero-padded by that many voxels at the end of each spatial axis
    inside the graph (for a network's size divisibility) and the output cropped back to ``S``.

    Raises
    ------
    ModelError
        If the model does not return one tensor ``[B, K, *S]`` on the input's spatial grid.
    ConfigurationError
        If ``target`` is out of range (see :func:`target_channel`).
    """
    spatial = tuple(batch.shape[2:])
    padded = batch
    if padding is not None and any(padding):
        pairs = [amount for extra in reversed(padding) for amount in (0, extra)]
        padded = F.pad(batch, pairs)
    output = model(padded)
    if not isinstance(output, torch.Tensor):
        raise ModelError(
            f"the model must return one logit tensor [B, K, X, Y, Z], got {type(output).__name__}"
        )
    padded_spatial = tuple(padded.shape[2:])
    if (
        output.ndim != padded.ndim
        or output.shape[0] != batch.shape[0]
        or tuple(output.shape[2:]) != padded_spatial
    ):
        raise ModelError(
            f"the model output has shape {tuple(output.shape)}; expected "
            f"[{batch.shape[0]}, K, *{padded_spatial}] for an input of shape {tuple(padded.shape)}"
        )
    logits = output[:, target_channel(target, output.shape[1])]
    logits = logits[(slice(None), *(slice(0, n) for n in spatial))]
    return logits[0] if batch.shape[0] == 1 else logits
