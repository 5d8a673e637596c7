"""Which context an explain run differentiates, and a guard against an unasked whole-volume run.

By default a run explains the decision the model made: the deployed context, the prediction's own
forward (:mod:`instasal.saliency.deployed`): instasal's sliding window (resampled in the graph
where the model runs at another voxel size), or for an nnU-Net folder nnU-Net's own predictor
rebuilt on the subject (:mod:`instasal.models.nnunet_deployed`: crop, resampling, tiles,
mirroring, folds, export). The patch context, with a note, where the prediction is not reproduced
(an nnU-Net folder whose plans resample with another function than nnU-Net's default).

A model card without a patch size leaves only the whole volume as the forward pass to
differentiate (``context="full"``). For a large volume and network that is days of work: every
voxel of every domain costs one backward pass through the whole volume per noise draw. Where the
user did not ask for ``full`` the run measures one forward and one backward pass, and refuses
before the per-lesion stage when the estimate exceeds :data:`FULL_CONTEXT_BUDGET_S`, saying what
the user can choose instead; under the budget it notes the choice and the estimate in one line.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from instasal.errors import ConfigurationError, InstasalWarning
from instasal.instances import Instance
from instasal.models.nnunet_deployed import nnunet_deployed_obstacle, with_nnunet_deployed
from instasal.models.nnunet_predict import nnunet_network
from instasal.pipeline.per_lesion import LESIONS_PER_BATCH
from instasal.prepare import PreparedSubject
from instasal.saliency import SmoothGradConfig
from instasal.saliency.inputs import run_target_logits
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.windows import end_padding, resolve_size_divisibility
from instasal.typing import Context

__all__ = [
    "FULL_CONTEXT_BUDGET_S",
    "check_full_context_cost",
    "deployed_obstacle",
    "full_context_seconds",
    "resolve_context",
    "with_deployed_forward",
]

FULL_CONTEXT_BUDGET_S = 3600.0
"""The longest estimated saliency stage a run takes in full context without being asked to."""


def _card_file(card: Mapping[str, Any]) -> str:
    """Where the user states card fields of this model (a sidecar JSON), in words."""
    kind, source = card.get("architecture"), card.get("source")
    if kind == "bundle" and card.get("hyperparameters", {}).get("bundle"):
        return str(Path(card["hyperparameters"]["bundle"]) / "instasal_card.json")
    if kind in ("torchscript", "module") and source:
        return str(Path(source).with_suffix(".json"))
    return "the model card (model.card)"


def _patch_hint(card: Mapping[str, Any]) -> str:
    return (
        f'state the network\'s training patch as "patch_size": [X, Y, Z] in {_card_file(card)} '
        "for patch context"
    )


def deployed_obstacle(prepared: PreparedSubject) -> str | None:
    """Why the deployed context cannot reproduce this model's prediction (``None``: it can)."""
    if nnunet_network(prepared.network) is None:
        return None
    obstacle = nnunet_deployed_obstacle(prepared.network)
    if obstacle is None:
        return None
    return f"the prediction is nnU-Net's own predictor, not rebuilt in the graph: {obstacle}"


def with_deployed_forward(
    prepared: PreparedSubject, context: Context, tta: bool
) -> PreparedSubject:
    """``prepared`` ready for ``context``: in the deployed context an nnU-Net folder's network
    states nnU-Net's prediction on this subject (mirroring as the prediction did: ``tta``);
    anything else unchanged (instasal's sliding window needs nothing of the subject)."""
    if context != "deployed" or nnunet_network(prepared.network) is None:
        return prepared
    return with_nnunet_deployed(prepared, tta)


def resolve_context(
    asked: Context | None, card: Mapping[str, Any], obstacle: str | None = None
) -> tuple[Context, str | None]:
    """The context of a run, and a note when by default it is not the prediction's own forward.

    By default the maps differentiate the prediction itself: ``deployed`` (the sliding window
    over the card's patch) where ``obstacle`` is ``None``, ``full`` where the card states no patch
    (the prediction is then one whole-volume pass, which ``full`` differentiates exactly). Where
    the deployed forward cannot be reproduced (``obstacle``), ``patch``, with a note saying so.

    Raises
    ------
    ConfigurationError
        When ``patch`` is asked for and the card has no patch size, or ``deployed`` for a model
        whose prediction it cannot reproduce (before any work).
    """
    has_patch = bool(card.get("patch_size"))
    if asked == "patch" and not has_patch:
        raise ConfigurationError(
            f"context patch needs the model's patch size, and model {card.get('name')!r} states "
            f"none; {_patch_hint(card)}, or pass --context full (context='full')"
        )
    if asked == "deployed" and obstacle is not None and has_patch:
        raise ConfigurationError(
            f"context deployed is not available for model {card.get('name')!r}: {obstacle}; "
            "pass --context patch or --context full"
        )
    if not has_patch and asked in (None, "deployed"):
        return "full", None
    if asked is not None:
        return asked, None
    if obstacle is None:
        return "deployed", None
    return "patch", (
        f"maps differentiate one patch around each domain, not the prediction: {obstacle}; the "
        "table's explained_prob_mean/max and explained_detects say how far that forward differs"
    )


def full_context_seconds(prepared: PreparedSubject, target: int) -> tuple[float, float]:
    """Measured seconds of one forward and of one backward pass over the whole working volume."""
    network = prepared.network
    device = model_device(network)
    x = prepared.x[None].to(device).requires_grad_(True)
    divisibility = resolve_size_divisibility(network, None, x.ndim - 2)
    with inference_state(network):
        started = time.perf_counter()
        logits = run_target_logits(network, x, target, end_padding(x.shape[2:], divisibility))
        forward = time.perf_counter() - started
        voxel = tuple(s // 2 for s in logits.shape)
        started = time.perf_counter()
        torch.autograd.grad(logits[voxel], x)
        backward = time.perf_counter() - started
    return forward, backward


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def check_full_context_cost(
    prepared: PreparedSubject,
    todo: Sequence[Instance],
    smoothgrad: SmoothGradConfig,
    card: Mapping[str, Any],
) -> None:
    """Refuse an unasked whole-volume saliency stage estimated over the budget; else note it.

    The estimate is one forward pass per noise draw and batch of domains, plus one backward pass
    per Jacobian row (every voxel of a domain with ``max`` aggregation, one per domain with
    ``mean``), per noise draw, at the measured speed of this network on this volume.

    Raises
    ------
    ConfigurationError
        When the estimate exceeds :data:`FULL_CONTEXT_BUDGET_S`: the message gives the estimate
        and the two choices (``--context full`` to run it anyway, a patch size in the card).
    """
    if not todo:
        return

    draws = smoothgrad.n_draws
    per_draw = sum(r.n_voxels if smoothgrad.aggregation == "max" else 1 for r in todo)
    rows = draws * per_draw
    forward, backward = full_context_seconds(prepared, smoothgrad.target)
    batches = -(-len(todo) // LESIONS_PER_BATCH)
    estimate = draws * batches * forward + rows * backward
    shape = "×".join(str(s) for s in prepared.x.shape[1:])
    what = (
        f"model {card.get('name')!r} states no patch size, so saliency differentiates the whole "
        f"{shape} volume for each of {rows} Jacobian rows ({len(todo)} domain(s), {draws} noise "
        f"draw(s)): about {_duration(estimate)} at the measured {backward:.2g} s per backward pass"
    )
    if estimate > FULL_CONTEXT_BUDGET_S:
        raise ConfigurationError(
            f"{what}; pass --context full (context='full') to run it anyway, or {_patch_hint(card)}"
        )
    warnings.warn(f"{what}; {_patch_hint(card)}", InstasalWarning, stacklevel=2)
