"""Where a cohort's TN domains are drawn: white matter, grey matter or anywhere in the brain.

The paper samples its true-negative domains in normal-appearing white matter; whether the error
modes' comparisons with TN depend on that choice is a sensitivity analysis (``docs/analyses.md``).
``wm`` is the default and what cohorts did before the option existed: the subject's white-matter
mask, else its brain mask. ``brain``: the brain mask. ``gm``: grey matter, taken as the brain
without its white matter, minus the voxels whose FLAIR is below the white matter's median —
cerebrospinal fluid is dark on FLAIR and grey matter brighter than white matter — so that TN blobs
do not land in the ventricles or sulci.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instasal.dataset import SubjectFiles
from instasal.errors import ConfigurationError
from instasal.io import load_image, load_mask, read_subject, write_nifti
from instasal.typing import TnPool, check_choice

__all__ = ["grey_matter_pool", "tn_pool_mask", "tn_pool_path"]


def grey_matter_pool(flair: np.ndarray, brain: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Brain voxels outside white matter whose FLAIR is at least the white matter's median."""
    brain, white = np.asarray(brain, dtype=bool), np.asarray(white, dtype=bool)
    if not white.any():
        return np.zeros_like(brain)
    median = float(np.median(np.asarray(flair)[white]))
    return brain & ~white & (np.asarray(flair) >= median)


def tn_pool_path(folder: Path, subject_id: str) -> Path:
    """Where :func:`tn_pool_mask` writes the ``gm`` pool of ``subject_id`` in ``folder``."""
    return folder / f"{subject_id}_desc-tngm_mask.nii.gz"


def tn_pool_mask(subject: SubjectFiles, pool: str, folder: Path) -> Path | None:
    """The mask TN domains of ``subject`` are drawn in, for ``pool``; ``gm`` is written to
    ``folder`` (atomically, replaced on every call) and its path returned.

    Raises
    ------
    ConfigurationError
        On an unknown pool, or a subject lacking the masks the pool needs (named).
    """
    check_choice("tn_from", pool, TnPool)
    if pool == "wm":
        return subject.wm_mask or subject.brain_mask
    if subject.brain_mask is None:
        raise ConfigurationError(f"{subject.subject_id}: no brain mask, needed for TN in {pool}")
    if pool == "brain":
        return subject.brain_mask
    if subject.wm_mask is None:
        raise ConfigurationError(f"{subject.subject_id}: no white-matter mask, needed for TN in gm")
    image = read_subject(subject.images[:1], ["FLAIR"])
    pool_mask = grey_matter_pool(
        image.data[0], load_mask(subject.brain_mask, image), load_mask(subject.wm_mask, image)
    )
    path = tn_pool_path(folder, subject.subject_id)
    folder.mkdir(parents=True, exist_ok=True)
    header = load_image(subject.images[0]).header
    write_nifti(pool_mask.astype(np.uint8), image.affine, path, header=header, overwrite=True)
    return path
