"""The explained forward pass itself: its logits over each domain, without noise.

A map is the derivative of one forward pass, chosen by the context: the prediction's own
(``"deployed"``), one patch around Ω (``"patch"``) or the whole volume in one pass (``"full"``).
Where that pass is not the prediction, it need not even detect the lesion the prediction found.
:func:`explained_logits` gives every output channel of the explained pass at Ω's voxels, so a
table can put its probability beside the prediction's.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from instasal.saliency.config import ExplainedPass
from instasal.saliency.deployed import deployed_forward
from instasal.saliency.inputs import as_domains, as_input
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.windows import (
    context_windows,
    end_padding,
    padded_forward,
    shared_windows,
)
from instasal.typing import DomainLike, InputLike

__all__ = ["explained_logits"]


def explained_logits(
    model: nn.Module,
    x: InputLike,
    domains: Mapping[int, DomainLike],
    explained: ExplainedPass,
) -> dict[int, torch.Tensor]:
    """Logits ``[K, n_voxels]`` of the forward pass ``explained`` names, at each domain's voxels
    (C order), on the noise-free input (every output channel: ``explained.target`` is not used).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Conv3d(2, 2, 1)
    >>> domain = torch.zeros(4, 4, 4, dtype=torch.bool)
    >>> domain[1, 1, 1:3] = True
    >>> explained_logits(net, torch.randn(2, 4, 4, 4), {7: domain}, ExplainedPass())[7].shape
    torch.Size([2, 2])
    """
    x = as_input(x)
    ids, masks = as_domains(domains, tuple(x.shape[1:]))
    if not masks:
        return {}
    device = model_device(model)
    volume = x.detach().to(device)
    found: dict[int, torch.Tensor] = {}
    with inference_state(model), torch.no_grad():
        if explained.context == "deployed":
            deployed = deployed_forward(model, masks[0].shape, explained.patch_size)
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, mask in enumerate(masks):
                groups.setdefault(deployed.covering(mask), []).append(index)
            for tiles, members in groups.items():
                logits = deployed.logits(volume[None], tiles)[0]
                for index in members:
                    found[ids[index]] = logits[:, masks[index].to(device)].cpu()
            return found
        windows, divisibility = context_windows(model, masks, explained)
        for window, members in shared_windows(windows).items():
            crop = window.crop(volume)[None]
            logits = padded_forward(model, crop, end_padding(window.size, divisibility))[0]
            for index in members:
                found[ids[index]] = logits[:, masks[index][window.slices].to(device)].cpu()
    return found
