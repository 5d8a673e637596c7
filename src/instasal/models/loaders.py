"""Finding and loading segmentation models: built-ins and users' own (SPEC §5 ``load_model``).

``load_model(name_or_path)`` accepts

- a built-in name (:func:`available_models`; the first is the default): weights and card shipped in
  ``instasal/weights/<name>.pt`` and ``<name>.json``;
- a TorchScript file (``torch.jit.save``); its card is read from an extra file
  ``instasal_card.json`` inside the archive, else from a sidecar ``<file stem>.json``, else
  inferred;
- a MONAI bundle folder (``configs/metadata.json`` + ``configs/inference.json|yaml`` with a
  ``network_def``, weights in ``models/model.pt`` or ``models/model.ts``), parsed with
  ``monai.bundle.ConfigParser``;
- ``"package.module:factory=weights.pt"``: ``factory()`` is imported and called without arguments
  and must return the ``torch.nn.Module`` whose state dict ``weights.pt`` holds (sidecar card
  ``weights.json`` optional);
- an nnU-Net v2 trained-model folder (the extra ``instasal[nnunet]``, see
  :mod:`instasal.models.nnunet`).

Every state dict is read with ``torch.load(weights_only=True)``; nothing is ever downloaded. A card
that cannot be read from the source is completed by probing the network (input channels from the
first 3D convolution, output channels from one forward pass on zeros) and may be overridden by a
sidecar JSON holding any subset of the :class:`~instasal.models.cards.ModelCard` fields. The size
divisibility a card does not state is found from the network
(:func:`instasal.models.divisibility.size_divisibility_of`).
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import monai.networks.nets  # noqa: F401 (MONAI completes bare bundle targets from imported modules)
import torch
from monai.bundle import ComponentLocator, ConfigParser
from torch import nn

from instasal.channels import canonical_channel, channel_of_file, check_channel_files
from instasal.errors import InstasalWarning, ModelError, one_line
from instasal.io import Subject
from instasal.model_sources import (
    BUILTIN_MODELS,
    FACTORY_PATTERN,
    model_source,
    weights_folder,
)
from instasal.models.allowed_classes import allowed_class
from instasal.models.architectures import build_network
from instasal.models.cards import ModelCard, attach_card, card_of, read_card
from instasal.models.divisibility import bundle_size_divisibility, size_divisibility_of
from instasal.models.nnunet import load_nnunet_folder

__all__ = [
    "FACTORY_PATTERN",
    "available_models",
    "check_channels",
    "load_model",
    "load_state_dict_file",
    "weights_folder",
    "with_model_channels",
]

CARD_EXTRA_FILE = "instasal_card.json"
_STATE_DICT_KEYS = ("state_dict", "model", "network_weights", "network")


def available_models() -> list[str]:
    """Names of the built-in models; the first is the default (SPEC §5).

    Examples
    --------
    >>> available_models()[0]
    'unet'
    """
    return list(BUILTIN_MODELS)


def load_model(name_or_path: str | Path, *, trust_code: bool = False) -> nn.Module:
    """Load a segmentation model in evaluation mode, with its card as ``model.card``.

    Parameters
    ----------
    name_or_path
        A built-in name, a model exported by ``instasal train --export`` (``<name>.pt`` beside
        its card ``<name>.json``), a TorchScript file, a MONAI bundle folder, an nnU-Net v2
        trained-model folder (or one of its ``fold_X`` folders), or
        ``"module:factory=weights.pt"``.
    trust_code
        Let a MONAI bundle's ``network_def`` run code: ``$`` expressions, ``@`` references,
        ``%`` macros, ``_requires_``/``_mode_`` and ``_target_`` outside ``monai.networks``.
        Without it such a bundle is refused in one line.

    Raises
    ------
    ModelError
        On an unknown name (the message lists the available ones), a missing or corrupt file, or
        weights that do not fit the network; the one-line message names the file.

    Examples
    --------
    >>> model = load_model("unet")  # doctest: +SKIP
    >>> model.card["channel_names"]  # doctest: +SKIP
    ['FLAIR', 'T1w']
    """
    source = model_source(name_or_path)
    if source.kind == "builtin":
        return _load_builtin(source.path.name)
    if source.kind == "factory":
        return _load_factory(source.module, source.factory, source.path)
    if source.kind == "bundle":
        return _load_bundle(source.path, trust_code)
    if source.kind == "nnunet":
        return load_nnunet_folder(source.path, trust_code)
    if source.kind == "exported":
        return _load_exported(source.path, source.path.with_suffix(".json"))
    return _load_torchscript(source.path)


def check_channels(
    model: nn.Module, channel_names: Sequence[str], files: Sequence[str | Path] = ()
) -> None:
    """Check that a subject's channels are the ones ``model`` takes, in its order.

    Names are compared case-insensitively, ignoring punctuation, with the aliases T1 = MPRAGE = T1w
    (:func:`instasal.channels.canonical_channel`); generic names ``ch0, ch1, …`` match any channel
    (only their number is checked). ``files``, the channel files, are checked by what their names
    say (BIDS suffixes, nnU-Net channel numbers: :func:`instasal.channels.check_channel_files`);
    pass none to skip that check.

    Raises
    ------
    ModelError
        When the number of channels or a channel's name differs (one line, naming both).
    ImageError
        When the file names say another channel order than the model's.
    """
    card = card_of(model)
    expected = tuple(card.channel_names)
    given = tuple(channel_names)
    if len(given) != len(expected):
        raise ModelError(
            f"model {card.name!r} expects {len(expected)} channel(s) ({', '.join(expected)}), "
            f"got {len(given)} ({', '.join(given)})"
        )
    for position, (want, have) in enumerate(zip(expected, given, strict=True)):
        if _is_generic(want) or _is_generic(have):
            continue
        if canonical_channel(want) != canonical_channel(have):
            raise ModelError(
                f"model {card.name!r} expects channel {position} to be {want!r}, got {have!r}; "
                f"give the images in the order {', '.join(expected)}"
            )
    check_channel_files(files, expected, model=card.name)


def with_model_channels(
    model: nn.Module, subject: Subject, *, ignore_channel_names: bool = False
) -> Subject:
    """``subject`` checked against ``model``'s channels, its unnamed channels named as the card
    names them.

    The checks are :func:`check_channels`' (the channel files' names too, unless
    ``ignore_channel_names``). A channel read without a name (``ch0``, ``ch1``, …) takes the
    card's name for it; where the card names none either, its file's BIDS suffix, if any. So the
    channels of a model taking T2w and PDw are called T2w and PDw, whatever list of contrasts
    instasal knows best.

    Raises
    ------
    ModelError, ImageError
        As :func:`check_channels`.
    """
    check_channels(model, subject.channel_names, () if ignore_channel_names else subject.paths)
    declared = card_of(model).channel_names
    suffixes: list[str | int | None] = [None] * len(declared)
    if len(subject.paths) == len(declared):
        suffixes = [channel_of_file(path) for path in subject.paths]
    names = [
        next(
            (n for n in (given, card_name, suffix) if isinstance(n, str) and not _is_generic(n)),
            given,
        )
        for given, card_name, suffix in zip(subject.channel_names, declared, suffixes, strict=True)
    ]
    if len(subject.paths) == 1 and len(names) > 1:
        taken = ", ".join(f"volume {i} as {name}" for i, name in enumerate(names))
        warnings.warn(
            f"{subject.paths[0]}: one 4D image; its volumes are taken in the model's channel "
            f"order: {taken} (give one file per channel to be sure of the order)",
            InstasalWarning,
            stacklevel=2,
        )
    return replace(subject, channel_names=tuple(names))


def _is_generic(name: str) -> bool:
    return re.fullmatch(r"ch\d+", name) is not None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` (unwrapping one checkpoint level).

    Raises
    ------
    ModelError
        When the file is missing, corrupt, not loadable with ``weights_only=True``, or holds no
        tensor dictionary.
    """
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
    ) as error:
        raise ModelError(f"{path}: corrupt or unreadable checkpoint ({one_line(error)})") from error
    if isinstance(payload, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ModelError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return {str(k): v for k, v in payload.items()}


def _load_weights_into(network: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    own = network.state_dict()
    converted = {
        k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()
    }
    try:
        network.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise ModelError(
            f"{path}: weights do not fit the network ({one_line(error)[:300]})"
        ) from error


def _load_builtin(name: str) -> nn.Module:
    folder = weights_folder()
    weights, card_path = folder / f"{name}.pt", folder / f"{name}.json"
    if not weights.is_file() or not card_path.is_file():
        raise ModelError(
            f"built-in model {name!r}: weights not shipped yet ({weights} missing); train it with "
            f"`instasal train --architecture {name}` or load another model"
        )
    return _load_exported(weights, card_path, source="builtin")


def _load_exported(weights: Path, card_path: Path, source: str | None = None) -> nn.Module:
    """A built-in architecture from its card, with the state dict ``weights`` loaded."""
    card = read_card(card_path).updated(source=source or str(weights))
    network = build_network(card.architecture, card.hyperparameters)
    _load_weights_into(network, load_state_dict_file(weights), weights)
    return attach_card(network.eval(), card)


def _load_factory(module_name: str, factory_name: str, weights: Path) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import module {module_name!r}: {one_line(error)}") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelError(f"module {module_name!r} has no callable {factory_name!r}")
    network = factory()
    if not isinstance(network, nn.Module):
        raise ModelError(
            f"{module_name}:{factory_name}() returned {type(network).__name__}, "
            "expected a torch.nn.Module"
        )
    _load_weights_into(network, load_state_dict_file(weights), weights)
    overrides = _sidecar(weights.with_suffix(".json"))
    card = _complete_card(
        network.eval(), weights.stem, "module", str(weights), overrides, {"factory": module_name}
    )
    return attach_card(network, card)


def _load_torchscript(path: Path) -> nn.Module:
    extra = {CARD_EXTRA_FILE: ""}
    try:
        network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as error:
        hint = ""
        if zipfile.is_zipfile(path):
            hint = "; for a state dict pass module:factory=" + str(path)
        raise ModelError(
            f"{path}: not a TorchScript model ({one_line(error)[:200]}){hint}"
        ) from error
    overrides = _sidecar(path.with_suffix(".json"))
    if extra[CARD_EXTRA_FILE]:
        overrides = (
            _parse_overrides(extra[CARD_EXTRA_FILE], f"{path}:{CARD_EXTRA_FILE}") | overrides
        )
    card = _complete_card(network.eval(), path.stem, "torchscript", str(path), overrides, {})
    return attach_card(network, card)


_CODE_KEYS = ("_requires_", "_mode_", "_disabled_")


def _untrusted_construct(node: Any) -> str | None:
    """The first construct in a bundle config item that could run code, or None."""

    if isinstance(node, str):
        return node if node[:1] in ("$", "@", "%") else None
    if isinstance(node, list):
        return next((found for item in node if (found := _untrusted_construct(item))), None)
    if not isinstance(node, Mapping):
        return None
    for key, value in node.items():
        if key in _CODE_KEYS:
            return str(key)
        if key == "_target_" and not _allowed_target(value):
            return f"_target_ {value}"
        if found := _untrusted_construct(value):
            return found
    return None


def _allowed_target(target: object) -> bool:
    """Whether a bundle ``_target_`` resolves, as MONAI resolves it, to a network class of
    ``monai.networks`` (see :mod:`instasal.models.allowed_classes`).

    A bare name is completed as MONAI's ``ComponentLocator`` completes it (the first module that
    defines it); every candidate module must give an allowed class.
    """
    if not isinstance(target, str):
        return False
    names = [target]
    if "." not in target:
        found = ComponentLocator().get_component_module_name(target)
        if found is None:
            return False
        names = [f"{module}.{target}" for module in ([found] if isinstance(found, str) else found)]
    try:
        for name in names:
            allowed_class(name, _BUNDLE_PACKAGES, where="_target_")
    except ModelError:
        return False
    return True


_BUNDLE_PACKAGES = ("monai.networks",)


def _load_bundle(folder: Path, trust_code: bool = False) -> nn.Module:

    configs = folder / "configs"
    config_file = next(
        (
            configs / f"inference.{ext}"
            for ext in ("json", "yaml", "yml")
            if (configs / f"inference.{ext}").is_file()
        ),
        None,
    )
    meta_file = configs / "metadata.json"
    if config_file is None or not meta_file.is_file():
        raise ModelError(
            f"{folder}: MONAI bundle needs configs/metadata.json and configs/inference.json "
            "(or .yaml)"
        )
    parser = ConfigParser()
    try:
        # metadata last: an inference config's own "_meta_" key would replace it
        parser.read_config(str(config_file))
        parser.read_meta(str(meta_file))
        parser["bundle_root"] = str(folder)
        metadata = dict(parser.get("_meta_", {}))
    except (ValueError, KeyError, OSError) as error:
        raise ModelError(f"{folder}: unreadable bundle config ({one_line(error)})") from error
    weights_pt, weights_ts = folder / "models" / "model.pt", folder / "models" / "model.ts"
    if weights_pt.is_file():
        construct = None if trust_code else _untrusted_construct(parser.get("network_def"))
        if construct is not None:
            raise ModelError(
                f"{config_file}: network_def holds {construct[:80]!r}, which can run code; "
                "refused (pass --trust-model-code / trust_code=True if you trust this bundle)"
            )
        try:
            network = parser.get_parsed_content("network_def", instantiate=True)
        except Exception as error:  # MONAI raises many types while instantiating user configs
            raise ModelError(
                f"{config_file}: cannot build network_def ({one_line(error)[:300]})"
            ) from error
        if not isinstance(network, nn.Module):
            raise ModelError(f"{config_file}: network_def is not a torch.nn.Module")
        _load_weights_into(network, load_state_dict_file(weights_pt), weights_pt)
        source = weights_pt
    elif weights_ts.is_file():
        network = _load_torchscript(weights_ts)
        source = weights_ts
    else:
        raise ModelError(f"{folder}: bundle has no models/model.pt or models/model.ts")
    declared = _bundle_card_fields(metadata, parser)
    overrides = declared | _sidecar(folder / CARD_EXTRA_FILE)
    card = _complete_card(
        network.eval(), folder.name, "bundle", str(source), overrides, {"bundle": str(folder)}
    )
    return attach_card(network, card)


def _bundle_card_fields(metadata: Mapping[str, Any], parser: Any) -> dict[str, Any]:
    """Card fields declared by a bundle: channels, output channels, patch (``inferer#roi_size``)."""
    fields: dict[str, Any] = {}
    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    channel_def = image.get("channel_def")
    if isinstance(channel_def, Mapping) and channel_def:
        fields["channel_names"] = [str(channel_def[k]) for k in sorted(channel_def, key=int)]
    elif isinstance(image.get("num_channels"), int):
        fields["channel_names"] = _generic_names(image["num_channels"])
    pred = data_format.get("outputs", {}).get("pred", {})
    if isinstance(pred.get("num_channels"), int):
        fields["out_channels"] = pred["num_channels"]
    roi = parser.get("inferer#roi_size", None) if "inferer" in parser.get() else None
    shape = roi if roi is not None else image.get("spatial_shape")
    if isinstance(shape, Sequence) and len(shape) == 3 and all(isinstance(s, int) for s in shape):
        fields["patch_size"] = list(shape)
    divisibility = bundle_size_divisibility(image.get("spatial_shape"))
    if divisibility is not None:
        fields["size_divisibility"] = list(divisibility)
    return fields | _bundle_geometry(parser.get())


def _bundle_geometry(config: Any) -> dict[str, Any]:
    """Orientation and voxel size a bundle's transforms impose (``Orientation(d)``, ``Spacing(d)``).

    Read from the raw configuration (nothing is instantiated); only literal values count.
    """
    fields: dict[str, Any] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
            axcodes, pixdim = node.get("axcodes"), node.get("pixdim")
            if target in ("Orientationd", "Orientation") and isinstance(axcodes, str):
                fields.setdefault("orientation", axcodes.upper())
            if (
                target in ("Spacingd", "Spacing")
                and isinstance(pixdim, Sequence)
                and len(pixdim) == 3
                and all(isinstance(v, int | float) for v in pixdim)
            ):
                fields.setdefault("spacing_mm", [float(v) for v in pixdim])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return fields


def _sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return _parse_overrides(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}: unreadable model card ({error})") from error


def _parse_overrides(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"{where}: model card is not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise ModelError(f"{where}: model card must be a JSON object")
    return payload


def _generic_names(count: int) -> list[str]:
    """Names of channels a model's source does not name: ``ch0, ch1, …`` (any channel fits)."""
    return [f"ch{k}" for k in range(count)]


def _complete_card(
    network: nn.Module,
    name: str,
    architecture: str,
    source: str,
    overrides: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
) -> ModelCard:
    """A card from what the source declared, completed by probing the network."""
    fields: dict[str, Any] = {
        "name": name,
        "architecture": architecture,
        "hyperparameters": dict(hyperparameters),
        "source": source,
    } | dict(overrides)
    if "channel_names" not in fields:
        fields["channel_names"] = _generic_names(_probe_in_channels(network, source))
    if "size_divisibility" not in fields:
        found = size_divisibility_of(network, len(fields["channel_names"]))
        if found is not None:
            fields["size_divisibility"] = list(found)
    if "out_channels" not in fields:
        fields["out_channels"] = _probe_out_channels(network, len(fields["channel_names"]), fields)
    if fields["out_channels"] == 1:
        fields.setdefault("output_activation", "sigmoid")
        fields.setdefault("target_class", 0)
    return ModelCard.from_dict(fields, where=f"{source} (model card)")


def _probe_in_channels(network: nn.Module, source: str) -> int:
    for parameter in network.parameters():
        if parameter.ndim == 5:
            return int(parameter.shape[1])
    raise ModelError(
        f"{source}: cannot infer the number of input channels (no 3D convolution found); "
        "give a model card with channel_names"
    )


def _probe_out_channels(network: nn.Module, in_channels: int, fields: Mapping[str, Any]) -> int:
    side = fields.get("patch_size") or [32, 32, 32]
    multiples = fields.get("size_divisibility") or [1, 1, 1]
    padded = [-(-int(n) // int(f)) * int(f) for n, f in zip(side, multiples, strict=True)]
    probe = torch.zeros(1, in_channels, *padded)
    try:
        with torch.no_grad():
            output = network(probe)
    except Exception as error:  # a user's network may fail in any way on a probe input
        raise ModelError(
            f"{fields['source']}: a forward pass on zeros of shape {tuple(probe.shape)} failed "
            f"({one_line(error)[:200]}); give a model card with out_channels and patch_size"
        ) from error
    if not isinstance(output, torch.Tensor) or output.ndim != 5:
        raise ModelError(
            f"{fields['source']}: the network must return one [B, K, X, Y, Z] tensor, got "
            f"{type(output).__name__}{tuple(getattr(output, 'shape', ()))}"
        )
    return int(output.shape[1])
