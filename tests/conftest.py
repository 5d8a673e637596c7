"""Shared seeded fixtures: tiny images with known affines."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


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
def two_channel_files(tmp_path: Path, rng: np.random.Generator, oblique_affine: np.ndarray):
    """FLAIR and T1w NIfTI files on one oblique grid; returns (paths, data [2, X, Y, Z])."""
    data = rng.normal(100.0, 20.0, size=(2, 12, 10, 8)).astype(np.float32)
    paths = []
    for name, channel in zip(("FLAIR", "T1w"), data, strict=True):
        path = tmp_path / f"sub-01_{name}.nii.gz"
        nib.save(nib.Nifti1Image(channel, oblique_affine), path)
        paths.append(path)
    return paths, data
