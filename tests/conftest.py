"""Shared seeded fixtures: tiny images with known affines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from instasal.typing import Aggregation, EngineName, PathLike
from nnunet_artefacts import (  # noqa: F401  (the nnU-Net tests' session fixtures)
    flipped_subject,
    nnunet_written,
    trained_folder,
    two_folds_written,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """An anisotropic, rotated affine (0.9 × 1.1 × 2.5 mm, 20° about z, LAS-like flip)."""
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, 1.1, 2.5])
    affine[:3, 3] = [40.0, -60.0, -20.0]
    return affine


@pytest.fixture
def two_channel_files(
    tmp_path: Path, rng: np.random.Generator, oblique_affine: np.ndarray
) -> tuple[list[Path], np.ndarray]:
    """FLAIR and T1w NIfTI files on one oblique grid; returns (paths, data [2, X, Y, Z])."""
    data = rng.normal(100.0, 20.0, size=(2, 12, 10, 8)).astype(np.float32)
    paths = []
    for name, channel in zip(("FLAIR", "T1w"), data, strict=True):
        path = tmp_path / f"sub-01_{name}.nii.gz"
        nib.save(nib.Nifti1Image(channel, oblique_affine), path)
        paths.append(path)
    return paths, data


class SmoothGradOptions(TypedDict, total=False):
    """Keyword options that tests pass alike to several SmoothGrad calls: settings of the method
    (:class:`instasal.saliency.SmoothGradConfig`), never of the forward pass explained."""

    n_samples: int
    noise_level: float
    seed: int
    engine: EngineName
    aggregation: Aggregation


def load_nifti(path: PathLike) -> nib.Nifti1Image:
    """``nib.load`` narrowed to the NIfTI-1 image every writer of instasal produces."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def row_of(frame: pd.DataFrame, label: str | tuple[str, ...]) -> pd.Series:
    """The one row of ``frame`` labelled ``label`` (``frame.loc[label]``, typed as a row)."""
    row = frame.T[label]
    assert isinstance(row, pd.Series)
    return row


def write_channels(
    folder: Path,
    channels: dict[str, np.ndarray],
    affine: np.ndarray | None = None,
    stem: str = "sub-01",
) -> list[Path]:
    """One NIfTI per channel, ``<stem>_<name>.nii.gz`` in ``folder``, in the order given."""
    paths = []
    for name, data in channels.items():
        path = folder / f"{stem}_{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
        paths.append(path)
    return paths


def set_card(model: nn.Module, card: dict[str, object]) -> None:
    """Give ``model`` a (partial) card dictionary, as the loaders do (SPEC §5's ``model.card``)."""
    setattr(model, "card", card)  # noqa: B010 (nn.Module types attributes as Tensor | Module)


def raw_card(model: nn.Module) -> dict[str, Any]:
    """``model.card`` as the loader left it (no defaults filled in, unlike ``card_of``)."""
    card = getattr(model, "card", None)
    assert isinstance(card, dict)
    return card


def set_pointwise(
    conv: nn.Conv3d, weights: dict[tuple[int, int], float], biases: dict[int, float]
) -> None:
    """Zero a convolution, then fill the given (out, in) kernels and output biases."""
    bias = conv.bias
    assert bias is not None
    with torch.no_grad():
        conv.weight.zero_()
        bias.zero_()
        for (out, into), value in weights.items():
            conv.weight[out, into] = value
        for out, value in biases.items():
            bias[out] = value


LINEAR_SHAPE = (26, 16, 16)
LINEAR_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


class PointwiseLinear(nn.Module):
    """Lesion logit 1.5·FLAIR − 0.5·T1w − 2 (a 1×1×1 convolution: no receptive field)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, kernel_size=1)
        set_pointwise(self.conv, {(1, 0): 1.5, (1, 1): -0.5}, {1: -2.0})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, LINEAR_AFFINE), path)


def write_linear_subject(
    root: Path, participant: str, rng: np.random.Generator, broken: bool = False
) -> None:
    """A 16³ subject, 2 mm, with one bright 3³ FLAIR lesion inside a 12³ "brain"."""
    brain = np.zeros(LINEAR_SHAPE, bool)
    brain[2:14, 2:14, 2:14] = True
    flair = np.where(brain, rng.normal(10, 0.2, LINEAR_SHAPE), 0).astype(np.float32)
    t1w = np.where(brain, rng.normal(10, 0.2, LINEAR_SHAPE), 0).astype(np.float32)
    corner = rng.integers(4, 9, size=3)
    flair[tuple(slice(c, c + 3) for c in corner)] = 40.0
    mask = (flair > 30).astype(np.uint8)
    if broken:
        t1w[5, 5, 5] = np.nan
    anat = root / participant / "anat"
    _save(anat / f"{participant}_FLAIR.nii.gz", flair)
    _save(anat / f"{participant}_T1w.nii.gz", t1w)
    derivatives = root / "derivatives" / "manual" / participant / "anat"
    _save(derivatives / f"{participant}_desc-lesion_mask.nii.gz", mask)
    _save(derivatives / f"{participant}_desc-brain_mask.nii.gz", brain.astype(np.uint8))


@pytest.fixture
def linear_dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Two good subjects and one whose T1w holds a NaN."""
    root = tmp_path / "dataset"
    for participant in ("sub-01", "sub-02"):
        write_linear_subject(root, participant, rng)
    write_linear_subject(root, "sub-03", rng, broken=True)
    return root


@pytest.fixture
def linear_model_path(tmp_path: Path) -> Path:
    """:class:`PointwiseLinear` as a TorchScript file with a JSON card beside it."""
    path = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.script(PointwiseLinear()), str(path))
    card = {"threshold": 0.5, "patch_size": list(LINEAR_SHAPE), "channel_names": ["FLAIR", "T1w"]}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


class FlairThreshold(nn.Module):
    """Lesion logit = 10·(FLAIR − 1.5) on raw intensities: an exact segmenter of images whose
    lesions are FLAIR 2 on a FLAIR 1 background."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1)
        set_pointwise(self.conv, {(1, 0): 10.0}, {1: -15.0})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
