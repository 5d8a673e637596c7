"""Which context an explain run differentiates.

By default a run explains the decision the model made: the deployed context, the prediction's own
forward (:mod:`instasal.saliency.deployed`): instasal's sliding window (resampled in the graph
where the model runs at another voxel size), or for an nnU-Net folder nnU-Net's own predictor
rebuilt on the subject (:mod:`instasal.models.nnunet_deployed`: crop, resampling, tiles,
mirroring, folds, export). The patch context, with a note, where the prediction is not reproduced
(an nnU-Net folder whose plans resample with another function than nnU-Net's default).

A model card without a patch size leaves only the whole volume as the forward pass to
differentiate (``context="full"``): every voxel of every domain then costs one backward pass
through the whole volume per noise draw. The run notes it, with the card field that would allow
the patch context (:func:`patch_hint`); what it costs is measured and held to the user's budget
like every run's (:mod:`instasal.pipeline.cost`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instasal.errors import ConfigurationError
from instasal.models.nnunet_deployed import nnunet_deployed_obstacle, with_nnunet_deployed
from instasal.models.nnunet_predict import nnunet_network
from instasal.prepare import PreparedSubject
from instasal.typing import Context

__all__ = ["deployed_obstacle", "patch_hint", "resolve_context", "with_deployed_forward"]


def _card_file(card: Mapping[str, Any]) -> str:
    """Where the user states card fields of this model (a sidecar JSON), in words."""
    kind, source = card.get("architecture"), card.get("source")
    if kind == "bundle" and card.get("hyperparameters", {}).get("bundle"):
        return str(Path(card["hyperparameters"]["bundle"]) / "instasal_card.json")
    if kind in ("torchscript", "module") and source:
        return str(Path(source).with_suffix(".json"))
    return "the model card (model.card)"


def patch_hint(card: Mapping[str, Any]) -> str:
    """How the user gives this model's card a patch size (so that the patch context exists)."""
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
            f"none; {patch_hint(card)}, or pass --context full (context='full')"
        )
    if asked == "deployed" and obstacle is not None and has_patch:
        raise ConfigurationError(
            f"context deployed is not available for model {card.get('name')!r}: {obstacle}; "
            "pass --context patch or --context full"
        )
    if not has_patch and asked in (None, "deployed"):
        return "full", (
            f"model {card.get('name')!r} states no patch size, so saliency differentiates the "
            f"whole volume for every Jacobian row (as its prediction is one whole-volume pass); "
            f"{patch_hint(card)}"
        )
    if asked is not None:
        return asked, None
    if obstacle is None:
        return "deployed", None
    return "patch", (
        f"maps differentiate one patch around each domain, not the prediction: {obstacle}; the "
        "table's explained_prob_mean/max and explained_detects say how far that forward differs"
    )
