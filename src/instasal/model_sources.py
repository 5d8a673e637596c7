"""What a model name or path refers to, decided once and without torch.

:func:`instasal.models.load_model` loads what :func:`model_source` finds; the command line calls
:func:`model_source` alone to refuse a bad ``--model`` in one line before torch is imported, so
both accept and refuse the same strings with the same messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import get_args

from instasal.errors import ModelError
from instasal.typing import ArchitectureName, ModelSourceKind, PathLike

__all__ = [
    "BUILTIN_MODELS",
    "FACTORY_PATTERN",
    "ModelSource",
    "is_nnunet_folder",
    "model_source",
    "weights_folder",
]

BUILTIN_MODELS: tuple[str, ...] = get_args(ArchitectureName)
"""Names of the built-in models; the first is the default (SPEC §5)."""
FACTORY_PATTERN = re.compile(
    r"^(?P<module>[A-Za-z_][\w.]*):(?P<factory>[A-Za-z_]\w*)=(?P<weights>.+)$"
)


@dataclass(frozen=True)
class ModelSource:
    """A model to load: what kind of thing it is and where it lies.

    Attributes
    ----------
    kind
        ``"builtin"`` (shipped weights), ``"factory"`` (``module:factory=weights.pt``),
        ``"bundle"`` (a MONAI bundle folder), ``"nnunet"`` (an nnU-Net v2 trained-model folder or
        one of its ``fold_X``), ``"exported"`` (a state dict beside the card of a built-in
        architecture) or ``"torchscript"``.
    path
        The file or folder; for ``"factory"`` the weights file; for ``"builtin"`` its name.
    module, factory
        For ``"factory"``: the module to import and the callable in it.
    """

    kind: ModelSourceKind
    path: Path
    module: str = ""
    factory: str = ""


def weights_folder() -> Path:
    """The folder holding the shipped weights and cards (``instasal/weights``)."""
    return Path(str(resources.files("instasal"))) / "weights"


def is_nnunet_folder(path: Path) -> bool:
    """Whether ``path`` is an nnU-Net v2 trained-model folder or one of its ``fold_X`` folders."""
    root = path.parent if path.name.startswith("fold_") else path
    return (root / "plans.json").is_file() and (root / "dataset.json").is_file()


def model_source(name_or_path: PathLike) -> ModelSource:
    """What ``name_or_path`` names, as :func:`instasal.models.load_model` reads it.

    Raises
    ------
    ModelError
        In one line: an unknown name (the built-in ones listed), a missing file or folder, a
        missing factory weights file, or a folder that is neither a bundle nor an nnU-Net folder.

    Examples
    --------
    >>> model_source("unet").kind
    'builtin'
    """
    text = str(name_or_path)
    if text in BUILTIN_MODELS:
        return ModelSource("builtin", Path(text))
    match = FACTORY_PATTERN.match(text)
    if match is not None:
        weights = Path(match["weights"])
        if not weights.is_file():
            raise ModelError(f"{weights}: checkpoint not found")
        return ModelSource("factory", weights, match["module"], match["factory"])
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "configs").is_dir():
            return ModelSource("bundle", path)
        if is_nnunet_folder(path):
            return ModelSource("nnunet", path)
        raise ModelError(
            f"{path}: folder is neither a MONAI bundle (configs/, models/) nor an nnU-Net v2 "
            "trained-model folder (dataset.json, plans.json, fold_X/checkpoint_final.pth)"
        )
    if path.is_file():
        return ModelSource("exported" if _is_exported(path) else "torchscript", path)
    if path.suffix or len(path.parts) > 1:
        raise ModelError(f"{path}: model file or folder not found")
    raise ModelError(
        f"unknown model {text!r}; built-in models are {', '.join(BUILTIN_MODELS)}; or give a "
        "TorchScript file, a MONAI bundle folder, an nnU-Net v2 folder or module:factory=weights.pt"
    )


def _is_exported(path: Path) -> bool:
    """Whether ``path`` is a state dict beside a full card of a built-in architecture."""
    card_path = path.with_suffix(".json")
    if path.suffix != ".pt" or not card_path.is_file():
        return False
    try:
        architecture = json.loads(card_path.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        return False
    return architecture in BUILTIN_MODELS
