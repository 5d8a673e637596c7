"""Instance Grad-CAM++ and Grad-CAM (SPEC §3): qualitative maps at a chosen layer.

The instance score is ``s_Ω(x) = Σ_{v∈Ω} f_c(x)[v]``; with activations ``A`` of the layer and
``G = ∂s_Ω/∂A``:

- Grad-CAM++: ``α_k[i] = G_k[i]² / (2·G_k[i]² + Σ_j A_k[j]·G_k[i]³)`` (0 where the denominator is
  0), ``w_k = Σ_i α_k[i]·ReLU(G_k[i])``;
- Grad-CAM: ``w_k = mean_i G_k[i]``;

and ``M = ReLU(Σ_k w_k A_k)``, trilinearly upsampled to the input grid (or to the patch, then
placed). The map is raw; :func:`normalise_map` gives the separately named [0, 1] copy.

Note: MONAI's ``GradCAMpp`` sums ``A_k[j]·G_k[j]³`` inside the denominator (SPEC §3 and the
Grad-CAM++ paper keep ``G_k[i]³`` outside the sum); the two agree where ``G`` is constant per
channel.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from instasal.errors import ConfigurationError, ModelError
from instasal.saliency.config import CamVariant, ExplainedPass, GradCamConfig
from instasal.saliency.inputs import as_domains, as_input, run_target_logits
from instasal.saliency.model_state import inference_state, model_device
from instasal.saliency.windows import context_windows, end_padding, shared_windows
from instasal.typing import Context, DomainLike, InputLike

__all__ = [
    "InstanceGradCam",
    "LayerCapture",
    "cam_from_activations",
    "capture_layer",
    "capture_obstacle",
    "instance_gradcam",
    "instance_gradcam_many",
    "normalise_map",
]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class LayerCapture:
    """The activations a layer produced in the forward passes run inside :func:`capture_layer`."""

    name: str
    activations: list[torch.Tensor] = field(default_factory=list)

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ModelError(
                f"layer {self.name!r} returns {type(output).__name__}, not a tensor; "
                "choose a layer whose output is one activation tensor"
            )
        self.activations.append(output)
        # Later in-place operations (e.g. an inplace ReLU) act on this copy, not on A itself.
        return output.clone()


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [name for name in modules if name]
    nearby = difflib.get_close_matches(layer, names, n=5, cutoff=0.4) or names[:5]
    raise ConfigurationError(
        f"layer {layer!r} is not a module of the model (names as in model.named_modules()); "
        f"nearby names: {', '.join(nearby)}"
    )


def capture_obstacle(model: nn.Module, layer: str | None) -> str | None:
    """Why :func:`capture_layer` cannot record ``layer`` of ``model``; ``None`` when it can.

    TorchScript modules (scripted, traced or read by ``torch.jit.load``) take no forward hook,
    neither does any module inside them; ``layer=None`` asks only about the model as a whole.

    Raises
    ------
    ConfigurationError
        If ``layer`` is not a name from ``model.named_modules()`` (nearby names are listed).
    """
    if isinstance(model, torch.jit.ScriptModule):
        return "the model is TorchScript, whose modules take no forward hook"
    if layer is not None and isinstance(_module(model, layer), torch.jit.ScriptModule):
        return f"layer {layer!r} is TorchScript, whose modules take no forward hook"
    return None


@contextmanager
def capture_layer(model: nn.Module, layer: str) -> Iterator[LayerCapture]:
    """Record the output of ``model``'s module ``layer`` during the block.

    The forward hook is removed in ``finally``: none is left behind, also after an exception.

    Raises
    ------
    ConfigurationError
        If ``layer`` is not a name from ``model.named_modules()`` (nearby names are listed).
    ModelError
        If the layer takes no forward hook (:func:`capture_obstacle`: TorchScript).
    """
    obstacle = capture_obstacle(model, layer)
    if obstacle is not None:
        raise ModelError(f"Grad-CAM++ cannot record layer {layer!r}: {obstacle}")
    capture = LayerCapture(layer)
    handle = _module(model, layer).register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


def cam_from_activations(
    activations: torch.Tensor, gradients: torch.Tensor, variant: CamVariant
) -> torch.Tensor:
    """``M = ReLU(Σ_k w_k A_k)`` on the layer's grid from ``A`` and ``G`` ``[K', *S]`` (SPEC §3)."""
    channels = activations.shape[0]
    flat_a = activations.reshape(channels, -1)
    flat_g = gradients.reshape(channels, -1)
    if variant == "gradcam":
        weights = flat_g.mean(dim=1)
    else:
        squared = flat_g.pow(2)
        denominator = 2 * squared + flat_a.sum(dim=1, keepdim=True) * flat_g.pow(3)
        safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator != 0, squared / safe, torch.zeros_like(squared))
        weights = (alpha * F.relu(flat_g)).sum(dim=1)
    combined = (weights.reshape(channels, *[1] * (activations.ndim - 1)) * activations).sum(0)
    return F.relu(combined)


def _upsample(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(cam.shape) == tuple(size):
        return cam
    mode = _INTERPOLATION[len(size)]
    return F.interpolate(cam[None, None], size=tuple(size), mode=mode, align_corners=False)[0, 0]


def normalise_map(saliency_map: torch.Tensor) -> torch.Tensor:
    """The [0, 1] copy of a map: ``(m − min) / (max − min)``; all zeros for a constant map.

    For display only (Grad-CAM, SPEC §3). SmoothGrad maps are quantitative and are never rescaled.
    """
    low, high = saliency_map.min(), saliency_map.max()
    if high == low:
        return torch.zeros_like(saliency_map)
    return (saliency_map - low) / (high - low)


class InstanceGradCam:
    """Instance Grad-CAM++ (or Grad-CAM) of one model at one layer (SPEC §3): constructed once,
    then called on subjects, domains and the forward pass to explain.

    Parameters
    ----------
    model
        Any module mapping ``[B, C, X, Y, Z]`` to logits ``[B, K, X, Y, Z]``.
    config
        The method's settings (``None``: :class:`GradCamConfig`'s); its layer, else the model
        card's ``gradcam_layer``, is resolved here.

    Raises
    ------
    ConfigurationError
        If neither the config nor the model card names a layer.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Conv3d(4, 2, 1))
    >>> domain = torch.zeros(8, 8, 8, dtype=torch.bool)
    >>> domain[3:5, 3:5, 3:5] = True
    >>> method = InstanceGradCam(net, GradCamConfig(layer="0"))
    >>> method.layer, method.attribute(torch.randn(2, 8, 8, 8), {4: domain})[4].shape
    ('0', torch.Size([8, 8, 8]))
    """

    def __init__(self, model: nn.Module, config: GradCamConfig | None = None) -> None:
        self.model = model
        self.config = config or GradCamConfig()
        self.layer = self.config.layer_of(model)

    def attribute(
        self,
        x: InputLike,
        domains: Mapping[int, DomainLike],
        explained: ExplainedPass | None = None,
    ) -> dict[int, torch.Tensor]:
        """Maps ``[X, Y, Z]`` of several domains, raw, one forward pass per window.

        Equal to one :func:`instance_gradcam` call per domain with the same settings.
        ``explained`` as in :meth:`instasal.saliency.InstanceSmoothGrad.attribute`; its
        ``"deployed"`` context is run on the patch window (a layer's activation belongs to one
        prediction window, not to their blend: ``docs/method.md``).
        """
        model, layer = self.model, self.layer
        explained = explained or ExplainedPass()
        x = as_input(x)
        spatial = tuple(x.shape[1:])
        ids, masks = as_domains(domains, spatial)
        if not masks:
            return {}
        if explained.context == "deployed":
            explained = replace(explained, context="patch")
        windows, divisibility = context_windows(model, masks, explained)
        groups = shared_windows(windows)

        device = model_device(model)
        maps: dict[int, torch.Tensor] = {}
        with inference_state(model), torch.enable_grad(), capture_layer(model, layer) as capture:
            for window, members in groups.items():
                crop = window.crop(x.detach().to(device)).unsqueeze(0)
                inputs = crop.clone().requires_grad_(True)
                capture.activations.clear()
                padding = end_padding(window.size, divisibility)
                logits = run_target_logits(model, inputs, explained.target, padding)
                if len(capture.activations) != 1:
                    raise ConfigurationError(
                        f"layer {layer!r} ran {len(capture.activations)} times in one forward "
                        "pass; choose a layer that runs exactly once"
                    )
                activations = capture.activations[0]
                for index in members:
                    score = logits[masks[index][window.slices].to(device)].sum()
                    (gradients,) = torch.autograd.grad(
                        score, activations, retain_graph=True, allow_unused=True
                    )
                    if gradients is None:
                        raise ConfigurationError(
                            f"layer {layer!r} does not influence the model's output; choose a "
                            "layer on the path to the logits"
                        )
                    cam = cam_from_activations(
                        activations[0].detach(), gradients[0], self.config.variant
                    )
                    # The layer saw the padded input: upsample to it, then drop the padding.
                    padded = [n + extra for n, extra in zip(window.size, padding, strict=True)]
                    cam = _upsample(cam, padded)[tuple(slice(0, n) for n in window.size)]
                    maps[ids[index]] = window.place(cam, spatial).to(x.device)
                del logits, activations
        return {domain_id: maps[domain_id] for domain_id in ids}


def instance_gradcam_many(
    model: nn.Module,
    x: InputLike,
    domains: Mapping[int, DomainLike],
    config: GradCamConfig | None = None,
    explained: ExplainedPass | None = None,
) -> dict[int, torch.Tensor]:
    """``InstanceGradCam(model, config).attribute(x, domains, explained)``: the maps of several
    domains (see :meth:`InstanceGradCam.attribute`)."""
    return InstanceGradCam(model, config).attribute(x, domains, explained)


def instance_gradcam(
    model: nn.Module,
    x: InputLike,
    domain: DomainLike,
    *,
    layer: str,
    variant: CamVariant = "gradcam++",
    target: int = 1,
    context: Context = "full",
    patch_size: int | Sequence[int] | None = None,
    size_divisibility: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Instance Grad-CAM++ (or Grad-CAM) map of one domain Ω, raw, on the input grid (SPEC §3, §5).

    Parameters
    ----------
    model
        Any module mapping ``[B, C, X, Y, Z]`` to logits ``[B, K, X, Y, Z]`` (eval mode while the
        map is computed; modes and flags restored; its hook removed, also after an exception).
    x
        One subject ``[C, X, Y, Z]``; not modified.
    domain
        Boolean ``[X, Y, Z]``: the voxels of Ω whose target logits make the instance score.
    layer
        A name from ``model.named_modules()``; its output must be one activation tensor. The authors
        used MONAI's UNet's second decoder level, ``"model.1.submodule.2.conv"`` in their build.
    variant
        ``"gradcam++"`` or ``"gradcam"``.
    target
        Output channel (as in :func:`instasal.saliency.instance_smoothgrad`).
    context, patch_size, size_divisibility
        As in :func:`instasal.saliency.instance_smoothgrad`: ``"patch"`` computes the map on one
        patch around Ω and places it, zero outside; ``"deployed"`` is ``"patch"`` here (a layer's
        activation belongs to one window, not to the blend of the prediction's windows).

    Returns
    -------
    torch.Tensor
        ``[X, Y, Z]``, non-negative, unnormalised (see :func:`normalise_map` for the [0, 1] copy).

    Raises
    ------
    ConfigurationError
        On an unknown layer (nearby names listed) or variant, or the input errors of
        :func:`instasal.saliency.instance_smoothgrad`.
    """
    explained = ExplainedPass(target, context, patch_size, size_divisibility)
    method = InstanceGradCam(model, GradCamConfig(layer=layer, variant=variant))
    return method.attribute(x, {0: domain}, explained)[0]
