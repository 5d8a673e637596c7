"""nnU-Net v2 predictions as ``nnUNetv2_predict`` makes them, and its mirroring as a module.

:func:`predict_nnunet` runs nnU-Net's own code on a loaded nnU-Net folder
(:func:`instasal.models.nnunet.load_nnunet_folder`): the configuration's preprocessor
(``run_case_npy``: transpose, crop to the non-zero box, each channel's normalisation, resampling to
the configuration's spacing), nnU-Net's sliding-window predictor (Gaussian weighting, step 0.5,
mirroring over the checkpoint's axes unless ``tta=False``, which is ``--disable_tta``) and its
export (``convert_predicted_logits_to_segmentation_with_correct_shape``: logits resampled back,
activation, crop and transpose reverted). The subject is handed over as nnU-Net's reader would:
the array as stored (or reoriented, for readers that reorient) in SimpleITK order ``(c, z, y, x)``
with the spacing in ``(z, y, x)``.

:class:`MirroredAverage` is the differentiable counterpart of that mirroring: the mean of the
network's logits over every combination of flips of the given axes, each flipped back, so saliency
can be taken of the logit nnU-Net actually thresholds (:func:`with_mirrored_network` puts it in a
prepared subject, inside the resampling when there is one, where nnU-Net mirrors too).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from instasal.errors import ModelError
from instasal.io import Subject
from instasal.models.cards import attach_card, card_of
from instasal.models.loaders import check_channels
from instasal.models.nnunet import NnUNetNetwork, NnUNetSetup, fold_networks
from instasal.prepare import (
    PreparedSubject,
    ResampledNetwork,
    reorient_subject,
    reorientation_for,
)
from instasal.typing import FloatArray

__all__ = [
    "MirroredAverage",
    "nnunet_network",
    "nnunet_tta_module",
    "predict_nnunet",
    "with_mirrored_network",
]

TILE_STEP_SIZE = 0.5  # nnUNetv2_predict's default --step_size


class MirroredAverage(nn.Module):
    """Mean of ``network``'s logits over all mirror combinations of ``axes``, each flipped back.

    For axes ``A`` the output is ``mean over S ⊆ A of flip_S(network(flip_S(x)))`` (the empty
    set included): ``2^|A|`` forwards, exact and differentiable.

    Parameters
    ----------
    network
        Takes and returns ``[B, C, X, Y, Z]``.
    axes
        Spatial axes of ``x`` to mirror (0, 1, 2 for X, Y, Z).
    """

    def __init__(self, network: nn.Module, axes: Sequence[int]) -> None:
        super().__init__()
        if any(int(a) not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ModelError(f"mirroring axes must be distinct spatial axes 0, 1, 2, got {axes}")
        self.network = network
        self.axes = tuple(int(a) for a in axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mirrored average of the logits."""
        dims = [2 + a for a in self.axes]
        combinations = [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]
        total = self.network(x)
        for flips in combinations[1:]:
            total = total + torch.flip(self.network(torch.flip(x, flips)), flips)
        return total / len(combinations)


def nnunet_network(model: nn.Module) -> NnUNetNetwork | None:
    """The :class:`NnUNetNetwork` inside ``model`` (itself, or wrapped in ``.network``), or None."""
    while not isinstance(model, NnUNetNetwork):
        inner = getattr(model, "network", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model


def nnunet_tta_module(model: nn.Module) -> nn.Module:
    """``model``'s network averaged over nnU-Net's test-time mirroring, with the same card.

    The checkpoint's mirroring axes (nnU-Net's transposed ``(z, y, x)`` axes) are stated in our
    ``(X, Y, Z)`` order; a checkpoint allowing no mirroring gives the plain average of one forward.
    The card names no Grad-CAM layer: each layer runs once per mirror, so its activation is not
    one map.

    Raises
    ------
    ModelError
        When ``model`` is not a loaded nnU-Net folder.
    """
    network = _require(model)
    setup = _setup(network)
    axes = [network.from_nnunet[a] - 2 for a in setup.mirroring_axes or ()]
    card = replace(card_of(network), gradcam_layer=None)
    return attach_card(MirroredAverage(network, sorted(axes)), card)


def with_mirrored_network(prepared: PreparedSubject) -> PreparedSubject:
    """``prepared`` with its nnU-Net network replaced by :func:`nnunet_tta_module`'s average.

    Where the subject is resampled, the mirroring happens at the model's voxel size, inside the
    resampling, as in nnU-Net.

    Raises
    ------
    ModelError
        When the prepared network is not an nnU-Net folder's.
    """
    network = prepared.network
    if isinstance(network, ResampledNetwork):
        mirrored: nn.Module = ResampledNetwork(nnunet_tta_module(network.network), network.spacing)
    else:
        mirrored = nnunet_tta_module(network)
    return replace(prepared, network=mirrored)


def predict_nnunet(
    model: nn.Module,
    subject: Subject,
    *,
    tta: bool = True,
    device: torch.device | str | None = None,
) -> FloatArray:
    """Target probability of an nnU-Net folder on ``subject``, as ``nnUNetv2_predict`` gives it.

    Parameters
    ----------
    model
        A loaded nnU-Net v2 folder (:func:`instasal.load_model` on it); with several folds
        their logits are averaged, as ``nnUNetv2_predict -f 0 1 …`` does.
    subject
        Raw intensities ``[C, X, Y, Z]`` on their stored grid, channels in the model's order.
    tta
        Mirror over the checkpoint's axes (``nnUNetv2_predict``'s default); ``False`` is
        ``--disable_tta``.
    device
        Where nnU-Net's predictor runs (default: CPU).

    Returns
    -------
    numpy.ndarray
        float32 ``[X, Y, Z]`` on the subject's own grid: the target channel of the probabilities
        nnU-Net writes with ``--save_probabilities``.

    Raises
    ------
    ModelError
        When ``model`` is not a loaded nnU-Net folder, or the subject's channels are not its.
    """
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    network = _require(model)
    setup = _setup(network)
    card = card_of(network)
    check_channels(network, subject.channel_names)
    reorientation = reorientation_for(subject, card.orientation)
    working = reorient_subject(subject, reorientation)
    target = torch.device(device) if device is not None else torch.device("cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its device choice
        predictor = nnUNetPredictor(
            tile_step_size=TILE_STEP_SIZE,
            use_gaussian=True,
            use_mirroring=tta,
            perform_everything_on_device=target.type == "cuda",
            device=target,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
    folds = fold_networks(network.network)
    # nnU-Net loads each fold's weights into the network it is given: hand it a copy
    predictor.manual_initialization(
        copy.deepcopy(folds[0]),
        setup.plans_manager,
        setup.configuration_manager,
        [fold.state_dict() for fold in folds],
        setup.dataset,
        setup.trainer_name,
        setup.mirroring_axes,
    )
    preprocessor = setup.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(
        np.ascontiguousarray(working.data.transpose(0, 3, 2, 1)),
        None,
        {"spacing": list(reversed(working.spacing))},
        setup.plans_manager,
        setup.configuration_manager,
        setup.dataset,
    )
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits,
        setup.plans_manager,
        setup.configuration_manager,
        predictor.label_manager,
        properties,
        return_probabilities=True,
        num_threads_torch=torch.get_num_threads(),
    )
    probability = np.asarray(probabilities[card.target_class], dtype=np.float32)
    return np.ascontiguousarray(reorientation.to_stored(probability.transpose(2, 1, 0)))


def _require(model: nn.Module) -> NnUNetNetwork:
    network = nnunet_network(model)
    if network is None:
        raise ModelError(f"{card_of(model).name}: not an nnU-Net v2 model folder")
    return network


def _setup(network: NnUNetNetwork) -> NnUNetSetup:
    if network.setup is None:
        raise ModelError(
            f"{card_of(network).name}: nnU-Net network without its plans (load the folder with "
            "instasal.load_model)"
        )
    return network.setup
