"""Shipping trained weights: state dict plus card, and the provenance a card records.

The built-ins are stored as ``instasal/weights/<name>.pt`` (a state dict, read back with
``torch.load(weights_only=True)``) and ``<name>.json`` (the
:class:`~instasal.models.cards.ModelCard`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.folders import plain_file_name
from instasal.io import atomic_save, atomic_write_json
from instasal.models.cards import ModelCard
from instasal.typing import PathLike

__all__ = [
    "MAX_WEIGHTS_BYTES",
    "cohort_description",
    "export_weights",
    "git_commit",
    "hardware_description",
    "save_atomic",
]

MAX_WEIGHTS_BYTES = 10 * 1024 * 1024
_TRAINING_CODE = ("training.py", "models")


def save_atomic(path: Path, payload: object) -> None:
    """``torch.save`` through a temporary file in the same folder and a rename."""
    atomic_save(path, lambda temporary: torch.save(payload, temporary), overwrite=True)


def export_weights(
    model: nn.Module,
    card: ModelCard,
    folder: PathLike,
    *,
    name: str | None = None,
    reproduce_command: str | None = None,
    training_data: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``<name>.pt`` (state dict) and ``<name>.json`` (card), as the built-ins are shipped.

    Weights are stored in float16 when float32 would exceed 10 MB (the card's ``weights_dtype``
    says which); loading casts them back to the network's float32.

    Raises
    ------
    ConfigurationError
        When a file exists and ``overwrite`` is false, or ``name`` is not a plain file name (a
        folder in it would write outside ``folder``).
    """
    out = Path(folder)
    stem = card.architecture if name is None else plain_file_name(name, what="--name")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    dtype = "float32"
    if size > MAX_WEIGHTS_BYTES:
        dtype = "float16"
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    final = card.updated(
        name=stem,
        weights_dtype=dtype,
        reproduce_command=reproduce_command,
        training=card.training | dict(training_data or {}),
    )
    weights_path, card_path = out / f"{stem}.pt", out / f"{stem}.json"
    if not overwrite and (weights_path.exists() or card_path.exists()):
        raise ConfigurationError(f"{weights_path}: exists already (pass overwrite=True)")
    save_atomic(weights_path, state)
    weights_path.chmod(0o644)  # package data: readable by everyone, as the card beside it
    atomic_write_json(card_path, final.to_dict(), overwrite=True)
    return weights_path, card_path


def git_commit() -> str | None:
    """HEAD's commit, with ``+local-changes`` when the training code differs from it."""
    package = Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=package
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", *_TRAINING_CODE],
            capture_output=True,
            text=True,
            check=True,
            cwd=package,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+local-changes" if changed else head


def cohort_description(root: PathLike) -> dict[str, Any]:
    """What a card records about a cohort: its path and, for phantoms, seed, count, resolution."""
    folder = Path(root)
    description: dict[str, Any] = {"path": str(folder)}
    parameters = folder / "phantom_parameters.json"
    if parameters.is_file():
        payload = json.loads(parameters.read_text(encoding="utf-8"))
        for key in ("cohort_seed", "n_subjects", "resolution_mm", "instasal_version"):
            if key in payload:
                description[key] = payload[key]
    return description


def hardware_description(threads: int) -> str:
    """The machine a model was trained on, in words."""
    return (
        f"{platform.machine()} CPU ({os.cpu_count()} cores, {threads} torch threads), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
