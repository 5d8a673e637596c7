"""nnU-Net v2 trained-model folders (the optional extra ``instasal[nnunet]``).

A trained-model folder is what ``nnUNetv2_train`` writes: ``dataset.json``, ``plans.json`` and
``fold_X/checkpoint_final.pth``. The network is rebuilt from the plans with nnU-Net's own
``get_network_from_plans`` (dynamic_network_architectures), not through nnU-Net's trainer-class
lookup, which imports every trainer module and so torchvision (broken on CPU-only machines, see
ENVIRONMENT.md). Deep supervision is off, as in nnU-Net's own inference.

nnU-Net works on arrays in SimpleITK order, ``(z, y, x)`` = our ``(k, j, i)``, further permuted by
the plans' ``transpose_forward``. :class:`NnUNetNetwork` wraps the network so that it takes and
returns our ``[B, C, X, Y, Z]`` arrays: what is explained is exactly the network as nnU-Net runs it
on the same voxels. nnU-Net's preprocessing facts are kept in the card: channel order from
``dataset.json``, spacing and patch size (in our axis order), normalisation schemes (the card's
``normalisation`` is ``"zscore_nonzero"`` when every channel uses nnU-Net's masked z-score — which
nnU-Net computes inside the non-zero mask of the cropped image, the same voxels for skull-stripped
inputs — ``"zscore"`` when unmasked, else ``"nnunet"``), intensity properties and mirroring axes.
The wrapper also keeps what nnU-Net's own predictor needs (:class:`NnUNetSetup`: plans, dataset
description, configuration, trainer name, mirroring axes), so that
:func:`instasal.models.nnunet_predict.predict_nnunet` reproduces ``nnUNetv2_predict`` on it.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from instasal.errors import ModelError
from instasal.model_sources import is_nnunet_folder
from instasal.models.allowed_classes import allowed_class
from instasal.models.cards import ModelCard, attach_card
from instasal.typing import Normalisation

__all__ = [
    "FoldAverage",
    "NnUNetNetwork",
    "NnUNetSetup",
    "fold_networks",
    "is_nnunet_folder",
    "load_nnunet_folder",
]

CHECKPOINT_NAME = "checkpoint_final.pth"
# nnU-Net's image readers and the array orientation each hands to the network
READER_ORIENTATIONS = {
    "SimpleITKIO": "stored",
    "NibabelIO": "stored",
    "NibabelIOWithReorient": "RAS",
}


@dataclass(frozen=True, eq=False)
class NnUNetSetup:
    """What nnU-Net's own predictor needs besides the network.

    Attributes
    ----------
    plans_manager
        nnU-Net's ``PlansManager`` of ``plans.json``.
    configuration_manager
        Its ``ConfigurationManager`` of the checkpoint's configuration.
    dataset
        ``dataset.json`` as a dictionary.
    configuration_name
        The configuration the checkpoint was trained with (e.g. ``"3d_fullres"``).
    trainer_name
        The trainer class name stored in the checkpoint.
    mirroring_axes
        The checkpoint's ``inference_allowed_mirroring_axes`` (nnU-Net's axis numbers of the
        transposed array), or ``None`` when it allows none.
    """

    plans_manager: Any
    configuration_manager: Any
    dataset: dict[str, Any]
    configuration_name: str
    trainer_name: str
    mirroring_axes: tuple[int, ...] | None


class FoldAverage(nn.Module):
    """The mean of several folds' logits, as ``nnUNetv2_predict -f 0 1 …`` averages them.

    nnU-Net sums each fold's whole sliding-window prediction and divides by the number of folds;
    the windows' blending is linear and the same for every fold, so averaging per window is the
    same function.
    """

    def __init__(self, folds: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The folds' mean logits."""
        total = self.folds[0](x)
        for fold in self.folds[1:]:
            total = total + fold(x)
        return total / len(self.folds)


def fold_networks(network: nn.Module) -> list[nn.Module]:
    """The per-fold networks inside an :class:`NnUNetNetwork`'s ``network`` (one, or a
    :class:`FoldAverage`'s folds)."""
    if isinstance(network, FoldAverage):
        return list(network.folds)
    return [network]


class NnUNetNetwork(nn.Module):
    """An nnU-Net network taking and returning ``[B, C, X, Y, Z]`` in our (nibabel) axis order.

    Parameters
    ----------
    network
        The nnU-Net network (``network.decoder.stages.*`` etc. keep their names under
        ``network.``).
    transpose_forward
        The plans' ``transpose_forward`` (a permutation of nnU-Net's ``(z, y, x)`` axes).
    """

    own_prediction: ClassVar[str] = "nnU-Net's own predictor (crop, resampling, tiles, export)"
    """What predicts this network (:func:`instasal.saliency.deployed.deployed_forward` refuses
    to stand MONAI's sliding window in for it)."""

    def __init__(
        self,
        network: nn.Module,
        transpose_forward: Sequence[int],
        setup: NnUNetSetup | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.setup = setup
        self.to_nnunet = [2 + 2 - int(axis) for axis in transpose_forward]
        inverse = [0] * 3
        for position, dim in enumerate(self.to_nnunet):
            inverse[dim - 2] = 2 + position
        self.from_nnunet = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Permute to nnU-Net's axis order, run the network, permute back."""
        output = self.network(x.permute(0, 1, *self.to_nnunet))
        return output.permute(0, 1, *self.from_nnunet)

    def to_ours(self, values: Sequence[Any]) -> list[Any]:
        """Reorder per-axis values (spacing, patch size) from nnU-Net's order to ours."""
        return [values[self.from_nnunet[d] - 2] for d in range(3)]

    def floats(self, values: Sequence[Any]) -> tuple[float, float, float]:
        """:meth:`to_ours` as three floats."""
        x, y, z = self.to_ours(values)
        return float(x), float(y), float(z)

    def ints(self, values: Sequence[Any]) -> tuple[int, int, int]:
        """:meth:`to_ours` as three integers."""
        x, y, z = self.to_ours(values)
        return int(x), int(y), int(z)


def load_nnunet_folder(path: Path, trust_code: bool = False) -> nn.Module:
    """Load an nnU-Net v2 trained-model folder (or a ``fold_X`` folder of one).

    A folder with several folds is loaded as ``nnUNetv2_predict`` without ``-f`` finds its folds:
    every ``fold_N`` with a checkpoint, their logits averaged (:class:`FoldAverage`);
    ``fold_all`` where it is the only fold. Pass ``…/fold_X`` for one fold. nnU-Net imports and
    calls the classes ``plans.json`` names by dotted path; unless ``trust_code``, only network
    classes of ``dynamic_network_architectures`` and layers of ``torch.nn`` are accepted.

    Raises
    ------
    ModelError
        When nnunetv2 is not installed, a checkpoint is missing or corrupt, the folds were trained
        with different configurations, trainers or mirroring, the plans name a class outside
        those packages (without ``trust_code``), or the weights do not fit the planned network.
    """
    try:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as error:
        raise ModelError(
            f"{path}: loading an nnU-Net v2 folder needs nnunetv2 (pip install 'instasal[nnunet]')"
        ) from error
    root, fold_folders = _resolve_folds(path)
    plans = _read_json(root / "plans.json")
    dataset = _read_json(root / "dataset.json")
    checkpoints = [_read_checkpoint(f / CHECKPOINT_NAME) for f in fold_folders]
    configuration_name, trainer_name, mirroring = _agreed_training(checkpoints, fold_folders)
    try:
        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration(configuration_name)
        if not trust_code:
            _check_planned_classes(configuration, root / "plans.json")
            _check_looked_up_names(plans, configuration.configuration, root / "plans.json")
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, ImportError) as error:
        raise ModelError(
            f"{root / 'plans.json'}: cannot build configuration {configuration_name!r} "
            f"({' '.join(str(error).split())[:200]})"
        ) from error
    folds = [
        _fold_network(plans_manager, configuration, dataset, checkpoint, folder, root)
        for checkpoint, folder in zip(checkpoints, fold_folders, strict=True)
    ]
    setup = NnUNetSetup(
        plans_manager=plans_manager,
        configuration_manager=configuration,
        dataset=dataset,
        configuration_name=configuration_name,
        trainer_name=trainer_name,
        mirroring_axes=mirroring,
    )
    orientation = _orientation(root, plans)
    network = folds[0] if len(folds) == 1 else FoldAverage(folds)
    wrapped = NnUNetNetwork(network, plans_manager.transpose_forward, setup).eval()
    card = _card(root, fold_folders, setup, wrapped, orientation)
    return attach_card(wrapped, card)


def _fold_network(
    plans_manager: Any,
    configuration: Any,
    dataset: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    folder: Path,
    root: Path,
) -> nn.Module:
    """One fold's network, built from the plans as nnU-Net builds it, with its weights."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        label_manager = plans_manager.get_label_manager(dataset)
        network = get_network_from_plans(
            configuration.network_arch_class_name,
            configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            determine_num_input_channels(plans_manager, configuration, dataset),
            label_manager.num_segmentation_heads,
            allow_init=False,
            deep_supervision=False,
        )
    except (KeyError, TypeError, ValueError, ImportError) as error:
        raise ModelError(
            f"{root / 'plans.json'}: cannot build configuration {configuration.configuration!r} "
            f"({' '.join(str(error).split())[:200]})"
        ) from error
    try:
        network.load_state_dict(checkpoint["network_weights"], strict=True)
    except (KeyError, RuntimeError) as error:
        raise ModelError(
            f"{folder / CHECKPOINT_NAME}: weights do not fit the planned network "
            f"({' '.join(str(error).split())[:200]})"
        ) from error
    return network


def _agreed_training(
    checkpoints: Sequence[Mapping[str, Any]], folders: Sequence[Path]
) -> tuple[str, str, tuple[int, ...] | None]:
    """The configuration, trainer and mirroring axes every fold was trained with."""
    seen = []
    for checkpoint in checkpoints:
        configuration = str(checkpoint.get("init_args", {}).get("configuration", "3d_fullres"))
        mirroring = checkpoint.get("inference_allowed_mirroring_axes")
        axes = tuple(int(a) for a in mirroring) if mirroring else None
        seen.append((configuration, str(checkpoint.get("trainer_name", "")), axes))
    if len(set(seen)) > 1:
        listed = "; ".join(
            f"{folder.name}: {c}, {t}, mirroring {a}"
            for folder, (c, t, a) in zip(folders, seen, strict=True)
        )
        raise ModelError(
            f"{folders[0].parent}: the folds were trained differently ({listed}); pass one fold"
        )
    return seen[0]


def _orientation(root: Path, plans: Mapping[str, Any]) -> str:
    """The card orientation of the plans' image reader (the array nnU-Net's reader returns)."""
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in READER_ORIENTATIONS:
        known = ", ".join(READER_ORIENTATIONS)
        raise ModelError(
            f"{root / 'plans.json'}: image reader {reader!r} is not supported (supported: {known})"
        )
    return READER_ORIENTATIONS[reader]


_PLANNED_NETWORKS = ("dynamic_network_architectures.architectures",)
_PLANNED_LAYERS = ("torch.nn",)


def _check_planned_classes(configuration: Any, where: Path) -> None:
    """Refuse plans naming anything but nnU-Net's network classes and torch.nn layers.

    nnU-Net resolves these names with ``pydoc.locate`` and calls what it finds; each must resolve
    (see :mod:`instasal.models.allowed_classes`) to a ``torch.nn.Module`` class defined in its
    package.
    """
    named = {"network class": configuration.network_arch_class_name}
    arguments = configuration.network_arch_init_kwargs
    for key in configuration.network_arch_init_kwargs_req_import:
        if arguments.get(key) is not None:
            named[key] = arguments[key]
    for role, name in named.items():
        packages = _PLANNED_NETWORKS if role == "network class" else _PLANNED_LAYERS
        try:
            allowed_class(name, packages, where=f"{where}: {role}")
        except ModelError as error:
            raise ModelError(
                f"{error}; nnU-Net would import and call it (pass --trust-model-code / "
                "trust_code=True if you trust this folder)"
            ) from error


def _check_looked_up_names(
    plans: Mapping[str, Any], configuration: Mapping[str, Any], where: Path
) -> None:
    """Refuse plans whose by-name lookups would find anything but nnU-Net's own components.

    nnU-Net finds the label manager, preprocessor, normalisations and resampling functions by
    searching its own packages for an attribute of that name and calls what it finds with
    arguments the plans and dataset.json hold; a module attribute it merely imports (a helper
    from ``batchgenerators``, say) would be called too. Each name must give a component of its
    role defined in nnunetv2.
    """
    import nnunetv2
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        ImageNormalization,
    )
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    home = Path(nnunetv2.__path__[0])
    lookups: list[tuple[str, object, str, type | None]] = [
        (
            "preprocessor_name",
            configuration.get("preprocessor_name"),
            "preprocessing",
            DefaultPreprocessor,
        )
    ]
    if "label_manager" in plans:
        lookups.append(
            ("label_manager", plans["label_manager"], "utilities.label_handling", LabelManager)
        )
    lookups += [
        ("normalization_schemes", scheme, "preprocessing.normalization", ImageNormalization)
        for scheme in configuration.get("normalization_schemes") or []
    ]
    lookups += [
        (role, configuration.get(role), "preprocessing.resampling", None)
        for role in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
    ]
    for role, name, package, base in lookups:
        found = None
        if isinstance(name, str) and name.isidentifier():
            folder = home.joinpath(*package.split("."))
            found = recursive_find_python_class(str(folder), name, f"nnunetv2.{package}")
        defined_in_nnunet = getattr(found, "__module__", "").startswith(f"nnunetv2.{package}")
        right_kind = (
            isinstance(found, type) and issubclass(found, base)
            if base is not None
            else inspect.isfunction(found)
        )
        if not (defined_in_nnunet and right_kind):
            raise ModelError(
                f"{where}: {role} {name!r} is not one of nnU-Net's own "
                f"{'functions' if base is None else 'classes'} in nnunetv2.{package}; nnU-Net "
                "would call what it finds (pass --trust-model-code / trust_code=True if you trust "
                "this folder)"
            )


def _resolve_folds(path: Path) -> tuple[Path, list[Path]]:
    """The folder's root and the folds to load: the one named, else nnU-Net's own choice."""
    if path.name.startswith("fold_"):
        return path.parent, [path]
    trained = [p for p in path.glob("fold_*") if (p / CHECKPOINT_NAME).is_file()]
    numbered = sorted((p for p in trained if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    if numbered:
        return path, numbered
    if trained:
        return path, sorted(trained)[:1]
    raise ModelError(f"{path}: no fold_X/{CHECKPOINT_NAME} in this nnU-Net folder")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable JSON ({error})") from error
    if not isinstance(payload, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return payload


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with ``weights_only=True``.

    nnU-Net stores numpy scalars in its logging dictionary, which the weights-only unpickler
    refuses unless those (data-only) numpy types are allowed explicitly.
    """
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    allowed = [
        np.dtype,
        _numpy_scalar_constructor(),
        *{type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")},
    ]
    try:
        with torch.serialization.safe_globals(allowed):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types on corrupt or unsafe pickles
        raise ModelError(
            f"{path}: corrupt or unreadable nnU-Net checkpoint "
            f"({' '.join(str(error).split())[:200]})"
        ) from error
    if not isinstance(payload, dict) or not isinstance(payload.get("network_weights"), Mapping):
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return payload


def _numpy_scalar_constructor() -> Any:
    """numpy's scalar unpickling helper (``numpy._core`` from numpy 2, ``numpy.core`` before)."""
    try:
        module = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        module = importlib.import_module("numpy.core.multiarray")
    return module.scalar


def _normalisation(schemes: Sequence[str], masked: Sequence[bool]) -> Normalisation:
    if all(s == "ZScoreNormalization" for s in schemes):
        if all(masked):
            return "zscore_nonzero"
        if not any(masked):
            return "zscore"
    return "nnunet"


def _card(
    root: Path,
    fold_folders: Sequence[Path],
    setup: NnUNetSetup,
    wrapped: NnUNetNetwork,
    orientation: str,
) -> ModelCard:
    """The card of the loaded folds (one card: they share plans, configuration and trainer)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans_manager, configuration = setup.plans_manager, setup.configuration_manager
    label_manager = plans_manager.get_label_manager(setup.dataset)
    in_channels = determine_num_input_channels(plans_manager, configuration, setup.dataset)
    channels = setup.dataset.get("channel_names", setup.dataset.get("modality", {}))
    channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
    if len(channel_names) != in_channels:
        channel_names = [f"ch{k}" for k in range(in_channels)]
    pools = np.prod(np.asarray(configuration.pool_op_kernel_sizes), axis=0).tolist()
    regions = bool(label_manager.has_regions)
    stages = len(configuration.network_arch_init_kwargs.get("n_conv_per_stage_decoder", [])) or (
        len(configuration.pool_op_kernel_sizes) - 1
    )
    folds = "+".join(f.name for f in fold_folders)
    mirroring = setup.mirroring_axes
    return ModelCard(
        name=f"{root.name}/{folds}",
        architecture="nnunetv2",
        hyperparameters={
            "network_class": configuration.network_arch_class_name,
            "arch_kwargs": dict(configuration.network_arch_init_kwargs),
            "configuration": setup.configuration_name,
            "trainer": setup.trainer_name,
            "fold": folds,
        },
        channel_names=tuple(channel_names),
        out_channels=int(label_manager.num_segmentation_heads),
        target_class=0 if regions else 1,
        output_activation="sigmoid" if regions else "softmax",
        spacing_mm=wrapped.floats(configuration.spacing),
        patch_size=wrapped.ints(configuration.patch_size),
        size_divisibility=wrapped.ints(pools),
        normalisation=_normalisation(
            configuration.normalization_schemes, configuration.use_mask_for_norm
        ),
        threshold=0.5,
        orientation=orientation,
        # an ensemble runs each layer once per fold: no one activation to take a CAM of
        gradcam_layer=(
            f"network.decoder.stages.{max(stages - 2, 0)}" if len(fold_folders) == 1 else None
        ),
        training={"nnunet_dataset": plans_manager.dataset_name, "plans": plans_manager.plans_name},
        source=str(fold_folders[0] / CHECKPOINT_NAME if len(fold_folders) == 1 else root),
        preprocessing={
            "normalization_schemes": list(configuration.normalization_schemes),
            "use_mask_for_norm": list(configuration.use_mask_for_norm),
            "transpose_forward": list(plans_manager.transpose_forward),
            "spacing_nnunet_order": list(configuration.spacing),
            "patch_size_nnunet_order": list(configuration.patch_size),
            "foreground_intensity_properties_per_channel": dict(
                plans_manager.foreground_intensity_properties_per_channel
            ),
            "inference_allowed_mirroring_axes": list(mirroring) if mirroring else None,
        },
    )
