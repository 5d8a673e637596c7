"""Putting a model in the state saliency needs, and giving it back exactly as it was.

Saliency differentiates the model as it is used at inference: every module in eval mode, so that
BatchNorm uses (and never updates) its running statistics and dropout is off. Parameters need no
gradient (only the input does), so their ``requires_grad`` is switched off while saliency runs,
which also keeps a user's ``.grad`` buffers untouched. Both are restored in ``finally``, also when
the model raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["inference_state", "model_device"]


@contextmanager
def inference_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode and its parameters not requiring gradients.

    The training flag of every submodule (a model may mix modes) and the ``requires_grad`` flag of
    every parameter are recorded before and restored afterwards, even after an exception.

    Parameters
    ----------
    model
        The network to differentiate (SPEC §2: saliency of the trained network at inference).

    Yields
    ------
    torch.nn.Module
        The same ``model``, in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad = False
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad = requires_grad


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")
